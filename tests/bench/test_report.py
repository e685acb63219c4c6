"""bench.report: BENCHMARKS.md sections, rendered and merged without touching the rest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.machine import MachineInfo
from bench.report import (
    DOCUMENT_PREAMBLE,
    Row,
    ScenarioReport,
    Verdict,
    render_console,
    render_section,
    update_document,
    write_report,
)

MACHINE = MachineInfo(
    cpu_model="AMD EPYC",
    cpus_online=2,
    cpus_usable=2,
    memory_bytes=24 << 30,
    kernel="6.1.0",
    os_name="Debian GNU/Linux 12 (bookworm)",
    cgroup="cgroup v1",
    containerd="1.6.20",
    runc="1.1.5",
    llama_cpp="version: 0.5.0-dev (build 11312, commit 0c1e570)",
    python="3.11.7",
    skopeo="1.9.3",
)


def report(name: str = "proxy", value: str = "1.00 ms", *, notes: tuple[str, ...] = ()) -> ScenarioReport:
    return ScenarioReport(
        name=name,
        title="tiny chat | through the daemon",
        command=f".venv/bin/python -m bench {name}",
        started=datetime(2026, 11, 27, 17, 0, tzinfo=UTC),
        duration_s=42.4,
        machine=MACHINE,
        candidate_label="modelrunner",
        baseline_label="llama-server",
        method="Alternating A and B.",
        rows=(
            Row("p50 latency", value, "0.80 ms", "+0.20 ms", "<= 1 ms", Verdict.MET),
            Row("p99 latency", "3.00 ms", "1.00 ms", "+2.00 ms"),
        ),
        notes=notes,
    )


def test_section_has_markers_command_table_and_machine() -> None:
    text = render_section(report(notes=("cut short",)))
    lines = text.splitlines()
    assert lines[0] == "<!-- bench:proxy:begin -->"
    assert lines[-1] == "<!-- bench:proxy:end -->"
    assert text.endswith("\n")
    assert "`.venv/bin/python -m bench proxy`" in text
    assert "2026-11-27 17:00 UTC, 42 s" in text
    assert "| p50 latency | 1.00 ms | 0.80 ms | +0.20 ms | <= 1 ms | met |" in lines
    assert "| p99 latency | 3.00 ms | 1.00 ms | +2.00 ms |  | — |" in lines
    assert "- cut short" in lines
    assert "- CPU: AMD EPYC, 2 CPUs" in lines
    assert "- containerd 1.6.20, runc 1.1.5" in lines
    assert "## proxy: tiny chat | through the daemon" in lines  # titles may hold pipes; cells may not


def test_pipes_in_cells_are_escaped() -> None:
    text = render_section(report(value="1 | 2"))
    assert "| p50 latency | 1 \\| 2 |" in text


def test_first_section_gets_the_preamble() -> None:
    section = render_section(report())
    assert update_document("", "proxy", section) == DOCUMENT_PREAMBLE + section


def test_rewriting_a_section_keeps_everything_else_byte_for_byte() -> None:
    old = render_section(report(value="9.99 ms"))
    other = render_section(report("pull"))
    document = "# My notes\n\nhand-written text\n\n" + old + "\n" + other + "\ntrailer\n"
    new = render_section(report(value="1.23 ms"))
    updated = update_document(document, "proxy", new)
    assert updated == "# My notes\n\nhand-written text\n\n" + new + "\n" + other + "\ntrailer\n"
    assert update_document(updated, "proxy", new) == updated  # idempotent


def test_new_sections_follow_the_scenario_order() -> None:
    pull = render_section(report("pull"))
    proxy = render_section(report("proxy"))
    api = render_section(report("api"))
    document = update_document("", "api", api)
    document = update_document(document, "proxy", proxy)  # proxy comes before api
    document = update_document(document, "pull", pull)  # pull comes after proxy, before api
    positions = [document.index(f"<!-- bench:{name}:begin -->") for name in ("proxy", "pull", "api")]
    assert positions == sorted(positions)
    assert document.startswith(DOCUMENT_PREAMBLE)


def test_unknown_scenarios_go_last() -> None:
    document = update_document("", "proxy", render_section(report("proxy")))
    extra = render_section(report("extra"))
    assert update_document(document, "extra", extra).endswith(extra)


def test_a_damaged_section_is_refused_not_rewritten() -> None:
    section = render_section(report())
    damaged = "text\n<!-- bench:proxy:begin -->\nhalf a table\n"
    with pytest.raises(ValueError, match="damaged section"):
        update_document(damaged, "proxy", section)
    with pytest.raises(ValueError, match="must start with"):
        update_document("", "proxy", render_section(report("pull")))


def test_invalid_scenario_names_are_refused() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        report("Bad Name")


def test_write_report_creates_then_updates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_report(path, report(value="5.00 ms"))
    assert path.read_text().startswith(DOCUMENT_PREAMBLE)
    write_report(path, report("pull"))
    write_report(path, report(value="6.00 ms"))
    text = path.read_text()
    assert "6.00 ms" in text and "5.00 ms" not in text
    assert text.count("<!-- bench:proxy:begin -->") == 1 and "<!-- bench:pull:begin -->" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]  # no temp files left


def test_write_report_leaves_a_damaged_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("<!-- bench:proxy:end -->\n")
    with pytest.raises(ValueError):
        write_report(path, report())
    assert path.read_text() == "<!-- bench:proxy:end -->\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]


def test_console_table_aligns_columns() -> None:
    text = render_console(report())
    lines = text.splitlines()
    assert lines[0].startswith("== proxy:")
    header, rule, first = lines[1], lines[2], lines[3]
    assert header.index("A: modelrunner") == first.index("1.00 ms")
    assert set(rule.replace(" ", "")) == {"-"}
    assert first.rstrip().endswith("met")


def test_revision_is_shown_when_known() -> None:
    from dataclasses import replace

    assert "revision" not in render_section(report())
    text = render_section(replace(report(), revision="abc1234 + uncommitted changes"))
    assert "42 s, revision abc1234 + uncommitted changes." in text


def test_load_average_is_shown_when_known() -> None:
    from dataclasses import replace

    text = render_section(replace(report(), load_average=(7.71, 8.2, 6.0)))
    assert "load average 7.7/8.2/6.0 (1/5/15 min) at start." in text
