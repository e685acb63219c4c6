"""The engines' seccomp profile: kept as data (``seccomp_default.json``), turned into OCI JSON here.

The profile is a default-deny allowlist: a syscall not named in an ``SCMP_ACT_ALLOW`` rule fails with
EPERM. Refusals are also listed explicitly, so that a reader (and a test) can see that ``mount``,
``ptrace`` or ``bpf`` are refused on purpose rather than forgotten. ``seccomp.md`` beside this file
documents every group and where it comes from.

Parsing is pure and validates the data, so a broken edit of the JSON fails the unit tests instead of
the first engine start.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from modelrunner.sandbox.errors import InvalidSandboxRequest

__all__ = [
    "HOST_ARCHITECTURE",
    "SeccompArg",
    "SeccompProfile",
    "SeccompRule",
    "default_profile",
    "parse_profile",
]

Decision = Literal["allow", "conditional", "refuse", "default"]

_ACTIONS = frozenset(
    {
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
    }
)
_OPS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
_U64_MAX = 2**64 - 1

# OCI image platform names (what image configs and the profile's keys use) by `uname -m`.
_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
HOST_ARCHITECTURE: str = _MACHINE_TO_ARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True, slots=True)
class SeccompArg:
    """One comparison on a syscall argument (all comparisons of a rule must hold)."""

    index: int
    value: int
    op: str
    value_two: int = 0

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "value": self.value, "op": self.op}
        if self.op == "SCMP_CMP_MASKED_EQ" or self.value_two:
            out["valueTwo"] = self.value_two
        return out


@dataclass(frozen=True, slots=True)
class SeccompRule:
    group: str
    action: str
    names: tuple[str, ...]
    args: tuple[SeccompArg, ...] = ()
    errno_ret: int | None = None

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.args:
            out["args"] = [arg.to_oci() for arg in self.args]
        if self.errno_ret is not None:
            out["errnoRet"] = self.errno_ret
        return out


@dataclass(frozen=True, slots=True)
class SeccompProfile:
    description: str
    default_action: str
    default_errno_ret: int
    architectures: tuple[tuple[str, tuple[str, ...]], ...]  # (OCI platform name, SCMP_ARCH_* names)
    rules: tuple[SeccompRule, ...]

    def decision(self, syscall: str) -> Decision:
        """How the profile treats ``syscall``: always allowed, allowed only for some arguments,
        refused by an explicit rule, or left to the default action (refused with EPERM)."""
        matching = [rule for rule in self.rules if syscall in rule.names]
        if any(rule.action == "SCMP_ACT_ALLOW" and not rule.args for rule in matching):
            return "allow"
        if any(rule.action == "SCMP_ACT_ALLOW" for rule in matching):
            return "conditional"
        if matching:
            return "refuse"
        return "default"

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Syscall names by group, in profile order (for documentation and reports)."""
        out: dict[str, list[str]] = {}
        for rule in self.rules:
            names = out.setdefault(rule.group, [])
            names.extend(name for name in rule.names if name not in names)
        return {group: tuple(names) for group, names in out.items()}

    def to_oci(self, architecture: str = HOST_ARCHITECTURE) -> dict[str, Any]:
        """The OCI ``linux.seccomp`` object for ``architecture`` (an OCI platform name, e.g. amd64).

        Only the native ABI is listed: 32-bit compat syscalls are refused as a whole, which engines
        (64-bit programs) never need.

        Raises:
            InvalidSandboxRequest: the profile has no entry for ``architecture``.
        """
        arches = dict(self.architectures).get(architecture)
        if arches is None:
            known = ", ".join(sorted(name for name, _ in self.architectures))
            raise InvalidSandboxRequest(
                "architecture",
                f"the seccomp profile has no entry for {architecture!r} (it covers {known}); "
                "add the architecture to sandbox/seccomp_default.json",
            )
        return {
            "defaultAction": self.default_action,
            "defaultErrnoRet": self.default_errno_ret,
            "architectures": list(arches),
            "syscalls": [rule.to_oci() for rule in self.rules],
        }


def _fail(message: str) -> InvalidSandboxRequest:
    return InvalidSandboxRequest("seccomp_profile", message)


def _int(value: object, what: str, low: int = 0, high: int = _U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _parse_arg(raw: object, where: str) -> SeccompArg:
    if not isinstance(raw, Mapping):
        raise _fail(f"{where}: an argument comparison must be an object")
    op = raw.get("op")
    if op not in _OPS:
        raise _fail(f"{where}: unknown comparison {op!r} (one of {', '.join(sorted(_OPS))})")
    return SeccompArg(
        index=_int(raw.get("index"), f"{where} index", 0, 5),
        value=_int(raw.get("value"), f"{where} value"),
        value_two=_int(raw.get("valueTwo", 0), f"{where} valueTwo"),
        op=op,
    )


def _parse_rule(raw: object, number: int) -> SeccompRule:
    where = f"rule {number}"
    if not isinstance(raw, Mapping):
        raise _fail(f"{where} must be an object")
    group = raw.get("group")
    if not isinstance(group, str) or not group:
        raise _fail(f"{where} needs a non-empty 'group' naming why the syscalls are listed")
    action = raw.get("action")
    if action not in _ACTIONS:
        raise _fail(f"{where} ({group}): unknown action {action!r}")
    names = raw.get("names")
    if (
        not isinstance(names, Sequence)
        or isinstance(names, str)
        or not names
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise _fail(f"{where} ({group}): 'names' must be a non-empty list of syscall names")
    if len(set(names)) != len(names):
        raise _fail(f"{where} ({group}): a syscall is listed twice")
    raw_args = raw.get("args", [])
    if not isinstance(raw_args, Sequence) or isinstance(raw_args, str):
        raise _fail(f"{where} ({group}): 'args' must be a list")
    errno_ret = raw.get("errnoRet")
    if action == "SCMP_ACT_ERRNO":
        errno_ret = _int(errno_ret, f"{where} ({group}) errnoRet", 1, 4095)
    elif errno_ret is not None:
        raise _fail(f"{where} ({group}): errnoRet only makes sense with SCMP_ACT_ERRNO")
    return SeccompRule(
        group=group,
        action=action,
        names=tuple(names),
        args=tuple(_parse_arg(arg, f"{where} ({group})") for arg in raw_args),
        errno_ret=errno_ret,
    )


def parse_profile(doc: Mapping[str, Any]) -> SeccompProfile:
    """Validate a profile document (the shape of ``seccomp_default.json``).

    Besides the shape, it enforces the rule that keeps a profile honest: no syscall may be both
    allowed and refused, and an unconditional allow may not be repeated with argument filters
    (which would make the filter dead code).

    Raises:
        InvalidSandboxRequest: the document breaks a rule; the message names the rule number.
    """
    if doc.get("defaultAction") not in _ACTIONS:
        raise _fail(f"unknown defaultAction {doc.get('defaultAction')!r}")
    default_errno = _int(doc.get("defaultErrnoRet", 1), "defaultErrnoRet", 1, 4095)
    raw_arches = doc.get("architectures")
    if not isinstance(raw_arches, Mapping) or not raw_arches:
        raise _fail("'architectures' must map OCI platform names to SCMP_ARCH_* lists")
    architectures: dict[str, tuple[str, ...]] = {}
    for arch, scmp in raw_arches.items():
        if (
            not isinstance(scmp, Sequence)
            or not scmp
            or not all(isinstance(s, str) and s.startswith("SCMP_ARCH_") for s in scmp)
        ):
            raise _fail(f"architectures[{arch!r}] must be a non-empty list of SCMP_ARCH_* names")
        architectures[str(arch)] = tuple(scmp)
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str) or not raw_rules:
        raise _fail("'rules' must be a non-empty list")
    rules = tuple(_parse_rule(raw, number) for number, raw in enumerate(raw_rules))

    unconditional: dict[str, str] = {}
    conditional: dict[str, str] = {}
    refused: dict[str, str] = {}
    for rule in rules:
        for name in rule.names:
            if rule.action == "SCMP_ACT_ALLOW" and not rule.args:
                table = unconditional
            elif rule.action == "SCMP_ACT_ALLOW":
                table = conditional
            else:
                table = refused
            if table is not conditional and name in table:
                raise _fail(f"{name!r} is listed in both {table[name]!r} and {rule.group!r}")
            table.setdefault(name, rule.group)
    for name, group in refused.items():
        other = unconditional.get(name) or conditional.get(name)
        if other is not None:
            raise _fail(f"{name!r} is allowed by {other!r} and refused by {group!r}")
    for name, group in conditional.items():
        if name in unconditional:
            raise _fail(
                f"{name!r} is allowed outright by {unconditional[name]!r}, so the argument filter "
                f"in {group!r} never applies"
            )
    description = doc.get("description", "")
    return SeccompProfile(
        description=description if isinstance(description, str) else "",
        default_action=doc["defaultAction"],
        default_errno_ret=default_errno,
        architectures=tuple(architectures.items()),
        rules=rules,
    )


@functools.cache
def default_profile() -> SeccompProfile:
    """The profile shipped in the package (read once per process; the value is immutable)."""
    text = resources.files("modelrunner.sandbox").joinpath("seccomp_default.json").read_text("utf-8")
    return parse_profile(json.loads(text))
