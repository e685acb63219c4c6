"""Benchmark reports: values in, Markdown and console text out, plus the one file write.

Each scenario produces a :class:`ScenarioReport`. :func:`render_section` turns it into a Markdown
section fenced by HTML comment markers (``<!-- bench:proxy:begin -->`` ... ``:end -->``), and
:func:`update_document` puts that section into BENCHMARKS.md: it replaces the scenario's previous
section, or inserts it where :data:`SCENARIO_ORDER` says, leaving everything else (the preamble, the
other scenarios' sections) byte for byte as it was. So ``python -m bench pull`` refreshes only the
pull table and ``python -m bench all`` refreshes all six.
"""

from __future__ import annotations

import enum
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.machine import MachineInfo

__all__ = [
    "DOCUMENT_PREAMBLE",
    "SCENARIO_ORDER",
    "Row",
    "ScenarioReport",
    "Verdict",
    "render_console",
    "render_section",
    "update_document",
    "write_report",
]

SCENARIO_ORDER: tuple[str, ...] = ("proxy", "stream", "coldstart", "pull", "thrash", "api")

DOCUMENT_PREAMBLE = """\
# Benchmarks

Numbers on shared 2-core machines drift, so every benchmark here runs modelrunner (A) and a
baseline (B) in alternation, A B A B ..., under the same conditions, and reports the medians and
the ratio of the two (the median of per-round ratios, with their range). Only the ratios and the
added costs travel between machines; the absolute numbers describe the machine named in each
section.

Run one scenario with `.venv/bin/python -m bench NAME` or all six with `.venv/bin/python -m bench all`
from the repository root (as root: the scenarios start a private containerd, a registry and the
daemon). Each run rewrites its own section below; see `bench/README.md` for what each scenario
does and how the numbers are taken. Timing goals live here, never in tests.

"""


class Verdict(enum.StrEnum):
    MET = "met"
    MISSED = "**missed**"
    INFO = "—"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a scenario's table."""

    metric: str
    candidate: str
    baseline: str
    comparison: str
    """The ratio or the added cost, formatted."""
    target: str = ""
    verdict: Verdict = Verdict.INFO


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    """Everything a scenario's section shows."""

    name: str
    title: str
    command: str
    started: datetime
    duration_s: float
    machine: MachineInfo
    candidate_label: str
    baseline_label: str
    method: str
    """One paragraph: what was measured, how, and how many times."""
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = field(default=())
    revision: str = ""
    """The checkout measured (``git describe``-like), if known."""
    load_average: tuple[float, float, float] | None = None
    """The machine's 1/5/15-minute load average when the scenario started: how busy the shared
    machine was (the ratios hold up under load; the absolute numbers do not)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.name):
            raise ValueError(f"scenario name {self.name!r} must be lowercase letters, digits and dashes")


@dataclass(frozen=True)
class ScenarioRun:
    """A scenario's start, stamped once (``BenchContext.begin``): what every report repeats."""

    name: str
    command: str
    revision: str
    machine: MachineInfo
    started: datetime
    load_average: tuple[float, float, float]
    clock_start: float
    """``time.monotonic()`` at the start, for the report's duration."""

    def report(
        self,
        *,
        title: str,
        candidate_label: str,
        baseline_label: str,
        method: str,
        rows: tuple[Row, ...],
        notes: tuple[str, ...] = (),
    ) -> ScenarioReport:
        return ScenarioReport(
            name=self.name,
            title=title,
            command=self.command,
            revision=self.revision,
            load_average=self.load_average,
            started=self.started,
            duration_s=time.monotonic() - self.clock_start,
            machine=self.machine,
            candidate_label=candidate_label,
            baseline_label=baseline_label,
            method=method,
            rows=rows,
            notes=notes,
        )


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def _cell(text: str) -> str:
    # A pipe would split the cell; newlines would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def render_section(report: ScenarioReport) -> str:
    """The scenario's Markdown section, markers included, ending in a newline."""
    begin, end = _markers(report.name)
    lines = [
        begin,
        f"## {report.name}: {report.title}",
        "",
        f"Reproduce: `{report.command}`  ",
        f"Run: {report.started.strftime('%Y-%m-%d %H:%M UTC')}, {report.duration_s:.0f} s"
        + (f", revision {report.revision}" if report.revision else "")
        + (
            f", load average {'/'.join(f'{v:.1f}' for v in report.load_average)} (1/5/15 min) at start"
            if report.load_average
            else ""
        )
        + ".  ",
        f"A = {report.candidate_label}; B = {report.baseline_label}.",
        "",
        report.method,
        "",
        f"| metric | A: {_cell(report.candidate_label)} | B: {_cell(report.baseline_label)} "
        "| A vs B | target | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in report.rows:
        cells = (row.metric, row.candidate, row.baseline, row.comparison, row.target, str(row.verdict))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    if report.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in report.notes)
    lines += ["", "<details><summary>Machine</summary>", ""]
    lines += [f"- {item}" for item in report.machine.describe()]
    lines += ["", "</details>", end, ""]
    return "\n".join(lines)


def update_document(document: str, name: str, section: str, order: Sequence[str] = SCENARIO_ORDER) -> str:
    """``document`` with scenario ``name``'s section replaced by (or, if absent, set to) ``section``.

    A new section goes before the first section of a scenario that comes later in ``order`` (or at
    the end). An empty document gets :data:`DOCUMENT_PREAMBLE` first.

    Raises:
        ValueError: the document holds a damaged section for ``name`` (a begin marker without its
            end marker, or the reverse), which a blind rewrite would corrupt further.
    """
    begin, end = _markers(name)
    if not section.startswith(begin) or not section.rstrip("\n").endswith(end):
        raise ValueError(f"the section for {name!r} must start with {begin} and end with {end}")
    section = section.rstrip("\n") + "\n"
    has_begin, has_end = begin in document, end in document
    if has_begin != has_end or document.count(begin) > 1 or document.count(end) > 1:
        raise ValueError(
            f"BENCHMARKS.md has a damaged section for {name!r} (its {begin} and {end} markers do not "
            "pair up); fix or delete that section by hand, then run the benchmark again"
        )
    if has_begin:
        start = document.index(begin)
        stop = document.index(end, start) + len(end)
        if stop < len(document) and document[stop] == "\n":
            stop += 1
        return document[:start] + section + document[stop:]
    if not document.strip():
        return DOCUMENT_PREAMBLE + section
    later = list(order[order.index(name) + 1 :]) if name in order else []
    positions = [document.index(_markers(other)[0]) for other in later if _markers(other)[0] in document]
    if positions:
        at = min(positions)
        return document[:at] + section + "\n" + document[at:]
    if not document.endswith("\n"):
        document += "\n"
    if not document.endswith("\n\n"):
        document += "\n"
    return document + section


def write_report(path: Path, report: ScenarioReport) -> None:
    """Put ``report``'s section into the Markdown file at ``path`` (created if missing), atomically:
    a crash leaves the old file or the new one, never half of one.

    Raises:
        ValueError: the file holds a damaged section for this scenario (see :func:`update_document`).
        OSError: the file cannot be read or written.
    """
    existing = path.read_text() if path.exists() else ""
    updated = update_document(existing, report.name, render_section(report))
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(updated)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def render_console(report: ScenarioReport) -> str:
    """A plain-text table for the terminal."""
    header = (
        "metric",
        f"A: {report.candidate_label}",
        f"B: {report.baseline_label}",
        "A vs B",
        "target",
        "verdict",
    )
    rows = [header] + [
        (r.metric, r.candidate, r.baseline, r.comparison, r.target, r.verdict.value.strip("*"))
        for r in report.rows
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    load = f", load {report.load_average[0]:.1f}" if report.load_average else ""
    lines = [f"== {report.name}: {report.title} ({report.duration_s:.0f} s{load})"]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.extend(f"  * {note}" for note in report.notes)
    return "\n".join(lines)
