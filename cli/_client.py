"""A thin, synchronous HTTP client for the daemon's DMR-compatible API.

httpx does the HTTP; this module only knows how to reach the daemon (TCP or its Unix socket) and
turns every way a request can fail into one ``CLIError`` with a message a user can act on:
connection failures become ``DaemonUnavailable`` with a hint on how to start the daemon, error
statuses become ``DaemonError`` carrying the first line of the daemon's body.
"""

from __future__ import annotations

import contextlib
import errno
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any, Final

import httpx
from modelrunner import __version__
from modelrunner.cli._endpoint import Endpoint
from modelrunner.cli._errors import DaemonError, DaemonUnavailable, UsageError

__all__ = [
    "LONG_TIMEOUT",
    "SHORT_TIMEOUT",
    "DaemonClient",
    "error_message_from_body",
    "model_path",
]

USER_AGENT: Final = f"modelrunner-cli/{__version__}"
# Plain requests: the daemon answers from memory or its store.
SHORT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)
# Pulls, pushes, model loads, chat streams and `logs -f` may legitimately stay silent for long
# stretches (a model loading into memory); the user ends them with Ctrl-C.
LONG_TIMEOUT: Final = httpx.Timeout(None, connect=5.0)

START_HINT: Final = (
    "start it with `modelrunner serve` (or `systemctl start modelrunner`), "
    "or set MODEL_RUNNER_HOST to the address of a running daemon"
)


def model_path(reference: str, *suffix: str) -> str:
    """``/models/<ref>[/<suffix>…]`` with the reference escaped but its ``/`` and ``:`` kept.

    Raises:
        UsageError: the reference is empty or has characters no model reference can contain.
    """
    ref = reference.strip()
    if not ref:
        raise UsageError("a model reference must not be empty")
    if any(ch.isspace() for ch in ref) or any(ch in ref for ch in "?#\\"):
        raise UsageError(f"{reference!r} is not a model reference (it contains whitespace, ?, # or \\)")
    parts = [urllib.parse.quote(ref, safe="/:@"), *suffix]
    return "/models/" + "/".join(parts)


def error_message_from_body(content_type: str, body: bytes) -> tuple[str, str]:
    """The one-line message and full text of a daemon error body.

    DMR answers most errors in plain text, the OpenAI-style routes with
    ``{"error": {"message": …}}``, Ollama-style ones with ``{"error": "…"}``; accept all of them.
    """
    text = body.decode("utf-8", errors="replace").strip()
    if "json" in content_type or text.startswith("{"):
        with contextlib.suppress(ValueError):
            text = _message_from_json(json.loads(text)) or text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else ""), text


def _message_from_json(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    error = value.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str) and error:
        return error
    message = value.get("message")
    return message if isinstance(message, str) else ""


class DaemonClient:
    """HTTP client bound to one daemon endpoint. Use as a context manager, or call ``close``."""

    def __init__(self, endpoint: Endpoint, *, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        if transport is None and endpoint.socket_path is not None:
            transport = httpx.HTTPTransport(uds=endpoint.socket_path)
        self._http = httpx.Client(
            base_url=endpoint.base_url,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            timeout=SHORT_TIMEOUT,
            # The daemon is local or named explicitly; environment proxies must not intercept it.
            trust_env=False,
        )

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = SHORT_TIMEOUT,
    ) -> httpx.Response:
        """Send a request and read the whole response.

        Raises:
            DaemonUnavailable: the daemon cannot be reached.
            DaemonError: it answered with a status of 400 or more, or broke the connection.
        """
        with (
            self.stream(
                method,
                path,
                params=params,
                json_body=json_body,
                content=content,
                headers=headers,
                timeout=timeout,
            ) as response,
            self._mapped_errors(),
        ):
            response.read()
            return response

    def get_json(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        """GET a JSON document.

        Raises:
            DaemonUnavailable, DaemonError: as ``request``; DaemonError also when the body is not JSON.
        """
        response = self.request("GET", path, params=params)
        try:
            return response.json()
        except ValueError as exc:
            raise DaemonError(f"the daemon answered GET {path} with a body that is not JSON") from exc

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = LONG_TIMEOUT,
    ) -> Iterator[httpx.Response]:
        """Send a request and yield the response with its body not yet read.

        The status is checked before yielding, so the caller only sees successful responses;
        reading the body inside the block may still raise ``DaemonError`` (connection broken).

        Raises:
            DaemonUnavailable: the daemon cannot be reached.
            DaemonError: it answered with a status of 400 or more.
        """
        with self._mapped_errors():
            request = self._http.build_request(
                method,
                path,
                params=params,
                json=json_body,
                content=content,
                headers=headers,
                timeout=timeout,
            )
            response = self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                with self._mapped_errors():
                    body = response.read()
                message, full = error_message_from_body(response.headers.get("content-type", ""), body)
                if not message:
                    message = f"the daemon answered {method} {path} with HTTP {response.status_code}"
                raise DaemonError(message, status_code=response.status_code, detail=full)
            with self._mapped_errors():
                yield response
        finally:
            response.close()

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise self._unavailable(exc) from exc
        except httpx.ConnectTimeout as exc:
            raise DaemonUnavailable(
                f"timed out connecting to the daemon at {self.endpoint.display}; is it running? {START_HINT}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise DaemonError(f"the daemon at {self.endpoint.display} did not answer in time") from exc
        except httpx.RemoteProtocolError as exc:
            raise DaemonError(
                f"the daemon at {self.endpoint.display} closed the connection unexpectedly ({exc})"
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise UsageError(f"cannot talk to {self.endpoint.display}: {exc}") from exc
        except httpx.TransportError as exc:
            raise DaemonError(f"connection to the daemon at {self.endpoint.display} failed: {exc}") from exc

    def _unavailable(self, exc: httpx.ConnectError) -> DaemonUnavailable:
        where = self.endpoint.display
        cause = _os_error(exc)
        if cause is not None and cause.errno in (errno.EACCES, errno.EPERM):
            return DaemonUnavailable(
                f"permission denied connecting to the daemon at {where}; run as a user who may use "
                "its socket (root, or the group that owns it)"
            )
        if cause is not None and cause.errno == errno.ENOENT and self.endpoint.socket_path:
            return DaemonUnavailable(
                f"the daemon is not running (no socket at {self.endpoint.socket_path}); {START_HINT}"
            )
        return DaemonUnavailable(f"the daemon is not running at {where} ({_reason(exc)}); {START_HINT}")


def _os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def _reason(exc: httpx.ConnectError) -> str:
    cause = _os_error(exc)
    if cause is not None and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__
