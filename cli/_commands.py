"""The client verbs. Each takes the invocation's ``Context`` and parsed arguments and returns an
``ExitStatus``; failures are raised as ``CLIError`` and reported by ``main``'s single handler."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from modelrunner import __version__
from modelrunner.cli._client import LONG_TIMEOUT, model_path
from modelrunner.cli._context import Context
from modelrunner.cli._errors import CLIError, DaemonError, DaemonUnavailable, ExitStatus, UsageError
from modelrunner.cli._format import (
    MODEL_COLUMNS,
    RUNNER_COLUMNS,
    format_bytes_decimal,
    model_rows,
    parse_go_duration,
    runner_rows,
    short_id,
    split_repo_tag,
)
from modelrunner.cli._progress import render_transfer

__all__ = [
    "cmd_configure",
    "cmd_df",
    "cmd_inspect",
    "cmd_install_engine",
    "cmd_logs",
    "cmd_ls",
    "cmd_ps",
    "cmd_pull",
    "cmd_push",
    "cmd_rm",
    "cmd_status",
    "cmd_tag",
    "cmd_uninstall_engine",
    "cmd_unload",
    "cmd_version",
    "pull_model",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _is_hugging_face(reference: str) -> bool:
    return reference.startswith(("hf.co/", "huggingface.co/"))


# --- pull / push ------------------------------------------------------------------------------


def pull_model(ctx: Context, reference: str) -> None:
    """Pull through the daemon, drawing its progress stream.

    Raises:
        DaemonError, DaemonUnavailable: as the client does; DaemonError for an error in the stream.
    """
    body: dict[str, Any] = {"from": reference}
    token = ctx.environ.get("HF_TOKEN", "").strip()
    if token and _is_hugging_face(reference):
        # Only ever sent for Hugging Face references: a registry must not receive HF credentials.
        body["bearer-token"] = token
    with ctx.client().stream(
        "POST", "/models/create", json_body=body, headers={"Accept": "application/json"}
    ) as response:
        message = render_transfer(
            response.iter_lines(), ctx.out, mode="pull", html_escaped=_is_text_plain(response.headers)
        )
    ctx.print(message)


def _is_text_plain(headers: Any) -> bool:
    # DMR HTML-escapes its progress lines unless it answers application/json.
    return str(headers.get("content-type", "")).startswith("text/")


def cmd_pull(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    pull_model(ctx, args.model)
    return ExitStatus.SUCCESS


def cmd_push(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    push_model(ctx, args.model)
    return ExitStatus.SUCCESS


def push_model(ctx: Context, reference: str) -> None:
    with ctx.client().stream(
        "POST", model_path(reference, "push"), headers={"Accept": "application/json"}
    ) as response:
        message = render_transfer(
            response.iter_lines(), ctx.out, mode="push", html_escaped=_is_text_plain(response.headers)
        )
    ctx.print(message)


# --- ls / inspect / rm / tag ------------------------------------------------------------------


def _json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise DaemonError(f"the daemon's {what} is not a JSON array")
    return value


def cmd_ls(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    client = ctx.client()
    if args.openai:
        listing = client.get_json("/engines/v1/models")
        if args.filter and isinstance(listing, dict) and isinstance(listing.get("data"), list):
            needle = args.filter.lower()
            listing["data"] = [m for m in listing["data"] if needle in str(m.get("id", "")).lower()]
        ctx.print_json(listing)
        return ExitStatus.SUCCESS
    models = _json_list(client.get_json("/models"), "model list")
    if args.filter:
        keep = {id(m) for m in models if model_rows([m], _now(), args.filter)}
        models = [m for m in models if id(m) in keep]
    if args.json:
        ctx.print_json(models)
    elif args.quiet:
        seen: set[str] = set()
        for model in models:
            model_id = short_id(str(model.get("id", ""))) if isinstance(model, dict) else ""
            if model_id and model_id not in seen:
                seen.add(model_id)
                ctx.print(model_id)
    else:
        ctx.print_table(MODEL_COLUMNS, [row.cells() for row in model_rows(models, _now())])
    return ExitStatus.SUCCESS


def cmd_inspect(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    client = ctx.client()
    if args.openai:
        if args.remote:
            raise UsageError("--openai and --remote cannot be combined: the OpenAI view is of local models")
        path = "/engines/v1/models/" + model_path(args.model).removeprefix("/models/")
        ctx.print_json(client.get_json(path))
    else:
        ctx.print_json(
            client.get_json(model_path(args.model), params={"remote": "true"} if args.remote else None)
        )
    return ExitStatus.SUCCESS


def cmd_rm(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    client = ctx.client()
    status = ExitStatus.SUCCESS
    for reference in args.models:
        try:
            response = client.request(
                "DELETE", model_path(reference), params={"force": "true"} if args.force else None
            )
        except DaemonUnavailable:
            raise
        except CLIError as exc:
            # Like `docker rm`: report each failure and carry on with the other models.
            ctx.err.print(f"modelrunner: error: {reference}: {exc.message}", markup=False)
            status = max(status, exc.exit_status)
            continue
        try:
            actions = response.json()
        except ValueError:
            actions = None
        if not isinstance(actions, list) or not actions:
            ctx.print(f"Deleted: {reference}")
            continue
        for action in actions:
            if isinstance(action, dict):
                for key, value in action.items():
                    ctx.print(f"{key}: {value}")
    return status


def cmd_tag(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    try:
        repo, tag = split_repo_tag(args.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    response = ctx.client().request("POST", model_path(args.source, "tag"), params={"repo": repo, "tag": tag})
    message = ""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    ctx.print(message or f'Model "{args.source}" tagged successfully with "{repo}:{tag}"')
    return ExitStatus.SUCCESS


# --- ps / df / unload / logs ------------------------------------------------------------------


def cmd_ps(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    runners = _json_list(ctx.client().get_json("/engines/ps"), "runner list")
    if args.json:
        ctx.print_json(runners)
    else:
        ctx.print_table(RUNNER_COLUMNS, [row.cells() for row in runner_rows(runners, _now())])
    return ExitStatus.SUCCESS


def cmd_df(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    usage = ctx.client().get_json("/engines/df")
    if not isinstance(usage, dict):
        raise DaemonError("the daemon's disk usage answer is not a JSON object")
    if args.json:
        ctx.print_json(usage)
        return ExitStatus.SUCCESS
    rows = [
        ("Models", format_bytes_decimal(_nonneg(usage.get("models_disk_usage")))),
        ("Inference engine", format_bytes_decimal(_nonneg(usage.get("default_backend_disk_usage")))),
    ]
    ctx.print_table(("TYPE", "SIZE"), rows)
    return ExitStatus.SUCCESS


def _nonneg(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def cmd_unload(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    if not args.all and not args.models:
        raise UsageError("name the models to unload, or pass --all")
    if args.all and args.models:
        raise UsageError("--all unloads every model; do not name models with it")
    body: dict[str, Any] = {"all": bool(args.all)}
    if args.backend:
        body["backend"] = args.backend
    if args.models:
        body["models"] = list(args.models)
    result = ctx.client().request("POST", "/engines/unload", json_body=body, timeout=LONG_TIMEOUT)
    count: Any = None
    with contextlib.suppress(ValueError):
        answer = result.json()
        count = answer.get("unloaded_runners") if isinstance(answer, dict) else None
    if isinstance(count, int):
        ctx.print(f"Unloaded {count} model{'' if count == 1 else 's'}.")
    else:
        ctx.print("Unloaded.")
    return ExitStatus.SUCCESS


def cmd_logs(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    params = {
        "follow": "true" if args.follow else "false",
        "no-engines": "true" if args.no_engines else "false",
    }
    with ctx.client().stream("GET", "/logs", params=params) as response:
        for chunk in response.iter_text():
            ctx.stdout.write(chunk)
            ctx.stdout.flush()
    return ExitStatus.SUCCESS


def cmd_requests(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    params = {"model": args.model} if args.model else {}
    if not args.follow:
        if args.include_existing:
            raise UsageError("--include-existing only applies with --follow")
        ctx.print_json(ctx.client().get_json("/engines/requests", params=params))
        return ExitStatus.SUCCESS
    if args.include_existing:
        params["include_existing"] = "true"
    headers = {"Accept": "text/event-stream"}
    with ctx.client().stream("GET", "/engines/requests", params=params, headers=headers) as response:
        # One JSON document per line: each finished request as the daemon announces it.
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:") and event in ("new_request", "existing_request"):
                ctx.stdout.write(line[len("data:") :].strip() + "\n")
                ctx.stdout.flush()
            elif not line:
                event = ""
    return ExitStatus.SUCCESS


# --- status / version -------------------------------------------------------------------------


def _backend_rows(backends: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, value in sorted(backends.items()):
        text = str(value)
        state, _, details = text.partition(": ")
        rows.append((name, state, details))
    return rows


def cmd_status(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    endpoint = ctx.endpoint()
    client = ctx.client()
    try:
        version = client.get_json("/version")
        backends = client.get_json("/engines/status")
    except DaemonUnavailable as exc:
        if args.json:
            ctx.print_json({"running": False, "endpoint": endpoint.display, "error": exc.message})
        else:
            ctx.print(f"modelrunner is not running at {endpoint.display}")
        raise
    if not isinstance(backends, dict):
        raise DaemonError("the daemon's /engines/status answer is not a JSON object")
    info = version if isinstance(version, dict) else {}
    containerd = _containerd_info(info)
    if args.json:
        report: dict[str, Any] = {
            "running": True,
            "endpoint": endpoint.display,
            "openai_base_url": endpoint.openai_base_url,
            "version": info.get("version", ""),
            "backends": backends,
        }
        if containerd:
            report["containerd"] = containerd
        ctx.print_json(report)
        return ExitStatus.SUCCESS
    server_version = info.get("version")
    ctx.print(
        f"modelrunner is running at {endpoint.display}"
        + (f" (version {server_version})" if server_version else "")
    )
    ctx.print(f"OpenAI-compatible API: {endpoint.openai_base_url}")
    if containerd:
        mode = " (embedded)" if containerd.get("embedded") else ""
        address = containerd.get("address") or "unknown address"
        namespace = containerd.get("namespace")
        ctx.print(f"containerd: {address}{mode}" + (f", namespace {namespace}" if namespace else ""))
    ctx.print()
    ctx.print_table(("BACKEND", "STATUS", "DETAILS"), _backend_rows(backends))
    return ExitStatus.SUCCESS


def _containerd_info(version: dict[str, Any]) -> dict[str, Any]:
    """The daemon's containerd details from ``/version``, if it reports them.

    Accepts ``{"containerd": {"address", "namespace", "embedded"}}``, ``{"containerd": "<address>"}``
    or a flat ``containerd_address`` key.
    """
    value = version.get("containerd")
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v not in (None, "")}
    if isinstance(value, str) and value:
        return {"address": value}
    address = version.get("containerd_address")
    if isinstance(address, str) and address:
        info: dict[str, Any] = {"address": address}
        if version.get("containerd_namespace"):
            info["namespace"] = version["containerd_namespace"]
        return info
    return {}


def cmd_version(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    ctx.print(f"Client: modelrunner {__version__}")
    version = ctx.client().get_json("/version")
    server = version.get("version") if isinstance(version, dict) else None
    ctx.print(f"Server: modelrunner {server or 'unknown'}")
    return ExitStatus.SUCCESS


# --- configure --------------------------------------------------------------------------------


def cmd_configure(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    client = ctx.client()
    if args.model == "show":
        # `configure show [MODEL]`, as DMR spells it.
        target = args.runtime_flags[0] if args.runtime_flags else ""
        if len(args.runtime_flags) > 1:
            raise UsageError("configure show takes at most one model")
        ctx.print_json(client.get_json("/engines/_configure", params={"model": target} if target else None))
        return ExitStatus.SUCCESS
    body = configure_body(args)
    if len(body) == 1:
        raise UsageError(
            "nothing to configure: pass --context-size, --keep-alive, --mode, --think/--no-think, "
            "--reasoning-budget or runtime flags after --"
        )
    path = f"/engines/{args.backend}/_configure" if args.backend else "/engines/_configure"
    client.request("POST", path, json_body=body)
    ctx.print(f"Configured {args.model}.")
    return ExitStatus.SUCCESS


def configure_body(args: argparse.Namespace) -> dict[str, Any]:
    """DMR's ConfigureRequest, with its mixed key styles, from ``configure``'s flags."""
    body: dict[str, Any] = {"model": args.model}
    if args.context_size is not None:
        body["context-size"] = args.context_size
    if args.keep_alive is not None:
        try:
            parse_go_duration(args.keep_alive)
        except ValueError as exc:
            raise UsageError(f"--keep-alive: {exc}, or 0 (unload when idle) or -1 (never)") from None
        body["keep_alive"] = args.keep_alive.strip()
    if args.mode is not None:
        body["mode"] = args.mode
    budget = args.reasoning_budget
    if args.think is not None:
        if budget is not None:
            raise UsageError("--think/--no-think and --reasoning-budget set the same thing; pass one")
        budget = -1 if args.think else 0
    if budget is not None:
        body["llamacpp"] = {"reasoning-budget": budget}
    flags = list(args.runtime_flags)
    if flags and flags[0] == "--":
        flags = flags[1:]
    if flags:
        body["runtime-flags"] = flags
    return body


# --- engines ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _spinner(ctx: Context, text: str) -> Iterator[None]:
    if ctx.out.is_terminal:
        with ctx.out.status(text):
            yield
    else:
        yield


def cmd_install_engine(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    body: dict[str, Any] = {"backend": args.backend}
    if args.engine_version:
        body["version"] = args.engine_version
    with _spinner(ctx, f"Installing {args.backend}..."):
        ctx.client().request("POST", "/engines/install-backend", json_body=body, timeout=LONG_TIMEOUT)
    ctx.print(f"{args.backend} is installed.")
    return ExitStatus.SUCCESS


def cmd_uninstall_engine(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    with _spinner(ctx, f"Uninstalling {args.backend}..."):
        ctx.client().request(
            "POST", "/engines/uninstall-backend", json_body={"backend": args.backend}, timeout=LONG_TIMEOUT
        )
    ctx.print(f"{args.backend} is uninstalled.")
    return ExitStatus.SUCCESS


def require_model_exists_or_pull(ctx: Context, reference: str) -> None:
    """Pull ``reference`` first when the daemon does not have it (as ``docker model run`` does)."""
    try:
        ctx.client().get_json(model_path(reference))
    except DaemonError as exc:
        if exc.status_code != 404:
            raise
        ctx.err.print(f"Unable to find model '{reference}' locally. Pulling it.", markup=False)
        pull_model(ctx, reference)
