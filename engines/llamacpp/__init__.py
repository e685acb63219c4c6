"""The llama.cpp backend (llama-server b11312): argv, memory estimate, the backend itself."""

from modelrunner.engines.llamacpp.argv import BundleLayout, LaunchSettings, build_argv, resolve_launch
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.engines.llamacpp.memory import (
    BufferReport,
    MemoryBreakdown,
    corrected_estimate,
    estimate_llamacpp,
    parse_buffer_report,
)

__all__ = [
    "BufferReport",
    "BundleLayout",
    "LaunchSettings",
    "LlamaCppBackend",
    "MemoryBreakdown",
    "build_argv",
    "corrected_estimate",
    "estimate_llamacpp",
    "open_llamacpp_backend",
    "parse_buffer_report",
    "resolve_launch",
]
