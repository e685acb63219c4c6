"""OCI values without I/O: digests, media types, descriptors, manifests, indexes, model configs.

Every function here takes bytes or JSON values and returns values; nothing touches the network or
the disk, so the rules are tested bytes-in, values-out. Parsing is strict where a wrong value would
later become a path or a trusted size (digests, sizes), and lenient where registries differ in
harmless ways (unknown fields are kept and ignored).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from modelrunner.distribution.errors import InvalidDigest, InvalidManifest, UnsupportedMediaType

__all__ = [
    "ANNOTATION_FILEPATH",
    "ANNOTATION_REF_NAME",
    "MAX_MANIFEST_BYTES",
    "MEDIA_TYPE_CHAT_TEMPLATE",
    "MEDIA_TYPE_CONFIG_CNCF",
    "MEDIA_TYPE_CONFIG_V01",
    "MEDIA_TYPE_CONFIG_V02",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_GGUF",
    "MEDIA_TYPE_LICENSE",
    "MEDIA_TYPE_MMPROJ",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "MODEL_CONFIG_MEDIA_TYPES",
    "Descriptor",
    "Index",
    "Manifest",
    "ModelConfig",
    "check_model_config_media_type",
    "created_unix",
    "digest_hex",
    "dump_json",
    "parse_digest",
    "parse_index",
    "parse_manifest",
    "parse_model_config",
    "sha256_digest",
]

# Manifests and indexes.
MEDIA_TYPE_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"

# Model configs accepted on pull (dmr.md 2.1); anything else is refused with a 422.
MEDIA_TYPE_CONFIG_V01: Final = "application/vnd.docker.ai.model.config.v0.1+json"
MEDIA_TYPE_CONFIG_V02: Final = "application/vnd.docker.ai.model.config.v0.2+json"
MEDIA_TYPE_CONFIG_CNCF: Final = "application/vnd.cncf.model.config.v1+json"
MODEL_CONFIG_MEDIA_TYPES: Final = (MEDIA_TYPE_CONFIG_V01, MEDIA_TYPE_CONFIG_V02, MEDIA_TYPE_CONFIG_CNCF)

# Layers (Docker model format: each layer is one uncompressed file, so digest == diffID).
MEDIA_TYPE_GGUF: Final = "application/vnd.docker.ai.gguf.v3"
MEDIA_TYPE_LICENSE: Final = "application/vnd.docker.ai.license"
MEDIA_TYPE_CHAT_TEMPLATE: Final = "application/vnd.docker.ai.chat.template.jinja"
MEDIA_TYPE_MMPROJ: Final = "application/vnd.docker.ai.mmproj"
# The model-spec text names the mmproj type differently from DMR's code; both are read.
MEDIA_TYPE_MMPROJ_SPEC: Final = "application/vnd.docker.ai.gguf.v3.mmproj"
MEDIA_TYPE_SAFETENSORS: Final = "application/vnd.docker.ai.safetensors"
MEDIA_TYPE_CNCF_WEIGHT_GGUF: Final = "application/vnd.cncf.model.weight.v1.gguf"
MEDIA_TYPE_CNCF_WEIGHT_RAW: Final = "application/vnd.cncf.model.weight.v1.raw"

ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_FILEPATH: Final = "org.cncf.model.filepath"

# A model manifest is a few hundred bytes; a cap keeps a hostile registry or archive from making
# us buffer gigabytes as "JSON".
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024

_HEX_LENGTHS: Final = {"sha256": 64, "sha512": 128}
_DIGEST_RE: Final = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


def parse_digest(value: object) -> str:
    """Return ``value`` if it is a digest this store accepts, else raise :class:`InvalidDigest`.

    Only ``sha256``/``sha512`` with the exact number of lowercase hex digits pass: the hex part
    becomes a file name under ``blobs/``, so anything looser could escape the store.
    """
    if not isinstance(value, str):
        raise InvalidDigest(repr(value), "not a string")
    match = _DIGEST_RE.match(value)
    if match is None:
        raise InvalidDigest(value)
    algorithm, hex_part = match.groups()
    if len(hex_part) != _HEX_LENGTHS[algorithm]:
        raise InvalidDigest(value, f"{algorithm} needs {_HEX_LENGTHS[algorithm]} hex digits")
    return value


def digest_hex(digest: str) -> tuple[str, str]:
    """Split a validated digest into ``(algorithm, hex)``."""
    algorithm, _, hex_part = parse_digest(digest).partition(":")
    return algorithm, hex_part


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_FRACTION_RE: Final = re.compile(r"\.(\d{6})\d+")


def created_unix(text: str) -> int:
    """An RFC 3339 ``created`` time as Unix seconds; 0 when absent or unreadable (as DMR)."""
    if not text:
        return 0
    try:
        # Go writes up to nine fractional digits; datetime takes six.
        moment = datetime.fromisoformat(_FRACTION_RE.sub(r".\1", text).replace("Z", "+00:00"))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def dump_json(value: object) -> bytes:
    """Compact JSON as Go's encoder writes it (no spaces; key order as given; UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str = ""

    def __post_init__(self) -> None:
        parse_digest(self.digest)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidManifest(f"descriptor {self.digest}: size must be a non-negative integer")

    def to_json(self) -> dict[str, Any]:
        # Field order of the OCI spec and go-containerregistry: mediaType, size, digest, annotations.
        out: dict[str, Any] = {"mediaType": self.media_type, "size": self.size, "digest": self.digest}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, value: object, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise InvalidManifest(f"{where}: descriptor must be an object")
        media_type = value.get("mediaType", "")
        if not isinstance(media_type, str):
            raise InvalidManifest(f"{where}: mediaType must be a string")
        try:
            digest = parse_digest(value.get("digest"))
        except InvalidDigest as exc:
            raise InvalidManifest(f"{where}: {exc}") from exc
        size = value.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidManifest(f"{where}: size must be a non-negative integer")
        annotations = value.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidManifest(f"{where}: annotations must map strings to strings")
        artifact_type = value.get("artifactType", "")
        if not isinstance(artifact_type, str):
            raise InvalidManifest(f"{where}: artifactType must be a string")
        return cls(media_type, digest, size, annotations, artifact_type)


def _load_json_object(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise InvalidManifest(f"{what} is {len(data)} bytes, more than the {limit} allowed")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidManifest(f"{what} must be a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Manifest:
    """An OCI image manifest (also read from Docker schema 2 manifests, which share the shape)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_OCI_MANIFEST
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return dump_json(out)

    def blobs(self) -> tuple[Descriptor, ...]:
        """Config first, then layers (the order a pull fetches them)."""
        return (self.config, *self.layers)


def parse_manifest(data: bytes, media_type: str = "") -> Manifest:
    """Parse an image manifest; ``media_type`` is the Content-Type it came with, if any.

    Raises:
        InvalidManifest: not JSON, wrong schema version, or a malformed descriptor.
        UnsupportedMediaType: the document is an index or some other kind of manifest.
    """
    value = _load_json_object(data, "manifest", MAX_MANIFEST_BYTES)
    declared = value.get("mediaType") or media_type or MEDIA_TYPE_OCI_MANIFEST
    if not isinstance(declared, str):
        raise InvalidManifest("manifest mediaType must be a string")
    if declared not in (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST):
        raise UnsupportedMediaType(
            declared, (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST), what="manifest"
        )
    if value.get("schemaVersion") != 2:
        raise InvalidManifest("manifest schemaVersion must be 2")
    layers_value = value.get("layers")
    if not isinstance(layers_value, list):
        raise InvalidManifest("manifest layers must be a list")
    config = Descriptor.from_json(value.get("config"), "manifest config")
    layers = tuple(Descriptor.from_json(item, f"manifest layer {i}") for i, item in enumerate(layers_value))
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidManifest("manifest annotations must be an object")
    artifact_type = value.get("artifactType", "")
    if not isinstance(artifact_type, str):
        raise InvalidManifest("manifest artifactType must be a string")
    return Manifest(config, layers, declared, artifact_type, annotations)


@dataclass(frozen=True, slots=True)
class Index:
    """An OCI image index (also read from Docker manifest lists)."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_OCI_INDEX

    def to_bytes(self) -> bytes:
        return dump_json(
            {
                "schemaVersion": 2,
                "mediaType": self.media_type,
                "manifests": [m.to_json() for m in self.manifests],
            }
        )


def parse_index(data: bytes, media_type: str = "") -> Index:
    """Parse an image index or Docker manifest list.

    Raises:
        InvalidManifest: not JSON or a malformed descriptor.
    """
    value = _load_json_object(data, "index", MAX_MANIFEST_BYTES)
    declared = value.get("mediaType") or media_type or MEDIA_TYPE_OCI_INDEX
    if declared not in (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST):
        raise InvalidManifest(f"expected an image index, got media type {declared!r}")
    if value.get("schemaVersion") != 2:
        raise InvalidManifest("index schemaVersion must be 2")
    items = value.get("manifests")
    if not isinstance(items, list):
        raise InvalidManifest("index manifests must be a list")
    return Index(tuple(Descriptor.from_json(item, f"index entry {i}") for i, item in enumerate(items)),
                 str(declared))


def check_model_config_media_type(media_type: str) -> None:
    """Raise :class:`UnsupportedMediaType` (422) unless ``media_type`` is a model config type."""
    if media_type not in MODEL_CONFIG_MEDIA_TYPES:
        raise UnsupportedMediaType(media_type, MODEL_CONFIG_MEDIA_TYPES)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The model config blob, in DMR's Docker format (CNCF ModelPack configs are converted).

    ``config`` is the ``config`` object DMR's API returns (``format``, ``quantization``,
    ``parameters``, ``architecture``, ``size``, ``gguf``, ``context_size``...); ``created`` is
    ``descriptor.created`` as an RFC 3339 string ("" when absent).
    """

    config: Mapping[str, Any]
    created: str = ""
    diff_ids: tuple[str, ...] = ()

    @property
    def format(self) -> str:
        value = self.config.get("format", "")
        return value if isinstance(value, str) else ""

    @property
    def context_size(self) -> int | None:
        value = self.config.get("context_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def size(self) -> str:
        value = self.config.get("size", "")
        return value if isinstance(value, str) else ""

    @property
    def gguf(self) -> Mapping[str, str]:
        value = self.config.get("gguf")
        return value if isinstance(value, dict) else {}


def parse_model_config(data: bytes, media_type: str) -> ModelConfig:
    """Read a model config blob of any supported media type into DMR's Docker shape.

    Raises:
        UnsupportedMediaType: ``media_type`` is not a model config type.
        InvalidManifest: the blob is not a JSON object of the expected shape.
    """
    check_model_config_media_type(media_type)
    value = _load_json_object(data, "model config", MAX_CONFIG_BYTES)
    descriptor = value.get("descriptor") or {}
    if not isinstance(descriptor, dict):
        raise InvalidManifest("model config descriptor must be an object")
    cncf = media_type == MEDIA_TYPE_CONFIG_CNCF or "modelfs" in value or "createdAt" in descriptor
    if cncf:
        return _cncf_to_docker(value, descriptor)
    config = value.get("config") or {}
    if not isinstance(config, dict):
        raise InvalidManifest("model config 'config' must be an object")
    created = descriptor.get("created", "")
    rootfs = value.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids", []) if isinstance(rootfs, dict) else []
    return ModelConfig(
        config,
        created if isinstance(created, str) else "",
        tuple(d for d in diff_ids if isinstance(d, str)) if isinstance(diff_ids, list) else (),
    )


def _cncf_to_docker(value: Mapping[str, Any], descriptor: Mapping[str, Any]) -> ModelConfig:
    # ModelPack keeps format/paramSize/quantization/architecture under "config"; DMR exposes only
    # those four (plus size, which ModelPack lacks) in its Docker shape.
    source = value.get("config") or {}
    if not isinstance(source, dict):
        raise InvalidManifest("model config 'config' must be an object")
    config: dict[str, Any] = {}
    for docker_key, cncf_key in (
        ("format", "format"),
        ("quantization", "quantization"),
        ("parameters", "paramSize"),
        ("architecture", "architecture"),
    ):
        item = source.get(cncf_key)
        if isinstance(item, str) and item:
            config[docker_key] = item
    created = descriptor.get("createdAt", "")
    modelfs = value.get("modelfs") or {}
    diff_ids = modelfs.get("diffIds", []) if isinstance(modelfs, dict) else []
    return ModelConfig(
        config,
        created if isinstance(created, str) else "",
        tuple(d for d in diff_ids if isinstance(d, str)) if isinstance(diff_ids, list) else (),
    )
