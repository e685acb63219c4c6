"""The seccomp profile data: its rules, its documentation, and the parser that guards both."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from modelrunner.sandbox import InvalidSandboxRequest, default_profile, parse_profile

SANDBOX_DIR = Path(__file__).resolve().parents[2] / "sandbox"

# Linux UAPI values (include/uapi/linux/sched.h).
CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
ENOSYS = 38


def raw_profile() -> dict[str, Any]:
    text = resources.files("modelrunner.sandbox").joinpath("seccomp_default.json").read_text("utf-8")
    return json.loads(text)


def test_refused_on_purpose() -> None:
    profile = default_profile()
    for name in (
        "mount",
        "umount2",
        "ptrace",
        "kexec_load",
        "bpf",
        "unshare",
        "setns",
        "add_key",
        "request_key",
        "keyctl",
        "init_module",
        "finit_module",
        "delete_module",
        "io_uring_setup",
        "userfaultfd",
        "open_by_handle_at",
        "pivot_root",
        "perf_event_open",
    ):
        assert profile.decision(name) == "refuse", name


def test_what_engines_and_runc_need_is_allowed() -> None:
    profile = default_profile()
    # runc's init after the filter is loaded, and the Go runtime inside it
    for name in ("fstatfs", "getdents64", "openat", "write", "close_range", "execve", "futex", "sigaltstack"):
        assert profile.decision(name) == "allow", name
    # llama-server: threads, mapped model, event loop, a Unix socket server
    for name in (
        "mmap",
        "madvise",
        "epoll_wait",
        "epoll_ctl",
        "bind",
        "listen",
        "accept4",
        "sched_setaffinity",
    ):
        assert profile.decision(name) == "allow", name
    for name in ("clone", "socket", "personality"):
        assert profile.decision(name) == "conditional", name
    assert profile.decision("no_such_syscall") == "default"


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    oci = default_profile().to_oci("amd64")
    (rule,) = [r for r in oci["syscalls"] if r["names"] == ["clone"]]
    assert rule["action"] == "SCMP_ACT_ALLOW"
    (arg,) = rule["args"]
    mask = 0
    for flag in CLONE_NEW_FLAGS.values():
        mask |= flag
    assert arg == {"index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}


def test_clone3_gets_enosys_so_libc_falls_back_to_clone() -> None:
    oci = default_profile().to_oci("amd64")
    (rule,) = [r for r in oci["syscalls"] if "clone3" in r["names"]]
    assert rule == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}


def test_socket_families() -> None:
    oci = default_profile().to_oci("amd64")
    families = {r["args"][0]["value"] for r in oci["syscalls"] if r["names"] == ["socket"]}
    assert families == {1, 2, 10, 16}  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK


def test_oci_shape() -> None:
    oci = default_profile().to_oci("amd64")
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO"
    assert oci["defaultErrnoRet"] == 1
    assert oci["architectures"] == ["SCMP_ARCH_X86_64"]
    assert default_profile().to_oci("arm64")["architectures"] == ["SCMP_ARCH_AARCH64"]
    for rule in oci["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet"}, "only OCI fields reach runc"
    with pytest.raises(InvalidSandboxRequest, match="no entry for 'mips'"):
        default_profile().to_oci("mips")


def test_every_group_is_documented() -> None:
    doc = (SANDBOX_DIR / "seccomp.md").read_text()
    for group in default_profile().groups():
        assert f"| `{group}` |" in doc, f"group {group!r} is missing from sandbox/seccomp.md"


def test_the_profile_is_listed_as_package_data() -> None:
    pyproject = (SANDBOX_DIR.parent / "pyproject.toml").read_text()
    assert '"modelrunner.sandbox" = ["*.json"]' in pyproject


def edited(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(raw_profile())
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["rules"].append({"group": "x", "action": "SCMP_ACT_ALLOW", "names": ["mount"]}),
            "allowed by 'x' and refused",
        ),
        (
            lambda d: d["rules"].append({"group": "x", "action": "SCMP_ACT_ALLOW", "names": ["read"]}),
            "listed in both",
        ),
        (
            lambda d: d["rules"].append(
                {
                    "group": "x",
                    "action": "SCMP_ACT_ALLOW",
                    "names": ["read"],
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}],
                }
            ),
            "never applies",
        ),
        (lambda d: d.update(defaultAction="SCMP_ACT_MAYBE"), "defaultAction"),
        (lambda d: d["rules"][0].update(action="ALLOW"), "unknown action"),
        (lambda d: d["rules"][0].pop("group"), "group"),
        (lambda d: d["rules"][0].update(names=[]), "names"),
        (lambda d: d["rules"][0].update(names=["read", "read"]), "twice"),
        (lambda d: d["rules"].append({"group": "x", "action": "SCMP_ACT_ERRNO", "names": ["y"]}), "errnoRet"),
        (
            lambda d: d["rules"].append(
                {
                    "group": "x",
                    "action": "SCMP_ACT_ALLOW",
                    "names": ["z"],
                    "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}],
                }
            ),
            "index",
        ),
        (
            lambda d: d["rules"].append(
                {
                    "group": "x",
                    "action": "SCMP_ACT_ALLOW",
                    "names": ["z"],
                    "args": [{"index": 0, "value": 0, "op": "LIKE"}],
                }
            ),
            "unknown comparison",
        ),
        (lambda d: d.update(architectures={}), "architectures"),
        (lambda d: d.update(architectures={"amd64": ["X86_64"]}), "SCMP_ARCH_"),
    ],
)
def test_parser_rejects_broken_profiles(change: Any, message: str) -> None:
    with pytest.raises(InvalidSandboxRequest, match=message):
        parse_profile(edited(change))


def test_the_shipped_data_parses_to_the_cached_profile() -> None:
    assert parse_profile(raw_profile()) == default_profile()
    assert default_profile() is default_profile()
