"""Entry point of the `modelrunner` command (filled in by cli/)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("version", "--version"):
        from modelrunner import __version__

        print(f"modelrunner {__version__}")
        return
    print("modelrunner: the CLI is not built yet (issue: cli/)", file=sys.stderr)
    raise SystemExit(2)
