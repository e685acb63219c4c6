"""CORS as Docker Model Runner applies it to `/models*`, `/engines*` and their aliases. Pure.

DMR's rules: the allowed origins are `DMR_ORIGINS` (a comma list) plus, always, `http(s)://localhost`,
`http(s)://127.0.0.1` and `http(s)://0.0.0.0`, each also with `:*`. A request whose `Origin` is not
allowed gets 403 `Origin not allowed`; one without `Origin` passes untouched. An allowed origin is
echoed in `Access-Control-Allow-Origin`; a preflight (`OPTIONS` with an allowed origin) answers 204
with credentials, methods `GET, POST, DELETE` and headers `*`. A preflight without an origin goes to
the router (and gets its 404).

One deliberate difference: DMR compares origins by exact string, so its `http://localhost:*`
entries only match that literal text and a page served from `http://localhost:3000` is refused.
Here an entry ending in `:*` matches that scheme and host with any numeric port, which is what the
defaults are evidently for. `*` alone in the list allows every origin.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_ORIGINS", "CorsDecision", "CorsPolicy", "parse_origins"]

DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
)

PREFLIGHT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"access-control-allow-credentials", b"true"),
    (b"access-control-allow-methods", b"GET, POST, DELETE"),
    (b"access-control-allow-headers", b"*"),
)


def parse_origins(value: str | None) -> tuple[str, ...]:
    """Parse a `DMR_ORIGINS`-style comma list (spaces and surrounding quotes trimmed)."""
    if not value:
        return ()
    value = value.strip().strip("\"'")
    return tuple(item.strip() for item in value.split(",") if item.strip())


class CorsDecision(enum.Enum):
    NO_ORIGIN = "no_origin"  # not a CORS request: pass through, add nothing
    ALLOWED = "allowed"  # pass through, echo the origin
    PREFLIGHT = "preflight"  # answer 204 with PREFLIGHT_HEADERS and the origin
    FORBIDDEN = "forbidden"  # answer 403 "Origin not allowed"


@dataclass(frozen=True)
class CorsPolicy:
    exact: frozenset[str]
    any_port: frozenset[str]
    """`scheme://host` prefixes whose `:*` entry allows any numeric port."""
    allow_all: bool = False

    @classmethod
    def from_origins(cls, extra: Iterable[str] = ()) -> CorsPolicy:
        """The policy for `DMR_ORIGINS` entries `extra` plus DMR's always-allowed local origins."""
        extra = tuple(extra)
        origins = (*extra, *DEFAULT_ORIGINS)
        exact = frozenset(origins)  # DMR's literal match, `:*` entries included
        any_port = frozenset(o[:-2] for o in origins if o.endswith(":*"))
        return cls(exact=exact, any_port=any_port, allow_all="*" in extra)

    def is_allowed(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        base, sep, port = origin.rpartition(":")
        return bool(sep) and port.isdigit() and base in self.any_port

    def decide(self, method: str, origin: str | None) -> CorsDecision:
        if not origin:
            return CorsDecision.NO_ORIGIN
        if not self.is_allowed(origin):
            return CorsDecision.FORBIDDEN
        if method == "OPTIONS":
            return CorsDecision.PREFLIGHT
        return CorsDecision.ALLOWED
