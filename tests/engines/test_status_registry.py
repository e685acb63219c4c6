"""Status strings (DMR grammar) and the backend registry with format-based selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from modelrunner.engines import UnknownBackend
from modelrunner.engines.registry import BackendRegistry
from modelrunner.engines.status import BackendState, BackendStatus


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (
            BackendStatus.running("llama.cpp b11312-cpu (sha256:abc)"),
            "Running: llama.cpp b11312-cpu (sha256:abc)",
        ),
        (BackendStatus.not_installed("requires an NVIDIA GPU"), "Not Installed: requires an NVIDIA GPU"),
        (BackendStatus.not_installed(), "Not Installed"),
        (BackendStatus.installing(), "Installing"),
        (BackendStatus.error("import failed"), "Error: import failed"),
        (BackendStatus.error("two\nlines"), "Error: two lines"),
    ],
)
def test_status_strings(status: BackendStatus, text: str) -> None:
    assert str(status) == text
    assert BackendStatus.parse(text) == status


def test_parse_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="not a backend status"):
        BackendStatus.parse("Runnin")
    assert BackendStatus.parse("Not Installed: x").state is BackendState.NOT_INSTALLED


@dataclass
class FakeBackend:
    """Only what the registry looks at."""

    name: str
    formats: frozenset[str] = frozenset()
    host_supported: bool = True
    calls: list[str] = field(default_factory=list)

    def status(self) -> str:
        return "Running: fake" if self.host_supported else "Not Installed: requires an NVIDIA GPU"

    async def install(self, progress: Callable[[str], None] | None = None) -> None: ...
    async def uninstall(self) -> None: ...
    def validate_runtime_flags(self, flags: Sequence[str]) -> None: ...


def make_registry(*, vllm_supported: bool) -> BackendRegistry:
    return BackendRegistry([
        FakeBackend("llama.cpp", frozenset({"gguf"})),  # type: ignore[list-item]
        FakeBackend("vllm", frozenset({"safetensors"}), host_supported=vllm_supported),  # type: ignore[list-item]
    ])


def test_default_and_lookup() -> None:
    registry = make_registry(vllm_supported=True)
    assert registry.get().name == "llama.cpp"
    assert registry.get("").name == "llama.cpp"
    assert registry.get("vllm").name == "vllm"
    assert registry.names() == ("llama.cpp", "vllm")
    assert registry.statuses() == {"llama.cpp": "Running: fake", "vllm": "Running: fake"}
    with pytest.raises(UnknownBackend, match=r"unknown backend 'mlx'; known backends: llama\.cpp, vllm"):
        registry.get("mlx")


def test_duplicate_names_are_refused() -> None:
    registry = make_registry(vllm_supported=True)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(FakeBackend("vllm"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_format", "requested", "vllm_supported", "chosen"),
    [
        ("gguf", None, True, "llama.cpp"),
        ("gguf", "vllm", True, "vllm"),  # gguf keeps the requested backend
        ("safetensors", None, True, "vllm"),  # safetensors overrides the default
        ("safetensors", "llama.cpp", True, "vllm"),  # ... and the requested one
        ("safetensors", None, False, "llama.cpp"),  # no GPU: keep the requested/default
        ("SafeTensors", None, True, "vllm"),
        ("unknown", None, True, "llama.cpp"),
        ("dduf", None, True, "llama.cpp"),  # no diffusers backend registered
    ],
)
def test_select_for_format(
    model_format: str, requested: str | None, vllm_supported: bool, chosen: str
) -> None:
    registry = make_registry(vllm_supported=vllm_supported)
    assert registry.select_for_format(model_format, requested).name == chosen


def test_select_for_format_with_unknown_requested_backend() -> None:
    registry = make_registry(vllm_supported=True)
    assert registry.select_for_format("safetensors", "nope").name == "vllm"
    with pytest.raises(UnknownBackend):
        registry.select_for_format("gguf", "nope")
