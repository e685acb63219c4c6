"""Model references: DMR's normalization and the OCI reference grammar, without I/O.

DMR normalizes every reference before using it (dmr.md 1.8): trim spaces, ``hf.co/`` becomes
``huggingface.co/``, a missing or empty tag becomes ``latest``, a name without any ``/`` gets the
default org ``ai/``, and the name (not the tag) is lowercased. The result is then read with the
Docker reference grammar: a first component with a ``.`` or ``:`` (or ``localhost``) is a registry,
the default registry is Docker Hub (``docker.io``), and the canonical form that the store keeps and
compares is ``<registry>/<repository>:<tag>``, e.g. ``docker.io/ai/smollm2:latest``.

IDs (``sha256:<64 hex>``, 64 hex or a 12-hex short ID) are not references; the store resolves them
(see :meth:`ModelStore.resolve`). :func:`looks_like_id` and :func:`looks_like_digest` tell them apart
exactly as DMR does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from modelrunner.distribution.errors import InvalidReference

__all__ = [
    "DEFAULT_ORG",
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "Reference",
    "display_name",
    "looks_like_digest",
    "looks_like_id",
    "normalize_model_name",
    "parse_reference",
]

DEFAULT_REGISTRY: Final = "docker.io"
DEFAULT_ORG: Final = "ai"
DEFAULT_TAG: Final = "latest"
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
HUGGINGFACE_REGISTRY: Final = "huggingface.co"

# The Docker/OCI distribution reference grammar (distribution/reference's regexp.go, restated).
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN: Final = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_RE: Final = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_RE: Final = re.compile(rf"^{_DOMAIN}$")
_TAG_RE: Final = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_DIGEST_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_TOTAL_LENGTH_MAX: Final = 255
_HEX: Final = frozenset("0123456789abcdef")


def looks_like_id(value: str) -> bool:
    """True for a 12- or 64-character lowercase hex string (a short or full model ID)."""
    return len(value) in (12, 64) and all(ch in _HEX for ch in value)


def looks_like_digest(value: str) -> bool:
    """True for ``sha256:`` followed by exactly 64 lowercase hex digits."""
    return _DIGEST_RE.match(value) is not None


def normalize_model_name(value: str) -> str:
    """DMR's ``normalizeModelName`` without the store lookup of IDs.

    ``"gemma3"`` → ``"ai/gemma3:latest"``; ``"MyModel"`` → ``"ai/mymodel:latest"``;
    ``"hf.co/org/M:Q4_K_M"`` → ``"huggingface.co/org/m:Q4_K_M"``; IDs and digests are returned
    unchanged; blank input gives ``""``. A ``@digest`` suffix is kept and no tag is added to it.
    """
    model = value.strip()
    if not model:
        return ""
    if model.startswith("hf.co/"):
        model = "huggingface.co/" + model[len("hf.co/"):]
    if looks_like_id(model) or looks_like_digest(model):
        return model
    name, at, digest = model.partition("@")
    last_slash = name.rfind("/")
    last_colon = name.rfind(":")
    tag = ""
    if last_colon > last_slash:
        name, tag = name[:last_colon], name[last_colon + 1:]
    if not tag and not at:
        tag = DEFAULT_TAG
    first_slash = name.find("/")
    has_registry = first_slash > 0 and "." in name[:first_slash]
    if not has_registry and "/" not in name:
        name = f"{DEFAULT_ORG}/{name}"
    name = name.lower()
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if at else "")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, canonical model reference.

    ``str(ref)`` is the canonical form kept in the store: ``docker.io/ai/smollm2:latest``, or
    ``<registry>/<repository>@sha256:…`` for a digest reference.
    """

    registry: str
    repository: str
    tag: str = DEFAULT_TAG
    digest: str = ""

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def name(self) -> str:
        """``<registry>/<repository>``, the reference without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/`` in a registry URL: the digest if any, else the tag."""
        return self.digest or self.tag

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub answers on ``registry-1.docker.io``)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def is_docker_hub(self) -> bool:
        return self.registry == DEFAULT_REGISTRY

    @property
    def is_huggingface(self) -> bool:
        return self.registry == HUGGINGFACE_REGISTRY

    @property
    def is_local(self) -> bool:
        """Registries DMR talks to over plain HTTP: localhost, loopback addresses, ``*.local``."""
        host = _host_of(self.registry)
        return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".local")

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, "")

    def familiar(self) -> str:
        """The short form the CLI displays (see :func:`display_name`)."""
        return display_name(str(self))


def _host_of(registry: str) -> str:
    if registry.startswith("["):
        return registry[1:registry.find("]")]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def parse_reference(value: str, *, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Normalize ``value`` as DMR does and parse it into its canonical :class:`Reference`.

    ``default_registry`` is DMR's ``DEFAULT_REGISTRY``: the registry of names that carry none.

    Raises:
        InvalidReference: empty, an ID (IDs are resolved by the store, not parsed), or not valid
            under the OCI reference grammar. The message says which part is wrong.
    """
    normalized = normalize_model_name(value)
    if not normalized:
        raise InvalidReference(value, "the reference is empty")
    if looks_like_id(normalized) or looks_like_digest(normalized):
        raise InvalidReference(value, "this is a model ID, not a name; look it up in the store instead")
    name, at, digest = normalized.partition("@")
    tag = ""
    last_slash = name.rfind("/")
    last_colon = name.rfind(":")
    if last_colon > last_slash:
        name, tag = name[:last_colon], name[last_colon + 1:]
    if at and not _DIGEST_RE.match(digest):
        raise InvalidReference(value, "the digest must be 'sha256:' followed by 64 lowercase hex digits")
    if tag and not _TAG_RE.match(tag):
        raise InvalidReference(
            value, "a tag is up to 128 letters, digits, '_', '.' or '-' and cannot start with '.' or '-'"
        )
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = default_registry, name
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        # DMR's default org replaces Docker's implicit "library/".
        repository = f"{DEFAULT_ORG}/{repository}"
    if not _DOMAIN_RE.match(registry):
        raise InvalidReference(value, f"{registry!r} is not a valid registry host[:port]")
    if not repository or not _PATH_RE.match(repository):
        raise InvalidReference(
            value,
            "a repository is lowercase letters and digits separated by '/', '.', '_', '__' or '-'",
        )
    if len(registry) + 1 + len(repository) > _NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(value, f"the name is longer than {_NAME_TOTAL_LENGTH_MAX} characters")
    return Reference(registry, repository, tag, digest)


def display_name(tag: str) -> str:
    """The CLI's display form of a stored tag: without ``docker.io/``, ``index.docker.io/``,
    ``ai/`` and ``:latest`` (``docker.io/ai/smollm2:latest`` → ``smollm2``)."""
    out = tag
    for prefix in ("docker.io/", "index.docker.io/"):
        if out.startswith(prefix):
            out = out[len(prefix):]
            break
    if out.startswith(f"{DEFAULT_ORG}/"):
        out = out[len(DEFAULT_ORG) + 1:]
    if out.endswith(f":{DEFAULT_TAG}"):
        out = out[: -len(DEFAULT_TAG) - 1]
    return out
