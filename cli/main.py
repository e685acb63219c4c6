"""Entry point of the ``modelrunner`` command: argument parsing, dispatch, and the one error handler.

The verbs mirror ``docker model`` (reference dmr.md section 5) so its users feel at home. Every
failure ends here: a ``CLIError`` is printed as ``modelrunner: error: <one line>`` with its exit
status; Ctrl-C exits 130; a broken pipe (``modelrunner logs | head``) exits quietly. Only
``--debug`` shows tracebacks and the daemon's full error text.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from modelrunner import __version__
from modelrunner.cli._endpoint import DEFAULT_SOCKET
from modelrunner.cli._errors import CLIError, ExitStatus
from modelrunner.cli._format import parse_byte_size

__all__ = ["build_parser", "main", "run_cli"]

PROG = "modelrunner"
DEFAULT_PORT = 12434
DEFAULT_MODELS_PATH = "/var/lib/modelrunner/models"
DEFAULT_STATE_DIR = "/var/lib/modelrunner"
DEFAULT_NAMESPACE = "modelrunner"
LOG_LEVELS = ("debug", "info", "warning", "error")

Handler = Callable[[Any, argparse.Namespace], ExitStatus]


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (``modelrunner: error: …``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog
        self.exit(
            ExitStatus.USAGE,
            f"{PROG}: error: {message} (see '{command} --help')\n",
        )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535; 0 disables TCP)")
    return port


def _byte_size(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0 and value != -1:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 (or -1 for the model's maximum)")
    return value


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set in the environment, trimmed of spaces and quotes as DMR does
    (scripts written for it rely on that)."""
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip().strip("'\""):
            return value.strip().strip("'\"")
    return None


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level == "warn":
        level = "warning"
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _env_typed(convert: Callable[[str], Any], env_name: str) -> Callable[[str], Any]:
    """``convert``, with errors naming the env var too: a bad default comes from the environment."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (from the flag or {env_name})") from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _add_serve(sub: Any, common: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the daemon (API, scheduler, containerd engines)",
        description="Run the modelrunner daemon in the foreground; SIGINT/SIGTERM shut it down cleanly. "
        "Every flag can also be set through the environment variable named in its help.",
    )
    serve.add_argument(
        "--socket",
        metavar="PATH",
        default=_env(environ, "MODEL_RUNNER_SOCK") or DEFAULT_SOCKET,
        help=f"Unix socket to listen on (env MODEL_RUNNER_SOCK; default {DEFAULT_SOCKET})",
    )
    serve.add_argument(
        "--port",
        type=_env_typed(_port, "MODEL_RUNNER_PORT"),
        default=_env(environ, "MODEL_RUNNER_PORT") or str(DEFAULT_PORT),
        help=f"TCP port to listen on, 0 for none (env MODEL_RUNNER_PORT; default {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address the TCP port binds to (default 127.0.0.1; 0.0.0.0 exposes the API to the network)",
    )
    serve.add_argument(
        "--models-path",
        metavar="DIR",
        default=_env(environ, "MODELS_PATH") or DEFAULT_MODELS_PATH,
        help=f"model store directory (env MODELS_PATH; default {DEFAULT_MODELS_PATH})",
    )
    serve.add_argument(
        "--state-dir",
        metavar="DIR",
        default=_env(environ, "MODELRUNNER_STATE_DIR") or DEFAULT_STATE_DIR,
        help="runner sockets, logs and the embedded containerd's state "
        f"(env MODELRUNNER_STATE_DIR; default {DEFAULT_STATE_DIR})",
    )
    serve.add_argument(
        "--containerd-address",
        metavar="PATH",
        default=_env(environ, "CONTAINERD_ADDRESS"),
        help="socket of an existing containerd to use; unset starts an embedded one (env CONTAINERD_ADDRESS)",
    )
    serve.add_argument(
        "--namespace",
        default=_env(environ, "MODELRUNNER_NAMESPACE") or DEFAULT_NAMESPACE,
        help=f"containerd namespace for engines (env MODELRUNNER_NAMESPACE; default {DEFAULT_NAMESPACE})",
    )
    serve.add_argument(
        "--memory",
        type=_env_typed(_byte_size, "MODELRUNNER_MEMORY"),
        metavar="SIZE",
        default=_env(environ, "MODELRUNNER_MEMORY"),
        help="memory engines may use in total, in bytes or with a unit such as 8GiB "
        "(env MODELRUNNER_MEMORY; default: measured from the host)",
    )
    serve.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=_env_typed(_log_level, "MODELRUNNER_LOG_LEVEL"),
        default=_env(environ, "MODELRUNNER_LOG_LEVEL", "LOG_LEVEL") or "info",
        help=f"log verbosity: {', '.join(LOG_LEVELS)} (env MODELRUNNER_LOG_LEVEL, or DMR's LOG_LEVEL; "
        "default info)",
    )
    serve.set_defaults(handler=_run_serve, parser=serve)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The full command-line grammar. ``environ`` supplies the env-var defaults of ``serve``."""
    from modelrunner.cli import _commands as c
    from modelrunner.cli import _run

    environ = os.environ if environ is None else environ
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the daemon's full error text",
    )
    parser = _Parser(
        prog=PROG,
        description="Run AI models locally the way containers run programs. The client verbs talk to "
        "the daemon on its Unix socket (MODEL_RUNNER_SOCK, default "
        f"{DEFAULT_SOCKET}) or at MODEL_RUNNER_HOST (http://HOST:PORT or unix:///PATH).",
        epilog="Exit status: 0 success, 1 error, 2 usage error, 3 daemon not running, "
        "4 not found, 130 interrupted.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and the daemon's full error text"
    )
    parser.add_argument("-v", "--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def verb(
        name: str, handler: Handler, help_text: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            aliases=list(aliases),
            parents=[common],
            help=help_text,
            description=help_text[:1].upper() + help_text[1:] + ".",
        )
        p.set_defaults(handler=handler, parser=p)
        return p

    _add_serve(sub, common, environ)

    p = verb("pull", c.cmd_pull, "pull a model from a registry or Hugging Face (HF_TOKEN is used for hf.co)")
    p.add_argument("model", metavar="MODEL", type=_nonempty)

    p = verb("push", c.cmd_push, "push a model to its registry")
    p.add_argument("model", metavar="MODEL", type=_nonempty)

    p = verb("ls", c.cmd_ls, "list the models in the store", aliases=["list"])
    p.add_argument("filter", metavar="FILTER", nargs="?", default="", help="show only names containing this")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print the daemon's model objects as JSON")
    group.add_argument("--openai", action="store_true", help="print the OpenAI /v1/models listing")
    group.add_argument("-q", "--quiet", action="store_true", help="print model IDs only")

    p = verb("rm", c.cmd_rm, "remove models (a tag, or the model with all its tags)", aliases=["remove"])
    p.add_argument("models", metavar="MODEL", nargs="+", type=_nonempty)
    p.add_argument("-f", "--force", action="store_true", help="remove a model even if it has several tags")

    p = verb("run", _run.cmd_run, "chat with a model: one prompt, or interactively without one")
    p.add_argument("model", metavar="MODEL", type=_nonempty)
    p.add_argument("prompt", metavar="PROMPT", nargs="*", help="the prompt; read from stdin when piped")
    p.add_argument("-d", "--detach", action="store_true", help="load the model and return")

    p = verb("inspect", c.cmd_inspect, "show a model's details as JSON")
    p.add_argument("model", metavar="MODEL", type=_nonempty)
    p.add_argument("--openai", action="store_true", help="show the OpenAI /v1/models entry")
    p.add_argument(
        "-r", "--remote", action="store_true", help="read the manifest and config from the registry"
    )

    p = verb("tag", c.cmd_tag, "give a model another name")
    p.add_argument("source", metavar="SOURCE", type=_nonempty)
    p.add_argument("target", metavar="TARGET", type=_nonempty)

    p = verb("package", _cmd_package, "package a GGUF file as a model and load or push it")
    p.add_argument("model", metavar="MODEL", type=_nonempty, help="name for the packaged model")
    p.add_argument(
        "--gguf",
        metavar="FILE",
        required=True,
        help="GGUF weights (the first shard, for a model split into shards)",
    )
    p.add_argument("--license", metavar="FILE", action="append", default=[], help="license file (repeatable)")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template")
    p.add_argument("--mmproj", metavar="FILE", help="multimodal projector (GGUF)")
    p.add_argument("--context-size", type=_positive_int, metavar="N", help="default context size in tokens")
    p.add_argument("--push", action="store_true", help="push to the registry named in MODEL")

    p = verb("ps", c.cmd_ps, "list the loaded models")
    p.add_argument("--json", action="store_true", help="print the daemon's runner objects as JSON")

    p = verb("df", c.cmd_df, "show disk usage of models and engines")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    p = verb("unload", c.cmd_unload, "unload models from memory", aliases=["stop"])
    p.add_argument("models", metavar="MODEL", nargs="*")
    p.add_argument("--all", action="store_true", help="unload every idle model")
    p.add_argument("--backend", metavar="NAME", help="only runners of this backend (e.g. llama.cpp)")

    p = verb("logs", c.cmd_logs, "show the daemon's and engines' logs")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--no-engines", action="store_true", help="only the daemon's own log")

    p = verb("requests", c.cmd_requests, "show the last requests and answers of each model")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing requests as they finish")
    p.add_argument(
        "--include-existing", action="store_true", help="with --follow: start with the recorded ones"
    )
    p.add_argument("--model", metavar="MODEL", help="only this model's requests")

    p = verb("status", c.cmd_status, "check that the daemon runs, and its engines' state")
    p.add_argument("--json", action="store_true", help="print as JSON (includes the containerd address)")

    verb("version", c.cmd_version, "show client and daemon versions")

    p = verb(
        "configure",
        c.cmd_configure,
        "set a model's runtime settings ('configure show [MODEL]' lists them)",
        aliases=["config"],
    )
    p.add_argument("model", metavar="MODEL", type=_nonempty)
    p.add_argument("runtime_flags", metavar="-- FLAG", nargs="*", help="engine flags, after --")
    p.add_argument("--context-size", type=_positive_int, metavar="N", help="context size in tokens")
    p.add_argument(
        "--keep-alive",
        metavar="DURATION",
        help="how long an idle model stays loaded: 5m, 1h, 0 (unload at once), -1 (forever)",
    )
    p.add_argument(
        "--mode", choices=("completion", "embedding", "reranking"), help="which runner to configure"
    )
    p.add_argument("--backend", metavar="NAME", help="backend (default: the daemon's default)")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None, help="enable reasoning")
    think.add_argument("--no-think", dest="think", action="store_false", help="disable reasoning")
    p.add_argument("--reasoning-budget", type=int, metavar="N", help="reasoning tokens (-1 unlimited, 0 off)")

    p = verb("install-engine", c.cmd_install_engine, "install an inference engine")
    p.add_argument("backend", metavar="ENGINE", nargs="?", default="llama.cpp", help="default llama.cpp")
    p.add_argument("--version", dest="engine_version", metavar="VERSION", help="engine version to install")

    p = verb("uninstall-engine", c.cmd_uninstall_engine, "remove an inference engine")
    p.add_argument("backend", metavar="ENGINE", type=_nonempty)

    return parser


def _cmd_package(ctx: Any, args: argparse.Namespace) -> ExitStatus:
    # distribution/ (GGUF reading, OCI values) loads trio and its registry client: only `package`
    # pays for that import.
    from modelrunner.cli._package import cmd_package

    return cmd_package(ctx, args)


def _run_serve(ctx: Any, args: argparse.Namespace) -> ExitStatus:
    # Imported only for `serve`, so client verbs never load trio, the API server or containerd
    # code; by name, because the daemon wiring lives in its own module (cli/serve.py).
    try:
        serve = importlib.import_module("modelrunner.cli.serve")
    except ModuleNotFoundError as exc:
        if exc.name != "modelrunner.cli.serve":
            raise
        raise CLIError("this build of modelrunner has no daemon (modelrunner.cli.serve is missing)") from exc
    result = serve.run(args)
    return ExitStatus(result) if isinstance(result, int) else ExitStatus.SUCCESS


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, letting options and positionals of a verb mix in any order.

    Plain argparse stops filling ``run MODEL [PROMPT...]`` at the first option, so
    ``run m -d hi`` or ``rm a -f b`` would fail; a second pass over the verb's own arguments
    with ``parse_intermixed_args`` accepts them, and reports errors against the verb's parser
    so the hint names ``modelrunner VERB --help``.
    """
    args, _ = parser.parse_known_args(argv)
    verb_parser: argparse.ArgumentParser | None = getattr(args, "parser", None)
    if verb_parser is None:
        return parser.parse_args(argv)  # no verb: let argparse report what is wrong
    verb_index = next(i for i, token in enumerate(argv) if not token.startswith("-"))
    fresh = argparse.Namespace(debug=args.debug, command=args.command)
    return verb_parser.parse_intermixed_args(argv[verb_index + 1 :], namespace=fresh)


def run_cli(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
) -> int:
    """Run the command line ``argv`` (without the program name) and return its exit status.

    Streams and environment default to the process's; tests and embedders pass their own.
    """
    from modelrunner.cli._context import Context

    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser(environ)
    try:
        args = _parse(parser, list(argv))
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed already
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    if getattr(args, "handler", None) is None:
        parser.print_help(stdout)
        return ExitStatus.USAGE
    debug = bool(getattr(args, "debug", False))
    ctx = Context(
        environ=environ,
        stdin=sys.stdin if stdin is None else stdin,
        stdout=stdout,
        stderr=stderr,
        debug=debug,
    )
    try:
        return int(args.handler(ctx, args))
    except CLIError as exc:
        if debug:
            traceback.print_exc(file=stderr)
            if exc.detail and exc.detail != exc.message:
                stderr.write(exc.detail.rstrip() + "\n")
        stderr.write(f"{PROG}: error: {exc.message}\n")
        return int(exc.exit_status)
    except KeyboardInterrupt:
        stderr.write("\n")
        return ExitStatus.INTERRUPTED
    finally:
        ctx.close()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the command and exits with its status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        status = run_cli(args)
    except BrokenPipeError:
        # The reader went away (`modelrunner logs | head`). Point stdout at /dev/null so the
        # interpreter's final flush does not complain, and exit as a SIGPIPE'd program would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None
    except Exception as exc:  # a bug in the CLI, not a user error: say so, briefly
        if "--debug" in args:
            raise
        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {exc} (run again with --debug for a traceback)\n"
        )
        raise SystemExit(ExitStatus.ERROR) from None
    raise SystemExit(status)
