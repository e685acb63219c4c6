"""Runner labels: the truth about a runner that survives a modelrunner restart (pure).

A runner's container carries everything re-adoption needs, so a restarted daemon can rebuild its
view from containerd alone: the role, engine, model, mode, the engine socket on the host, the bytes
the scheduler reserved for it, and a digest of its configuration. ``nerdctl/name`` makes
``nerdctl ps`` show a readable name. Labels are size-checked the way containerd checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelrunner.shim.errors import InvalidArgument

__all__ = [
    "CONTAINER_LABEL",
    "LEASE_LABEL",
    "ROLE_LABEL",
    "ROLE_RUNNER",
    "RUNNER_FILTER",
    "RunnerLabels",
]

PREFIX = "io.modelrunner."
ROLE_LABEL = PREFIX + "role"
ROLE_RUNNER = "runner"
ENGINE_LABEL = PREFIX + "engine"
MODEL_LABEL = PREFIX + "model"
MODE_LABEL = PREFIX + "mode"
SOCKET_LABEL = PREFIX + "socket"
MEMORY_LABEL = PREFIX + "memory-reservation"
CONFIG_DIGEST_LABEL = PREFIX + "config-digest"
CONTAINER_LABEL = PREFIX + "container"  # on leases and snapshots: whose they are
LEASE_LABEL = PREFIX + "lease"
NERDCTL_NAME_LABEL = "nerdctl/name"

# containerd's filter for everything labelled as a runner's.
RUNNER_FILTER = f'labels."{ROLE_LABEL}"=={ROLE_RUNNER}'

# Prefixes callers may not set through ``extra``: ours, containerd's GC labels, nerdctl's.
RESERVED_PREFIXES = (PREFIX, "containerd.io/", "nerdctl/")
MAX_LABEL_BYTES = 4096  # containerd: key plus value


@dataclass(frozen=True, slots=True)
class RunnerLabels:
    """What a runner is, as stored in its container's labels.

    Attributes:
        engine: the engine (backend) name, e.g. ``llama.cpp``.
        model_id: the model's ID (digest) in the store.
        mode: what the runner serves (e.g. ``completion``, ``embedding``).
        socket_path: host path of the engine's unix socket (where ``/health`` is asked).
        memory_reservation: bytes the scheduler reserved for this runner.
        name: a readable name for ``nerdctl ps`` (defaults to the container ID).
        config_digest: digest of the runner's effective configuration (flags, context size...).
        extra: other labels; they must not use the reserved prefixes.
    """

    engine: str
    model_id: str = ""
    mode: str = ""
    socket_path: str = ""
    memory_reservation: int = 0
    name: str = ""
    config_digest: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.engine:
            raise InvalidArgument("labelling a runner", "engine must not be empty")
        if self.memory_reservation < 0:
            raise InvalidArgument("labelling a runner", "memory_reservation must not be negative")
        for key in self.extra:
            if key.startswith(RESERVED_PREFIXES):
                raise InvalidArgument(
                    "labelling a runner",
                    f"label {key!r} uses a reserved prefix ({', '.join(RESERVED_PREFIXES)})",
                )

    def to_labels(self, container_id: str, lease_id: str) -> dict[str, str]:
        """The container labels. Raises InvalidArgument if one is over containerd's size limit."""
        labels = dict(self.extra)
        labels.update(
            {
                ROLE_LABEL: ROLE_RUNNER,
                ENGINE_LABEL: self.engine,
                MEMORY_LABEL: str(self.memory_reservation),
                LEASE_LABEL: lease_id,
                NERDCTL_NAME_LABEL: self.name or container_id,
            }
        )
        optional = {
            MODEL_LABEL: self.model_id,
            MODE_LABEL: self.mode,
            SOCKET_LABEL: self.socket_path,
            CONFIG_DIGEST_LABEL: self.config_digest,
        }
        labels.update({k: v for k, v in optional.items() if v})
        for key, value in labels.items():
            if not key or len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
                raise InvalidArgument(
                    "labelling a runner",
                    f"label {key!r} is empty or longer than {MAX_LABEL_BYTES} bytes with its value",
                )
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> RunnerLabels:
        """Read a runner's labels back.

        Raises:
            InvalidArgument: the labels are not a runner's, or are malformed.
        """
        if labels.get(ROLE_LABEL) != ROLE_RUNNER:
            raise InvalidArgument("reading runner labels", f"{ROLE_LABEL} is not {ROLE_RUNNER!r}")
        try:
            memory = int(labels.get(MEMORY_LABEL, "0"))
        except ValueError:
            raise InvalidArgument(
                "reading runner labels", f"{MEMORY_LABEL} is {labels.get(MEMORY_LABEL)!r}, not a byte count"
            ) from None
        extra = {k: v for k, v in labels.items() if not k.startswith(RESERVED_PREFIXES)}
        return cls(
            engine=labels.get(ENGINE_LABEL, ""),
            model_id=labels.get(MODEL_LABEL, ""),
            mode=labels.get(MODE_LABEL, ""),
            socket_path=labels.get(SOCKET_LABEL, ""),
            memory_reservation=memory,
            name=labels.get(NERDCTL_NAME_LABEL, ""),
            config_digest=labels.get(CONFIG_DIGEST_LABEL, ""),
            extra=extra,
        )
