"""Registry authentication: challenge parsing and credentials, without network I/O.

A registry answers an unauthenticated request with ``401`` and a ``WWW-Authenticate`` header:
``Basic realm="…"`` (send the user's credentials) or ``Bearer realm="…",service="…",scope="…"``
(ask the token server at ``realm`` for a token, with the credentials if there are any, and send
that). Credentials come from ``~/.docker/config.json``: ``auths.<registry>.auth`` (base64
``user:password``), ``username``/``password``, ``identitytoken`` (an OAuth2 refresh token) or
``registrytoken`` (a bearer token used as is), or from a credential helper named by
``credHelpers``/``credsStore``. Running a helper is the only I/O and lives in registry.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "Challenge",
    "Credentials",
    "DockerConfig",
    "basic_authorization",
    "parse_token_response",
    "parse_www_authenticate",
    "repository_scope",
]

# Docker Hub's credentials live under its v1 index URL in config.json.
DOCKER_HUB_AUTH_KEY: Final = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES: Final = ("docker.io", "index.docker.io", "registry-1.docker.io")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235 syntax).

    Quoted values may hold commas and backslash escapes; unknown schemes are returned too.
    Malformed trailing input ends parsing; what was parsed so far is returned.
    """
    challenges: list[Challenge] = []
    pos = 0
    length = len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < length and header[pos] in chars:
            pos += 1

    while pos < length:
        skip(" \t,")
        match = _TOKEN_RE.match(header, pos)
        if match is None:
            break
        scheme = match.group().lower()
        pos = match.end()
        params: dict[str, str] = {}
        while True:
            save = pos
            skip(" \t,")
            key_match = _TOKEN_RE.match(header, pos)
            if key_match is None:
                break
            after = key_match.end()
            while after < length and header[after] in " \t":
                after += 1
            if after >= length or header[after] != "=":
                pos = save  # the token starts the next challenge
                break
            pos = after + 1
            while pos < length and header[pos] in " \t":
                pos += 1
            if pos < length and header[pos] == '"':
                pos += 1
                value_chars: list[str] = []
                while pos < length and header[pos] != '"':
                    if header[pos] == "\\" and pos + 1 < length:
                        pos += 1
                    value_chars.append(header[pos])
                    pos += 1
                pos += 1  # closing quote (or end of input)
                value = "".join(value_chars)
            else:
                value_match = _TOKEN_RE.match(header, pos)
                value = value_match.group() if value_match else ""
                pos = value_match.end() if value_match else pos
            params[key_match.group().lower()] = value
        challenges.append(Challenge(scheme, params))
    return challenges


def repository_scope(repository: str, actions: tuple[str, ...]) -> str:
    """``repository:<name>:<actions>`` as the token server expects it."""
    return f"repository:{repository}:{','.join(actions)}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What we can prove to a registry or its token server."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    """An OAuth2 refresh token (``identitytoken`` in config.json)."""
    registry_token: str = field(default="", repr=False)
    """A bearer token sent as is (``registrytoken``, or DMR's per-request ``bearer-token``)."""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)


def basic_authorization(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


def _auth_keys(registry: str) -> list[str]:
    """Keys config.json may use for ``registry``, most specific first."""
    if registry in _DOCKER_HUB_ALIASES:
        return [DOCKER_HUB_AUTH_KEY, *_DOCKER_HUB_ALIASES, "https://index.docker.io/v1"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"http://{registry}/v1/"]


def _host_key(key: str) -> str:
    """Normalize a config.json key (which may be a URL) to ``host[:port]``."""
    if "://" in key:
        return urlsplit(key).netloc
    return key.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """The parts of ``~/.docker/config.json`` that concern registries."""

    auths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str = ""

    @classmethod
    def parse(cls, data: bytes) -> DockerConfig:
        """Parse config.json; a malformed file reads as empty (Docker's CLI warns and goes on)."""
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return cls()
        if not isinstance(value, dict):
            return cls()
        auths = value.get("auths") or {}
        helpers = value.get("credHelpers") or {}
        store = value.get("credsStore") or ""
        return cls(
            {k: v for k, v in auths.items() if isinstance(k, str) and isinstance(v, dict)}
            if isinstance(auths, dict) else {},
            {k: v for k, v in helpers.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(helpers, dict) else {},
            store if isinstance(store, str) else "",
        )

    def helper_for(self, registry: str) -> str:
        """The credential helper to ask for ``registry`` ("" when none)."""
        for key in _auth_keys(registry):
            for helper_key, helper in self.cred_helpers.items():
                if helper_key == key or _host_key(helper_key) == _host_key(key):
                    return helper
        return self.creds_store

    def helper_server_url(self, registry: str) -> str:
        """What to write to the helper's stdin for ``registry``."""
        return DOCKER_HUB_AUTH_KEY if registry in _DOCKER_HUB_ALIASES else registry

    def inline_credentials(self, registry: str) -> Credentials | None:
        """Credentials stored in ``auths`` for ``registry``, if any."""
        wanted = [_host_key(k) for k in _auth_keys(registry)]
        for key in _auth_keys(registry):
            entry = self.auths.get(key)
            if entry is not None:
                break
        else:
            entry = next((v for k, v in self.auths.items() if _host_key(k) in wanted), None)
        if entry is None:
            return None
        username = str(entry.get("username") or "")
        password = str(entry.get("password") or "")
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=False).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if ":" in decoded:
                username, password = decoded.split(":", 1)
        creds = Credentials(
            username,
            password,
            str(entry.get("identitytoken") or ""),
            str(entry.get("registrytoken") or ""),
        )
        return None if creds.empty else creds


def parse_helper_output(data: bytes) -> Credentials | None:
    """A credential helper's ``get`` answer: ``{"Username", "Secret"}``; a username of
    ``<token>`` means the secret is an identity token."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    username = str(value.get("Username") or "")
    secret = str(value.get("Secret") or "")
    if username == "<token>":
        return Credentials(identity_token=secret)
    creds = Credentials(username, secret)
    return None if creds.empty else creds


def parse_token_response(data: bytes) -> tuple[str, int]:
    """``(token, lifetime seconds)`` from a token server's JSON answer.

    Docker's token spec uses ``token``; OAuth2 servers ``access_token``; ``expires_in`` defaults to
    60 seconds.

    Raises:
        ValueError: no token in the answer.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"token server answer is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("token server answer is not a JSON object")
    token = value.get("token") or value.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token server answer has no token")
    expires = value.get("expires_in")
    lifetime = expires if isinstance(expires, int) and not isinstance(expires, bool) and expires > 0 else 60
    return token, lifetime
