"""``python -m bench NAME|all``: run benchmark scenarios and record them in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import trio

from bench.context import BenchContext
from bench.report import render_console, write_report
from bench.scenarios import RUN_ORDER, SCENARIOS, load
from bench.services import REPO

DEFAULT_OUTPUT = REPO / "BENCHMARKS.md"
# The bound for all six together is 15 minutes; each scenario bounds its own loops so that
# the sum stays under this, and this cap makes it a guarantee (a scenario cut off is a failure).
TOTAL_SECONDS = 14.5 * 60


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {SCENARIOS[name]}" for name in RUN_ORDER)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run modelrunner's benchmarks: each scenario alternates modelrunner (A) with its "
        "baseline (B) and reports medians and ratios.",
        epilog=f"scenarios:\n{lines}\n  all        every scenario, in the order above",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="+", metavar="NAME", choices=[*RUN_ORDER, "all"], help="scenario(s) to run, or 'all'"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"Markdown file to update (default: {DEFAULT_OUTPUT.name} at the repo root)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the results only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run (fewer rounds, smaller artifacts); written only with --output",
    )
    return parser


async def run_all(names: list[str], ctx: BenchContext, output: Path | None) -> int:
    failures = 0
    deadline = trio.current_time() + TOTAL_SECONDS
    for name in names:
        ctx.log(name, "starting")
        started = time.monotonic()
        try:
            with trio.fail_at(deadline):
                report = await load(name)(ctx)
        except Exception as exc:  # one broken scenario must not stop the others; report and go on
            failures += 1
            if isinstance(exc, trio.TooSlowError) and trio.current_time() >= deadline:
                print(
                    f"== {name}: cut off by the {TOTAL_SECONDS / 60:.1f}-minute limit of one run",
                    file=sys.stderr,
                )
            else:
                print(f"== {name}: FAILED after {time.monotonic() - started:.0f} s", file=sys.stderr)
                traceback.print_exc()
            continue
        print(render_console(report), flush=True)
        if output is not None:
            write_report(output, report)
            ctx.log(name, f"written to {output}")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = list(RUN_ORDER) if "all" in args.names else list(dict.fromkeys(args.names))
    output: Path | None = args.output or (None if args.quick else DEFAULT_OUTPUT)
    if args.no_write:
        output = None
    ctx = BenchContext(quick=args.quick)
    started = time.monotonic()
    failures = trio.run(run_all, names, ctx, output)
    elapsed = time.monotonic() - started
    print(f"bench: {len(names) - failures}/{len(names)} scenario(s) ran in {elapsed:.0f} s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
