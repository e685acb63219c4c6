"""Unit tests of the pure spec builder: every property the sandbox promises, field by field."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelrunner.sandbox import (
    ContainerEdits,
    CpuLimits,
    DeviceNode,
    EditMount,
    Hook,
    IntelRdt,
    InvalidSandboxRequest,
    SandboxRequest,
    UserNamespace,
    build_spec,
    device_mount_points,
    memory_limit_for_reservation,
)
from modelrunner.sandbox.spec import MASKED_PATHS, READONLY_PATHS

GIB = 1024**3
MIB = 1024**2


def request(**overrides: Any) -> SandboxRequest:
    fields: dict[str, Any] = {
        "args": ("/usr/local/bin/llama-server", "--host", "/run/engine/engine.sock"),
        "bundle_dir": "/var/lib/modelrunner/bundles/sha256-abc",
        "engine_dir": "/run/modelrunner/runners/r1",
        "memory_limit_bytes": 2 * GIB,
        "cgroups_path": "/modelrunner/r1",
        "env": ("PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"),
    }
    fields.update(overrides)
    return SandboxRequest(**fields)


def mount(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    (found,) = [m for m in spec["mounts"] if m["destination"] == destination]
    return found


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    pairs = [entry.split("=", 1) for entry in spec["process"]["env"]]
    assert len({k for k, _ in pairs}) == len(pairs), "duplicate environment keys"
    return dict(pairs)


def test_root_is_the_read_only_snapshot() -> None:
    assert build_spec(request())["root"] == {"path": "rootfs", "readonly": True}


def test_spec_is_json_ready_and_deterministic() -> None:
    first = json.dumps(build_spec(request()), sort_keys=True)
    assert first == json.dumps(build_spec(request()), sort_keys=True)
    assert json.loads(first)["ociVersion"].startswith("1.0.")


def test_namespaces_fresh_network_by_default() -> None:
    spec = build_spec(request())
    namespaces = spec["linux"]["namespaces"]
    assert {ns["type"] for ns in namespaces} == {"pid", "ipc", "uts", "mount", "network", "cgroup"}
    assert all("path" not in ns for ns in namespaces), "every namespace must be new, none joined"
    assert "uidMappings" not in spec["linux"]


def test_prepared_netns_is_joined_by_path() -> None:
    spec = build_spec(request(netns_path="/var/run/netns/mr-r1"))
    (net,) = [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]
    assert net == {"type": "network", "path": "/var/run/netns/mr-r1"}


def test_user_namespace_remapping() -> None:
    userns = UserNamespace.single_range(host_id=200_000, size=65536)
    spec = build_spec(request(userns=userns))
    assert {"type": "user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200_000, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 200_000, "size": 65536}]
    assert userns.host_uid(65532) == 200_000 + 65532
    # devpts may only name gid 5 when gid 5 is mapped.
    assert "gid=5" in mount(spec, "/dev/pts")["options"]
    narrow = UserNamespace.single_range(host_id=300_000, size=65533)  # 0..65532
    narrow = replace(narrow, gid_mappings=(replace(narrow.gid_mappings[0], container_id=10, size=65530),))
    assert "gid=5" not in mount(build_spec(request(userns=narrow)), "/dev/pts")["options"]


def test_root_user_refused_without_userns_allowed_with_it() -> None:
    with pytest.raises(InvalidSandboxRequest) as info:
        request(uid=0)
    assert info.value.field == "uid"
    assert "root" in str(info.value)
    with pytest.raises(InvalidSandboxRequest):
        request(gid=0)
    spec = build_spec(request(uid=0, gid=0, userns=UserNamespace.single_range(100_000)))
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


def test_userns_must_map_the_engine_user_and_not_host_root() -> None:
    with pytest.raises(InvalidSandboxRequest, match="inside the mapping"):
        request(userns=UserNamespace.single_range(100_000, size=1000))  # uid 65532 unmapped
    with pytest.raises(InvalidSandboxRequest, match="host id 0"):
        request(userns=UserNamespace.single_range(0))
    with pytest.raises(InvalidSandboxRequest):
        UserNamespace.single_range(100_000, size=10).host_uid(10)


def test_models_bundle_is_read_only_and_engine_dir_read_write() -> None:
    spec = build_spec(request())
    models = mount(spec, "/models")
    assert models["type"] == "bind"
    assert models["source"] == "/var/lib/modelrunner/bundles/sha256-abc"
    assert {"rbind", "ro", "nosuid", "nodev", "noexec"} <= set(models["options"])
    assert "rw" not in models["options"]
    engine = mount(spec, "/run/engine")
    assert engine["source"] == "/run/modelrunner/runners/r1"
    assert {"rbind", "rw", "nosuid", "nodev", "noexec"} <= set(engine["options"])


def test_tmpfs_sizes() -> None:
    spec = build_spec(request(tmp_size_bytes=100 * MIB, shm_size_bytes=512 * MIB))
    tmp = mount(spec, "/tmp")
    assert tmp["type"] == "tmpfs"
    assert f"size={100 * MIB}" in tmp["options"]
    assert "noexec" in tmp["options"]
    shm = mount(spec, "/dev/shm")
    assert shm["type"] == "tmpfs"
    assert f"size={512 * MIB}" in shm["options"]
    assert "noexec" not in mount(build_spec(request(tmp_noexec=False)), "/tmp")["options"]


def test_system_mounts() -> None:
    spec = build_spec(request())
    assert mount(spec, "/proc")["type"] == "proc"
    sysfs = mount(spec, "/sys")
    assert sysfs["type"] == "sysfs"
    assert "ro" in sysfs["options"]
    assert "/sys/fs/cgroup" not in [m["destination"] for m in spec["mounts"]], "engines need no cgroup fs"
    assert mount(spec, "/dev/pts")["type"] == "devpts"
    assert "newinstance" in mount(spec, "/dev/pts")["options"]
    assert mount(spec, "/dev/mqueue")["type"] == "mqueue"
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/dev") < destinations.index("/dev/shm"), "a parent must be mounted first"
    assert len(destinations) == len(set(destinations))


def test_masked_and_readonly_paths_cover_dockers_defaults() -> None:
    spec = build_spec(request())
    docker_masked = {
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    }
    docker_readonly = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
    assert docker_masked <= set(spec["linux"]["maskedPaths"]) == set(MASKED_PATHS)
    assert docker_readonly <= set(spec["linux"]["readonlyPaths"]) == set(READONLY_PATHS)


def test_process_is_unprivileged() -> None:
    spec = build_spec(request(uid=65532, gid=65532, additional_gids=(44,)))
    process = spec["process"]
    assert process["user"] == {"uid": 65532, "gid": 65532, "additionalGids": [44]}
    assert process["capabilities"] == {
        "bounding": [],
        "effective": [],
        "inheritable": [],
        "permitted": [],
        "ambient": [],
    }
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False


def test_rlimits_and_oom_score() -> None:
    process = build_spec(request(nofile=4096, oom_score_adj=800))["process"]
    rlimits = {r["type"]: r for r in process["rlimits"]}
    assert rlimits["RLIMIT_NOFILE"] == {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}
    assert rlimits["RLIMIT_CORE"]["hard"] == 0
    assert process["oomScoreAdj"] == 800
    assert build_spec(request())["process"]["oomScoreAdj"] > 0, "by default an engine dies before the daemon"


def test_environment_merge() -> None:
    spec = build_spec(request(extra_env=("LLAMA_ARG_CTX_SIZE=4096", "LANG=C")))
    env = env_of(spec)
    assert env["HOME"] == "/tmp", "HOME must point at the only writable scratch space"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LLAMA_ARG_CTX_SIZE"] == "4096"
    assert env["LANG"] == "C", "engine settings override the image's"
    no_path = env_of(build_spec(request(env=())))
    assert "/usr/bin" in no_path["PATH"]


def test_args_cwd_hostname() -> None:
    spec = build_spec(request(cwd="/models", hostname="runner-7"))
    assert spec["process"]["args"] == ["/usr/local/bin/llama-server", "--host", "/run/engine/engine.sock"]
    assert spec["process"]["cwd"] == "/models"
    assert spec["hostname"] == "runner-7"


def test_memory_limit_with_equal_swap_and_pids_limit() -> None:
    resources = build_spec(request(memory_limit_bytes=3 * GIB, pids_limit=300))["linux"]["resources"]
    assert resources["memory"]["limit"] == 3 * GIB
    assert resources["memory"]["swap"] == 3 * GIB, "memory+swap equal to memory means no swap"
    assert resources["memory"]["disableOOMKiller"] is False
    assert resources["pids"] == {"limit": 300}
    assert "cpu" not in resources


def test_memory_limit_for_reservation_adds_a_margin() -> None:
    assert memory_limit_for_reservation(1 * GIB) == 1 * GIB + 256 * MIB
    assert memory_limit_for_reservation(10 * GIB) == 11 * GIB
    for reservation in (1, 100 * MIB, 7 * GIB + 5):
        assert memory_limit_for_reservation(reservation) > reservation
    with pytest.raises(InvalidSandboxRequest):
        memory_limit_for_reservation(0)


def test_cpu_limits() -> None:
    cpu = CpuLimits(quota_us=150_000, period_us=100_000, shares=512, cpus="0-1,3", mems="0")
    resources = build_spec(request(cpu=cpu))["linux"]["resources"]
    assert resources["cpu"] == {
        "quota": 150_000,
        "period": 100_000,
        "shares": 512,
        "cpus": "0-1,3",
        "mems": "0",
    }
    assert CpuLimits.from_cpu_count(1.5).quota_us == 150_000
    with pytest.raises(InvalidSandboxRequest):
        request(cpu=CpuLimits(cpus="0-1;rm"))
    with pytest.raises(InvalidSandboxRequest):
        CpuLimits.from_cpu_count(0)


def test_devices_cgroup_denies_all_but_the_basics() -> None:
    rules = build_spec(request())["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}, "deny-all must come first"
    allowed = {(r["type"], r["major"], r.get("minor")) for r in rules[1:]}
    assert ("c", 1, 3) in allowed  # /dev/null
    assert ("c", 1, 9) in allowed  # /dev/urandom
    assert all(r["allow"] for r in rules[1:])
    assert all("m" not in r["access"] for r in rules[1:]), "no mknod"
    assert "devices" not in build_spec(request())["linux"], "no device nodes without a device grant"


def test_seccomp_is_default_deny() -> None:
    seccomp = build_spec(request())["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for rule in seccomp["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]}
    for refused in ("mount", "umount2", "ptrace", "kexec_load", "bpf", "unshare", "setns", "keyctl"):
        assert refused not in allowed
    with pytest.raises(InvalidSandboxRequest) as info:
        build_spec(request(architecture="s390x"))
    assert info.value.field == "architecture"


def gpu_edits() -> tuple[ContainerEdits, ...]:
    common = ContainerEdits(
        origin="example.com/gpu (/etc/cdi/x.yaml)",
        env=("NVIDIA_VISIBLE_DEVICES=void", "LANG=C.UTF-8"),
        device_nodes=(
            DeviceNode(
                path="/dev/fakectl",
                host_path="/dev/null",
                type="c",
                major=1,
                minor=3,
                file_mode=0o666,
                permissions="rw",
            ),
        ),
        mounts=(
            EditMount(
                "/usr/lib/libfake.so.1", "/usr/lib/libfake.so.1", "bind", ("ro", "nosuid", "nodev", "rbind")
            ),
            EditMount("/opt/a", "/opt/a/b/c", "bind", ("ro", "rbind")),
        ),
        hooks=(Hook("createContainer", "/usr/bin/fake-hook", ("fake-hook", "link")),),
    )
    device = ContainerEdits(
        origin="example.com/gpu=0 (/etc/cdi/x.yaml)",
        env=("FAKE_VISIBLE=0",),
        device_nodes=(
            DeviceNode(path="/dev/fake0", host_path="/dev/zero", type="c", major=1, minor=5, file_mode=0o666),
            DeviceNode(
                path="/dev/fakectl",
                host_path="/dev/null",
                type="c",
                major=1,
                minor=3,
                file_mode=0o600,
                permissions="w",
                uid=7,
            ),
        ),
        mounts=(EditMount("/opt/x", "/opt/a", "bind", ("ro", "rbind")),),
        hooks=(Hook("createRuntime", "/usr/bin/fake-hook", timeout=5),),
        additional_gids=(44,),
        intel_rdt=IntelRdt(clos_id="gpu"),
    )
    return (common, device)


def test_cdi_edits_land_in_the_spec() -> None:
    spec = build_spec(request(devices=gpu_edits()))
    env = env_of(spec)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["FAKE_VISIBLE"] == "0"
    devices = {d["path"]: d for d in spec["linux"]["devices"]}
    assert set(devices) == {"/dev/fake0", "/dev/fakectl"}, (
        "a later node with the same path replaces the earlier"
    )
    assert devices["/dev/fake0"] == {
        "path": "/dev/fake0",
        "type": "c",
        "major": 1,
        "minor": 5,
        "fileMode": 0o666,
        "uid": 65532,
        "gid": 65532,
    }
    assert devices["/dev/fakectl"]["uid"] == 7
    assert devices["/dev/fakectl"]["fileMode"] == 0o600
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "w"} in rules
    assert rules[0] == {"allow": False, "access": "rwm"}
    lib = mount(spec, "/usr/lib/libfake.so.1")
    assert lib["source"] == "/usr/lib/libfake.so.1"
    assert "ro" in lib["options"]
    assert mount(spec, "/opt/a")["source"] == "/opt/x", "a later mount with the same destination replaces it"
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/opt/a") < destinations.index("/opt/a/b/c"), "sorted by depth"
    assert spec["hooks"]["createContainer"] == [{"path": "/usr/bin/fake-hook", "args": ["fake-hook", "link"]}]
    assert spec["hooks"]["createRuntime"] == [{"path": "/usr/bin/fake-hook", "timeout": 5}]
    assert spec["process"]["user"]["additionalGids"] == [44]
    assert spec["linux"]["intelRdt"] == {"closID": "gpu"}
    assert device_mount_points(request(devices=gpu_edits())) == (
        "/usr/lib/libfake.so.1",
        "/opt/a/b/c",
        "/opt/a",
    )


def test_device_edits_may_not_replace_sandbox_mounts() -> None:
    for destination in ("/models", "/run/engine", "/tmp", "/proc/sys", "/sys/kernel", "/"):
        evil = ContainerEdits(
            origin="evil.com/x=0", mounts=(EditMount("/", destination, "bind", ("rw", "rbind")),)
        )
        with pytest.raises(InvalidSandboxRequest, match="may not mount over"):
            request(devices=(evil,))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("args", ()),
        ("args", ("a\x00b",)),
        ("bundle_dir", "relative/dir"),
        ("bundle_dir", "/var/lib/../etc"),
        ("bundle_dir", "/"),
        ("bundle_dir", "/proc/1/root"),
        ("engine_dir", "/var/lib/modelrunner/bundles/sha256-abc/sock"),
        ("engine_dir", "/var/lib/modelrunner"),
        ("memory_limit_bytes", 0),
        ("memory_limit_bytes", 1024),
        ("memory_limit_bytes", True),
        ("pids_limit", 0),
        ("nofile", 1),
        ("oom_score_adj", 1001),
        ("hostname", "bad_host name"),
        ("hostname", "x" * 64),
        ("cgroups_path", "modelrunner/r1"),
        ("cgroups_path", "/modelrunner/../r1"),
        ("env", ("NOEQUALS",)),
        ("env", ("=value",)),
        ("extra_env", ("A=b\x00c",)),
        ("cwd", "tmp"),
        ("netns_path", "netns"),
        ("uid", -1),
        ("uid", 2**32),
        ("tmp_size_bytes", 0),
        ("shm_size_bytes", -5),
        ("annotations", (("a",),)),
    ],
)
def test_invalid_requests_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidSandboxRequest) as info:
        request(**{field: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_annotations() -> None:
    spec = build_spec(request(annotations=(("io.modelrunner.runner", "r1"),)))
    assert spec["annotations"] == {"io.modelrunner.runner": "r1"}


env_entries = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,8}=[ -~]{0,12}\Z")


@settings(max_examples=150, deadline=None)
@given(
    memory=st.integers(min_value=8 * MIB, max_value=2**40),
    pids=st.integers(min_value=1, max_value=100_000),
    nofile=st.integers(min_value=16, max_value=1 << 20),
    env=st.lists(env_entries, max_size=6).map(tuple),
    extra_env=st.lists(env_entries, max_size=6).map(tuple),
    uid=st.integers(min_value=1, max_value=2**31),
    userns=st.booleans(),
)
def test_invariants_hold_for_any_valid_request(
    memory: int,
    pids: int,
    nofile: int,
    env: tuple[str, ...],
    extra_env: tuple[str, ...],
    uid: int,
    userns: bool,
) -> None:
    mapping = UserNamespace.single_range(1_000_000, size=2**31 + 1) if userns else None
    spec = json.loads(
        json.dumps(
            build_spec(
                request(
                    memory_limit_bytes=memory,
                    pids_limit=pids,
                    nofile=nofile,
                    env=env,
                    extra_env=extra_env,
                    uid=uid,
                    gid=uid,
                    userns=mapping,
                )
            )
        )
    )
    assert spec["root"]["readonly"] is True
    assert all(not caps for caps in spec["process"]["capabilities"].values())
    assert spec["process"]["noNewPrivileges"] is True
    assert (
        spec["linux"]["resources"]["memory"]["limit"]
        == spec["linux"]["resources"]["memory"]["swap"]
        == memory
    )
    assert env_of(spec)["HOME"] == "/tmp" or any(e.startswith("HOME=") for e in extra_env)
    assert "ro" in mount(spec, "/models")["options"]


def test_userns_device_nodes_must_keep_their_host_path() -> None:
    moved = ContainerEdits(
        origin="example.com/gpu=0",
        device_nodes=(DeviceNode(path="/dev/fake0", host_path="/dev/zero", type="c", major=1, minor=5),),
    )
    with pytest.raises(InvalidSandboxRequest, match="keep its host path"):
        request(devices=(moved,), userns=UserNamespace.single_range(100_000))
    same = ContainerEdits(
        origin="example.com/gpu=0",
        device_nodes=(DeviceNode(path="/dev/zero", host_path="/dev/zero", type="c", major=1, minor=5),),
    )
    assert build_spec(request(devices=(same,), userns=UserNamespace.single_range(100_000)))["linux"][
        "devices"
    ]
