"""`modelrunner serve`: run the daemon in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import logging.handlers
import os
import sys
from pathlib import Path

import trio
from modelrunner.cli._errors import CLIError
from modelrunner.cli.daemon import SERVICE_LOG_NAME, DaemonSettings, check_state_dir, run_daemon
from modelrunner.shim.errors import ContainerdError


def settings_from_args(args: argparse.Namespace) -> DaemonSettings:
    """`serve`'s parsed flags (env-var defaults already applied by the parser) as daemon settings."""
    host = str(args.host)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise CLIError(f"--host must be an IP address, not {host!r}") from None
    socket = str(args.socket or "").strip()
    return DaemonSettings(
        state_dir=Path(args.state_dir).absolute(),
        models_path=Path(args.models_path).absolute(),
        socket=Path(socket).absolute() if socket else None,
        tcp=(host, int(args.port)) if int(args.port) else None,
        containerd_address=args.containerd_address or None,
        namespace=str(args.namespace),
        memory=int(args.memory) if args.memory else None,
    )


def configure_logging(level: str, state_dir: Path) -> None:
    """Log to stderr and to `<state dir>/modelrunner.log` (served by `GET /logs`)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level.upper())
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    service_log = logging.handlers.RotatingFileHandler(
        state_dir / SERVICE_LOG_NAME, maxBytes=16 << 20, backupCount=2, encoding="utf-8"
    )
    service_log.setFormatter(formatter)
    root.handlers[:] = [console, service_log]
    # Per-request chatter of the HTTP clients would drown the daemon's own lines.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        check_state_dir(settings.state_dir)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    configure_logging(str(args.log_level), settings.state_dir)
    if os.geteuid() != 0:
        logging.getLogger("modelrunner.daemon").warning(
            "not running as root: containerd and runc need root for sandboxed engines"
        )
    try:
        trio.run(run_daemon, settings)
    except ContainerdError as exc:
        raise CLIError(f"containerd: {exc}") from exc
    except OSError as exc:
        raise CLIError(str(exc)) from exc
    return 0
