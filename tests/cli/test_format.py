"""Pure formatting: names, sizes, durations, ls/ps rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from modelrunner.cli._format import (
    format_bytes_decimal,
    format_duration_ago,
    format_until,
    model_rows,
    parse_byte_size,
    parse_go_duration,
    runner_rows,
    short_id,
    split_repo_tag,
)

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("8GiB", 8 * 1024**3),
        ("8gib", 8 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("16GB", 16 * 1000**3),
        ("1.5G", 1_500_000_000),
        (" 2 Ki ", 2048),
    ],
)
def test_parse_byte_size(text: str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "8 parsecs", "-1GiB", "0", "GiB", "1e9"])
def test_parse_byte_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (1_234_000_000, "1.23GB"),
        (456_000_000, "456MB"),
        (12_345_000, "12.3MB"),
    ],
)
def test_format_bytes_decimal(size: int, expected: str) -> None:
    assert format_bytes_decimal(size) == expected


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=0.5), "Less than a second ago"),
        (timedelta(seconds=30), "30 seconds ago"),
        (timedelta(minutes=1), "About a minute ago"),
        (timedelta(minutes=45), "45 minutes ago"),
        (timedelta(hours=1), "About an hour ago"),
        (timedelta(hours=5), "5 hours ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=21), "3 weeks ago"),
        (timedelta(days=90), "3 months ago"),
        (timedelta(days=800), "2 years ago"),
    ],
)
def test_format_duration_ago(delta: timedelta, expected: str) -> None:
    assert format_duration_ago(NOW - delta, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m0s", timedelta(minutes=5)),
        ("1h30m", timedelta(minutes=90)),
        ("0", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(minutes=90)),
        ("-1", None),
        ("-5m", None),
    ],
)
def test_parse_go_duration(text: str, expected: timedelta | None) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", ["5 minutes", "m5", "5x", "1h 2m"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_short_id() -> None:
    assert short_id("sha256:" + "0123456789ab" + "f" * 52) == "0123456789ab"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("myorg/m", ("myorg/m", "latest")),
        ("myorg/m:v2", ("myorg/m", "v2")),
        ("localhost:5000/m", ("localhost:5000/m", "latest")),
        ("localhost:5000/org/m:Q4_K_M", ("localhost:5000/org/m", "Q4_K_M")),
    ],
)
def test_split_repo_tag(target: str, expected: tuple[str, str]) -> None:
    assert split_repo_tag(target) == expected


@pytest.mark.parametrize("target", ["", "m:", "m@sha256:" + "a" * 64, "org/:v1"])
def test_split_repo_tag_rejects(target: str) -> None:
    with pytest.raises(ValueError):
        split_repo_tag(target)


def _model(tags: list[str] | None, **config: object) -> dict[str, object]:
    model: dict[str, object] = {
        "id": "sha256:" + "ab" * 32,
        "created": int((NOW - timedelta(days=3)).timestamp()),
        "config": {
            "parameters": "361.82M",
            "quantization": "Q4_K_M",
            "architecture": "llama",
            "size": "256.35MiB",
            **config,
        },
    }
    if tags is not None:
        model["tags"] = tags
    return model


def test_model_rows_one_per_tag_with_display_names() -> None:
    rows = model_rows(
        [_model(["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:135M"], context_size=8192)], NOW
    )
    assert [r.name for r in rows] == ["smollm2", "smollm2:135M"]
    assert rows[0].cells() == (
        "smollm2",
        "361.82M",
        "Q4_K_M",
        "llama",
        "abababababab",
        "3 days ago",
        "8192",
        "256.35MiB",
    )


def test_model_rows_untagged_and_gguf_context_fallback() -> None:
    rows = model_rows(
        [_model(None, gguf={"general.architecture": "qwen2", "qwen2.context_length": "32768"})], NOW
    )
    assert rows[0].name == "<none>"
    assert rows[0].context == "32768"


def test_model_rows_filter_and_legacy_spacing() -> None:
    models = [
        _model(["docker.io/ai/smollm2:latest"], parameters="361.82 M"),
        _model(["huggingface.co/org/tiny:Q4_K_M"]),
    ]
    rows = model_rows(models, NOW, name_filter="TINY")
    assert [r.name for r in rows] == ["huggingface.co/org/tiny:Q4_K_M"]
    assert model_rows(models, NOW)[0].parameters == "361.82M"


def test_model_rows_tolerates_junk() -> None:
    rows = model_rows(["not a model", {"id": 5, "config": "x", "created": "yesterday"}], NOW)
    assert len(rows) == 1 and rows[0].name == "<none>" and rows[0].created == ""


@pytest.mark.parametrize(
    ("runner", "expected"),
    [
        ({"loading": True}, "Loading..."),
        ({"in_use": True, "last_used": "0001-01-01T00:00:00Z"}, "In use"),
        ({"keep_alive": "-1", "last_used": "2026-01-10T11:00:00Z"}, "Forever"),
        ({"last_used": "2026-01-10T11:58:00.123456789Z"}, "3 minutes from now"),
        ({"keep_alive": "1h0m0s", "last_used": "2026-01-10T11:30:00Z"}, "30 minutes from now"),
        ({"keep_alive": "5m0s", "last_used": "2026-01-10T11:00:00Z"}, "Expiring"),
    ],
)
def test_format_until(runner: dict[str, object], expected: str) -> None:
    assert format_until(runner, NOW) == expected


def test_runner_rows() -> None:
    rows = runner_rows(
        [{"backend_name": "llama.cpp", "model_name": "ai/smollm2", "mode": "completion", "loading": True}],
        NOW,
    )
    assert rows[0].cells() == ("smollm2", "llama.cpp", "completion", "Loading...")


@pytest.mark.parametrize(
    "tag",
    [
        "docker.io/ai/smollm2:latest",
        "index.docker.io/ai/smollm2:135M",
        "docker.io/myorg/m:latest",
        "huggingface.co/org/m:Q4_K_M",
        "localhost:5000/ai/m:latest",
        "ai/m",
        "sha256:" + "a" * 64,
    ],
)
def test_display_name_matches_distribution(tag: str) -> None:
    from modelrunner.cli._format import display_name
    from modelrunner.distribution.reference import display_name as distribution_display_name

    assert display_name(tag) == distribution_display_name(tag)


def test_client_verbs_do_not_load_the_daemon_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from modelrunner.cli.main import build_parser; build_parser({}); "
        "import modelrunner.cli._run, modelrunner.cli._commands; "
        "heavy = ('trio', 'modelrunner.distribution', 'modelrunner.api'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
