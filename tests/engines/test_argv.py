"""llama-server argv and launch settings (pure, table-tested)."""

from __future__ import annotations

from typing import Any

import pytest
from modelrunner.engines import InvalidRuntimeFlags, Mode
from modelrunner.engines.llamacpp.argv import (
    DEFAULT_CONTEXT_SIZE,
    BundleLayout,
    build_argv,
    packaged_context_size,
    resolve_launch,
)


def launch(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "mode": Mode.COMPLETION,
        "alias": "ai/tiny:latest",
        "context_size": None,
        "packaged_context_size": None,
        "trained_context": 4096,
        "parallel": None,
        "runtime_flags": (),
        "threads": 2,
        "gpu_available": False,
    }
    args.update(overrides)
    return resolve_launch(**args)


def test_completion_argv_in_dmr_order() -> None:
    argv = build_argv(launch(context_size=2048), BundleLayout(chat_template="template.jinja"))
    assert argv == [
        "/usr/local/bin/llama-server",
        "-ngl", "999", "--metrics", "--no-webui",
        "--alias", "ai/tiny:latest", "--parallel", "1", "--threads", "2",
        "--model", "/models/model.gguf", "--host", "/run/engine/engine.sock",
        "--chat-template-file", "/models/template.jinja",
        "--ctx-size", "2048",
        "--jinja",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (Mode.COMPLETION, []),
        (Mode.EMBEDDING, ["--embeddings"]),
        (Mode.RERANKING, ["--embeddings", "--reranking"]),
    ],
)
def test_mode_flags(mode: Mode, expected: list[str]) -> None:
    argv = build_argv(launch(mode=mode), BundleLayout())
    socket_at = argv.index("/run/engine/engine.sock")
    ctx_at = argv.index("--ctx-size")
    assert argv[socket_at + 1 : ctx_at] == expected


def test_template_only_in_completion_mode() -> None:
    bundle = BundleLayout(chat_template="template.jinja")
    assert "--chat-template-file" in build_argv(launch(), bundle)
    assert "--chat-template-file" not in build_argv(launch(mode=Mode.EMBEDDING), bundle)


def test_mmproj_replaces_jinja() -> None:
    with_mmproj = build_argv(launch(), BundleLayout(mmproj="model.mmproj"))
    assert with_mmproj[-2:] == ["--mmproj", "/models/model.mmproj"]
    assert "--jinja" not in with_mmproj
    assert build_argv(launch(), BundleLayout())[-1] == "--jinja"


def test_runtime_flags_come_after_ctx_size_and_before_jinja() -> None:
    argv = build_argv(launch(runtime_flags=("--temp", "0.2", "-fa", "on")), BundleLayout())
    assert argv[-5:] == ["--temp", "0.2", "-fa", "on", "--jinja"]
    assert argv.index("--ctx-size") < argv.index("--temp")


@pytest.mark.parametrize(
    ("configured", "packaged", "trained", "parallel", "ctx_size", "slot_context"),
    [
        (None, None, 4096, None, 4096, 4096),  # training context, 1 slot
        (None, None, 131072, None, DEFAULT_CONTEXT_SIZE, DEFAULT_CONTEXT_SIZE),  # capped
        (None, 8192, 131072, None, 8192, 8192),  # packaged context_size
        (2048, 8192, 131072, None, 2048, 2048),  # _configure wins over packaged
        (-1, None, 32768, None, 32768, 32768),  # DMR's "unlimited" = training context
        (None, -1, 32768, None, 32768, 32768),
        (2048, None, 4096, 4, 8192, 2048),  # each slot gets the configured context
        (None, None, None, None, DEFAULT_CONTEXT_SIZE, DEFAULT_CONTEXT_SIZE),
    ],
)
def test_context_size(
    configured: int | None, packaged: int | None, trained: int | None, parallel: int | None,
    ctx_size: int, slot_context: int,
) -> None:
    settings = launch(context_size=configured, packaged_context_size=packaged, trained_context=trained,
                      parallel=parallel)
    assert settings.n_ctx == ctx_size
    assert settings.slot_context == slot_context
    argv = build_argv(settings, BundleLayout())
    assert argv[argv.index("--ctx-size") + 1] == str(ctx_size)


def test_kv_unified_shares_one_pool() -> None:
    settings = launch(context_size=4096, parallel=4, runtime_flags=("--kv-unified",))
    assert (settings.n_ctx, settings.kv_cells, settings.slot_context) == (4096, 4096, 4096)


def test_runtime_flags_override_and_the_settings_follow() -> None:
    settings = launch(context_size=2048, parallel=2, runtime_flags=("-np", "3", "-c", "3000", "-t", "1"))
    assert settings.parallel == 3
    assert settings.n_ctx == 3000
    # llama.cpp pads the pool and each slot's share to 256 cells.
    assert settings.slot_context == 1024
    assert settings.kv_cells == 3072
    assert settings.threads == 1


def test_cache_types_and_batches_from_flags() -> None:
    settings = launch(runtime_flags=("-ctk", "q8_0", "--cache-type-v=Q4_0", "-ub", "256", "-fa", "off"))
    assert (settings.cache_type_k, settings.cache_type_v) == ("q8_0", "q4_0")
    assert settings.ubatch == 256
    assert settings.flash_attn == "off"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"runtime_flags": ("-np", "0")}, "at least 1"),
        ({"runtime_flags": ("-c", "lots")}, "needs an integer"),
        ({"parallel": 0}, "positive integer"),
        ({"parallel": 1000}, "at most"),
        ({"runtime_flags": ("--model", "x")}, "not allowed"),
        ({"context_size": 1 << 30}, "larger than"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRuntimeFlags, match=message):
        launch(**overrides)


def test_gpu_layers_only_count_with_a_gpu() -> None:
    assert launch().n_gpu_layers == 0
    assert launch(gpu_available=True).n_gpu_layers == 999
    assert launch(gpu_available=True, runtime_flags=("-ngl", "10")).n_gpu_layers == 10


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../b", ""])
def test_bundle_paths_must_stay_inside(name: str) -> None:
    with pytest.raises(ValueError, match="inside the bundle"):
        BundleLayout(model=name)


@pytest.mark.parametrize(
    ("config", "expected"),
    [({}, None), ({"context_size": 8192}, 8192), ({"context_size": -1}, -1), ({"context_size": 0}, None),
     ({"context_size": "8192"}, None), ({"context_size": True}, None)],
)
def test_packaged_context_size(config: dict[str, Any], expected: int | None) -> None:
    assert packaged_context_size(config) == expected
