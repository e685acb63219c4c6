"""The sandbox proven from inside: a probe runs in the exact spec an engine gets, in real containerd.

Each property is its own test. The spec comes from ``build_spec`` and reaches containerd through
modelrunner's shim (``start_task``: a read-only snapshot view as the rootfs, runc v2), exactly as a
runner's would. The probe (tests/sandbox/probe/probe.c, compiled static at session start) prints
``name errno`` lines, so the assertions read exact errno values.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from modelrunner.sandbox import UserNamespace, discover_cdi, netns_path, open_loopback_netns
from modelrunner.shim.events import TaskExit, TaskOOM
from pyroute2 import IPRoute

from tests.sandbox.harness import SandboxHarness

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


async def test_only_lo_exists(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(sandbox.request("/bin/busybox", "ip", "-o", "addr"))
    assert run.exit_code == 0, run.output
    interfaces = {line.split()[1] for line in run.output.splitlines()}
    assert interfaces == {"lo"}
    assert "inet 127.0.0.1/8" in run.output, "runc brings lo up in the fresh namespace"
    listing = await sandbox.run(sandbox.request("/bin/busybox", "ls", "/sys/class/net"))
    assert listing.output.split() == ["lo"]


class HostListener:
    """A TCP server on all host addresses that records every connection it accepts."""

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.server.accept()
            except TimeoutError:
                continue
            conn.close()
            with self.changed:
                self.accepted.append(peer)
                self.changed.notify_all()

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.accepted) >= count, timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    listener = HostListener()
    yield listener
    listener.close()


def host_ipv4_addresses() -> list[str]:
    with IPRoute() as ipr:
        return [a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET) if a.get("IFA_ADDRESS")]


async def test_host_ports_are_unreachable(sandbox: SandboxHarness, host_listener: HostListener) -> None:
    addresses = host_ipv4_addresses()
    assert "127.0.0.1" in addresses
    # The listener works from the host...
    with socket.create_connection(("127.0.0.1", host_listener.port), timeout=2):
        pass
    assert await trio.to_thread.run_sync(host_listener.wait_for_connections, 1, 5)
    # ...and from inside, no host address reaches it: 127.0.0.1 is the sandbox's own loopback and
    # every other address has no route.
    run = await sandbox.run(sandbox.request("/bin/probe", "connect", str(host_listener.port), *addresses))
    results = run.lines()
    assert results.pop("connect:127.0.0.1") == str(errno.ECONNREFUSED)
    for address, result in results.items():
        assert result == str(errno.ENETUNREACH), f"{address}: {result}"
    assert not await trio.to_thread.run_sync(host_listener.wait_for_connections, 2, 0.5), (
        f"a connection from the sandbox reached the host: {host_listener.accepted}"
    )


async def test_models_and_rootfs_are_read_only(sandbox: SandboxHarness) -> None:
    request = sandbox.request(
        "/bin/probe",
        "write",
        "/models/model.gguf",
        "/models/new",
        "/x",
        "/bin/probe",
        "/etc/passwd",
        "/tmp/scratch",
        "/run/engine/engine.sock",
        "/dev/shm/segment",
    )
    run = await sandbox.run(request)
    assert run.exit_code == 0, run.output
    results = run.lines()
    for path in ("/models/model.gguf", "/models/new", "/x", "/bin/probe", "/etc/passwd"):
        assert results[path] == str(errno.EROFS), f"{path}: {results[path]}"
    for path in ("/tmp/scratch", "/run/engine/engine.sock", "/dev/shm/segment"):
        assert results[path] == "0", f"{path} must stay writable: {results[path]}"
    assert await trio.Path(request.bundle_dir, "model.gguf").read_bytes() == b"GGUF fake model bytes"
    assert not await trio.Path(request.bundle_dir, "new").exists()
    assert await trio.Path(request.engine_dir, "engine.sock").exists(), "the engine dir is the host's"


async def test_no_capabilities_and_no_new_privileges(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(sandbox.request("/bin/cat", "/proc/self/status"))
    fields = status_fields(run.output)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[name], 16) == 0, f"{name} = {fields[name]}"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Uid"].split()[:2] == ["65532", "65532"]


async def test_seccomp_filter_refuses_mount_unshare_ptrace(sandbox: SandboxHarness) -> None:
    status = status_fields((await sandbox.run(sandbox.request("/bin/cat", "/proc/self/status"))).output)
    assert status["Seccomp"] == "2", "filter mode"
    run = await sandbox.run(sandbox.request("/bin/probe", "syscalls"))
    assert run.exit_code == 0, run.output
    results = run.lines()
    eperm = str(errno.EPERM)
    # unshare(0), PTRACE_TRACEME, keyctl and add_key succeed for any process without the filter.
    for name in (
        "mount",
        "umount2",
        "unshare",
        "unshare_user",
        "setns",
        "ptrace",
        "keyctl",
        "add_key",
        "bpf",
        "kexec_load",
        "init_module",
        "personality_no_aslr",
        "socket_packet",
        "socket_alg",
        "io_uring_setup",
    ):
        assert results[name] == eperm, f"{name}: {results[name]}"
    assert results["clone3"] == str(errno.ENOSYS), "glibc must be told to fall back to clone"
    for name in ("socket_unix", "socket_inet", "personality_query", "pthread_create", "fork"):
        assert results[name] == "0", f"{name} must work: {results[name]}"


async def test_memory_hog_is_oom_killed_and_the_caller_sees_the_event(sandbox: SandboxHarness) -> None:
    limit = 64 * MIB
    run = await sandbox.run(sandbox.request("/bin/probe", "hog", "1024", memory_limit_bytes=limit))
    assert run.exit_code == 137, (run.exit_code, run.output[-300:])
    assert run.oom_killed, "the shim must report the kill as an OOM kill"
    touched = [int(line.split()[1]) for line in run.output.splitlines() if line.startswith("touched")]
    assert touched and max(touched) < limit // MIB, f"got past the limit: {touched[-3:]}"
    kinds = [type(event) for event in run.events]
    assert TaskOOM in kinds, run.events
    assert kinds.index(TaskOOM) < kinds.index(TaskExit), "containerd sends the OOM event before the exit"


async def test_fork_bomb_stops_at_the_pids_limit(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(sandbox.request("/bin/probe", "forkbomb", "10000", pids_limit=32))
    assert run.exit_code == 0, run.output
    results = run.lines()
    assert results["fork"] == str(errno.EAGAIN)
    assert int(results["children"]) == 31, "32 tasks: the probe itself and 31 children"


async def test_host_processes_are_invisible(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(sandbox.request("/bin/busybox", "ls", "/proc"))
    pids = {entry for entry in run.output.split() if entry.isdigit()}
    assert pids == {"1"}, "only the sandbox's own process"
    assert str(os.getpid()) not in pids
    hostname = await sandbox.run(sandbox.request("/bin/busybox", "hostname", hostname="engine-h1"))
    assert hostname.output.strip() == "engine-h1"


async def test_masked_paths_read_empty(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(sandbox.request("/bin/busybox", "wc", "-c", "/proc/keys", "/proc/timer_list"))
    sizes = {line.split()[1]: int(line.split()[0]) for line in run.output.splitlines() if "/proc/" in line}
    assert sizes == {"/proc/keys": 0, "/proc/timer_list": 0}
    write = await sandbox.run(sandbox.request("/bin/probe", "write", "/proc/sys/kernel/hostname"))
    assert write.lines()["/proc/sys/kernel/hostname"] == str(errno.EROFS)


async def test_environment_and_limits_inside(sandbox: SandboxHarness) -> None:
    run = await sandbox.run(
        sandbox.request(
            "/bin/sh",
            "-c",
            "echo HOME=$HOME; ulimit -n; ulimit -c; cat /proc/self/oom_score_adj",
            nofile=4096,
            oom_score_adj=700,
        )
    )
    assert run.output.split() == ["HOME=/tmp", "4096", "0", "700"]


async def test_user_namespace_remapping(userns_sandbox: SandboxHarness) -> None:
    sandbox = userns_sandbox
    userns = UserNamespace.single_range(host_id=300_000, size=65536)
    request = sandbox.request(
        "/bin/sh",
        "-c",
        "cat /proc/self/uid_map; id -u; echo hi > /run/engine/sock; cat /models/model.gguf",
        userns=userns,
    )
    run = await sandbox.run(request)
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0].split() == ["0", "300000", "65536"]
    assert lines[1] == "65532"
    assert lines[2] == "GGUF fake model bytes", "a world-readable bundle stays readable"
    written = trio.Path(request.engine_dir, "sock")
    assert (await written.stat()).st_uid == 300_000 + 65532, (
        "files the engine makes belong to the mapped host uid"
    )


async def test_prepared_netns_with_lo_only(sandbox: SandboxHarness) -> None:
    name = f"mr-sbx-{os.getpid()}"
    async with open_loopback_netns(name) as path:
        assert path == netns_path(name)
        run = await sandbox.run(sandbox.request("/bin/busybox", "ip", "-o", "addr", netns_path=path))
        assert {line.split()[1] for line in run.output.splitlines()} == {"lo"}
        assert "inet 127.0.0.1/8" in run.output


async def test_cdi_device_is_usable_inside(sandbox: SandboxHarness, tmp_path: Path) -> None:
    dev = tmp_path / "hostdev"
    dev.mkdir()
    os.mknod(dev / "fakegpu0", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # a copy of /dev/zero
    # loop-control's numbers, granted write-only: opening it for reading must be refused by the
    # device cgroup before the driver is even asked.
    os.mknod(dev / "fakectl", stat.S_IFCHR | 0o666, os.makedev(10, 237))
    os.chmod(dev / "fakegpu0", 0o666)
    os.chmod(dev / "fakectl", 0o666)
    lib = tmp_path / "libfake.so.1"
    lib.write_text("fake driver library\n")
    hook_out = tmp_path / "hook-state.json"
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    (cdi_dir / "fake.yaml").write_text(
        f"""cdiVersion: 0.5.0
kind: example.com/gpu
devices:
- name: "0"
  containerEdits:
    env: [FAKEGPU_VISIBLE=0]
    deviceNodes:
    - path: /dev/fakegpu0
      hostPath: {dev}/fakegpu0
containerEdits:
  deviceNodes:
  - path: /dev/fakectl
    hostPath: {dev}/fakectl
    permissions: w
  mounts:
  - hostPath: {lib}
    containerPath: /usr/lib/libfake.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createRuntime
    path: /bin/sh
    args: [sh, -c, "cat > {hook_out}"]
"""
    )
    edits = discover_cdi([str(cdi_dir)]).resolve(["example.com/gpu=0"])
    run = await sandbox.run(
        sandbox.request(
            "/bin/sh",
            "-c",
            "echo $FAKEGPU_VISIBLE; cat /usr/lib/libfake.so.1; /bin/probe open r /dev/fakegpu0;"
            " /bin/probe open w /dev/fakectl; /bin/probe open r /dev/fakectl",
            devices=edits,
        )
    )
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0] == "0"
    assert lines[1] == "fake driver library"
    assert lines[2] == "open:r:/dev/fakegpu0 0 0000000000000000", "the device works: it reads zeros"
    assert lines[3].split()[1] != str(errno.EPERM), "write access was granted"
    assert lines[4] == f"open:r:/dev/fakectl {errno.EPERM}", "read access was not granted"
    state = json.loads(hook_out.read_text())
    assert state["id"] == run.container_id
    assert state["status"] == "creating"
