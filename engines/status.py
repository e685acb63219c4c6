"""Backend status values and DMR's status-string grammar.

DMR reports each backend as one string, ``<State>[: <details>]`` with State one of ``Running``,
``Error``, ``Not Installed`` and ``Installing`` (``/engines/status``). We keep the state as an enum
and render the string only when asked, so nothing has to parse it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BackendState", "BackendStatus"]


class BackendState(enum.StrEnum):
    RUNNING = "Running"
    ERROR = "Error"
    NOT_INSTALLED = "Not Installed"
    INSTALLING = "Installing"


@dataclass(frozen=True, slots=True)
class BackendStatus:
    state: BackendState
    details: str = ""

    def __post_init__(self) -> None:
        if "\n" in self.details:
            # One status is one line in DMR's grammar (it is used as a container health probe).
            object.__setattr__(self, "details", " ".join(self.details.split()))

    def __str__(self) -> str:
        return f"{self.state}: {self.details}" if self.details else str(self.state)

    @classmethod
    def parse(cls, text: str) -> BackendStatus:
        """Read a DMR status string back (for clients of other DMR-compatible daemons).

        Raises:
            ValueError: the text does not start with one of the four states.
        """
        for state in BackendState:
            if text == state.value:
                return cls(state)
            if text.startswith(f"{state.value}: "):
                return cls(state, text[len(state.value) + 2 :])
        raise ValueError(f"not a backend status: {text!r}")

    @classmethod
    def running(cls, details: str = "") -> BackendStatus:
        return cls(BackendState.RUNNING, details)

    @classmethod
    def not_installed(cls, details: str = "") -> BackendStatus:
        return cls(BackendState.NOT_INSTALLED, details)

    @classmethod
    def installing(cls, details: str = "") -> BackendStatus:
        return cls(BackendState.INSTALLING, details)

    @classmethod
    def error(cls, details: str) -> BackendStatus:
        return cls(BackendState.ERROR, details)
