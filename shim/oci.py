"""OCI image documents: descriptors, index, manifest and config, and layer chain IDs (pure).

Values in, values out: everything here takes bytes or dicts and returns frozen dataclasses, and
raises :class:`~modelrunner.shim.errors.InvalidArgument` naming the rule a document breaks. Docker's
schema 2 media types are accepted next to OCI's, since registries still serve them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelrunner.shim.errors import InvalidArgument

__all__ = [
    "INDEX_MEDIA_TYPES",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "Descriptor",
    "ImageConfig",
    "Manifest",
    "Platform",
    "chain_ids",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "select_manifest",
    "validate_digest",
]

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_MEDIA_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG})
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)

# Manifests, indexes and configs are read into memory; anything larger is not an engine image.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 hex>`` or ``sha512:<128 hex>``; raise InvalidArgument."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidArgument("reading an image", f"{digest!r} is not a sha256 or sha512 digest")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def matches(self, other: Platform) -> bool:
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not self.variant or not other.variant or self.variant == other.variant


HOST_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        if not isinstance(data, dict):
            raise InvalidArgument("reading an image", f"{where} is not a descriptor object")
        media_type = data.get("mediaType", "")
        size = data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidArgument("reading an image", f"{where} has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument("reading an image", f"{where} has no valid size")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidArgument("reading an image", f"{where} has malformed annotations")
        platform = None
        raw_platform = data.get("platform")
        if isinstance(raw_platform, dict):
            platform = Platform(
                str(raw_platform.get("os", "")),
                str(raw_platform.get("architecture", "")),
                str(raw_platform.get("variant", "")),
            )
        digest = validate_digest(data.get("digest", ""))
        return cls(media_type, digest, size, dict(annotations), platform)


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config a runner needs (OCI image spec ``config`` object)."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""


def _load(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidArgument("reading an image", f"{what} is {len(data)} bytes, over {MAX_DOCUMENT_BYTES}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument("reading an image", f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("reading an image", f"{what} is not a JSON object")
    return doc


def parse_index(data: bytes) -> tuple[Descriptor, ...]:
    """The manifests an image index (or Docker manifest list, or OCI layout index.json) lists."""
    doc = _load(data, "image index")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument("reading an image", "image index schemaVersion is not 2")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument("reading an image", "image index has no manifests list")
    return tuple(Descriptor.from_json(m, f"index entry {i}") for i, m in enumerate(manifests))


def parse_manifest(data: bytes) -> Manifest:
    doc = _load(data, "image manifest")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument("reading an image", "image manifest schemaVersion is not 2")
    config = Descriptor.from_json(doc.get("config"), "manifest config")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise InvalidArgument("reading an image", "image manifest has no layers list")
    layers = tuple(Descriptor.from_json(d, f"layer {i}") for i, d in enumerate(layers_raw))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise InvalidArgument(
                "reading an image",
                f"layer {i} has media type {layer.media_type!r}, which containerd cannot unpack",
            )
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise InvalidArgument(
            "reading an image", f"config media type {config.media_type!r} is not an image config"
        )
    return Manifest(config, layers)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("reading an image", f"image config {what} is not a list of strings")
    return tuple(value)


def parse_config(data: bytes) -> ImageConfig:
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidArgument("reading an image", "image config has no rootfs of type 'layers'")
    diff_ids = _strings(rootfs.get("diff_ids"), "rootfs.diff_ids")
    for diff_id in diff_ids:
        validate_digest(diff_id)
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise InvalidArgument("reading an image", "image config 'config' is not an object")
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("reading an image", "image config Labels is not a string map")
    return ImageConfig(
        architecture=str(doc.get("architecture", "")),
        os=str(doc.get("os", "")),
        diff_ids=diff_ids,
        user=str(config.get("User") or ""),
        entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(config.get("Cmd"), "Cmd"),
        env=_strings(config.get("Env"), "Env"),
        working_dir=str(config.get("WorkingDir") or ""),
        labels=dict(labels),
        stop_signal=str(config.get("StopSignal") or ""),
    )


def select_manifest(entries: Sequence[Descriptor], platform: Platform = HOST_PLATFORM) -> Descriptor:
    """The entry of an index for ``platform`` (entries without a platform match any).

    Raises:
        InvalidArgument: no entry is for this platform.
    """
    candidates = [e for e in entries if e.media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES]
    for entry in candidates:
        if entry.platform is not None and entry.platform.matches(platform):
            return entry
    for entry in candidates:
        if entry.platform is None:
            return entry
    offered = sorted({f"{e.platform.os}/{e.platform.architecture}" for e in candidates if e.platform})
    wanted = f"{platform.os}/{platform.architecture}"
    raise InvalidArgument(
        "reading an image", f"the image has no manifest for {wanted} (it has: {', '.join(offered) or 'none'})"
    )


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """The chain ID of each layer prefix: snapshots of unpacked layers are named by these.

    ``chain[0] = diff[0]``; ``chain[n] = sha256(chain[n-1] + " " + diff[n])`` (OCI image spec).
    """
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append(sha256_digest(f"{chains[-1]} {diff_id}".encode()))
    return tuple(chains)
