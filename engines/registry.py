"""The set of backends a daemon knows, with a default and DMR's format-based selection."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from modelrunner.engines.base import Backend
from modelrunner.engines.errors import UnknownBackend

__all__ = ["DEFAULT_BACKEND", "FORMAT_PREFERENCES", "BackendRegistry"]

DEFAULT_BACKEND = "llama.cpp"

# DMR's `selectBackendForModel`: a model's format can override the backend the request named.
# The first *usable* (registered and able to run on this host) backend in the list wins; a format
# not listed here (gguf, unknown) keeps the requested or default backend.
FORMAT_PREFERENCES: dict[str, tuple[str, ...]] = {
    "safetensors": ("vllm", "mlx", "sglang"),
    "dduf": ("diffusers",),
    "diffusers": ("diffusers",),
}


class BackendRegistry:
    """Name -> Backend. Names are the ``/engines/{name}`` path segment and are matched exactly."""

    def __init__(self, backends: Iterable[Backend] = (), *, default: str = DEFAULT_BACKEND) -> None:
        self._backends: dict[str, Backend] = {}
        for backend in backends:
            self.register(backend)
        self.default_name = default

    def register(self, backend: Backend) -> None:
        """Raises ValueError if a backend of that name is already registered."""
        if backend.name in self._backends:
            raise ValueError(f"backend {backend.name!r} is already registered")
        self._backends[backend.name] = backend

    def get(self, name: str | None = None) -> Backend:
        """The backend called ``name``, or the default one for None/"".

        Raises:
            UnknownBackend: no such backend (the API answers 404 ``backend not found``).
        """
        key = name or self.default_name
        try:
            return self._backends[key]
        except KeyError:
            raise UnknownBackend(key, self.names()) from None

    @property
    def default(self) -> Backend:
        return self.get(None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def __len__(self) -> int:
        return len(self._backends)

    def statuses(self) -> dict[str, str]:
        """Backend name -> DMR status string, the body of ``GET /engines/status``."""
        return {name: backend.status() for name, backend in self._backends.items()}

    def select_for_format(self, model_format: str, requested: str | None = None) -> Backend:
        """The backend that serves a model of ``model_format``, as DMR picks it.

        A format with preferences (safetensors, dduf) overrides ``requested`` with the first
        preferred backend that is registered and supported on this host (its status is not
        ``Not Installed: <reason the host cannot run it>``, see ``host_supported``). Otherwise, and
        when no preferred backend is usable, the requested (or default) backend is returned.

        Raises:
            UnknownBackend: ``requested`` names no registered backend and no preference applied.
        """
        for candidate in FORMAT_PREFERENCES.get(model_format.lower(), ()):
            backend = self._backends.get(candidate)
            if backend is not None and _host_supported(backend):
                return backend
        return self.get(requested)


def _host_supported(backend: Backend) -> bool:
    # A backend may say it cannot run on this host at all (vLLM without an NVIDIA GPU); such a
    # backend is skipped by format selection, like DMR skips vLLM on non-Linux platforms.
    supported = getattr(backend, "host_supported", None)
    if supported is None:
        return True
    return bool(supported() if callable(supported) else supported)
