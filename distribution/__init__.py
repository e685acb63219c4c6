"""modelrunner.distribution: the OCI model store, registry client, packaging and GGUF metadata.

Public names are re-exported here; import them from ``modelrunner.distribution``. See README.md.
"""

from modelrunner.distribution.archive import export_tar, iter_export_tar, load_tar
from modelrunner.distribution.auth import Credentials, DockerConfig
from modelrunner.distribution.errors import (
    AmbiguousReference,
    BlobNotFound,
    Conflict,
    DigestMismatch,
    DistributionError,
    IngestBusy,
    InvalidArchive,
    InvalidArgument,
    InvalidDigest,
    InvalidGGUF,
    InvalidManifest,
    InvalidReference,
    ModelNotFound,
    RegistryError,
    RegistryUnauthorized,
    RemoteNotFound,
    StoreCorrupted,
    UnsupportedMediaType,
)
from modelrunner.distribution.ggufinfo import GGUFInfo, discover_shards, read_gguf, read_gguf_shards
from modelrunner.distribution.oci import MODEL_CONFIG_MEDIA_TYPES, Descriptor, Manifest, ModelConfig
from modelrunner.distribution.packaging import PackageResult, package_gguf, repackage
from modelrunner.distribution.progress import EventType, LayerProgress, Mode, ProgressEvent
from modelrunner.distribution.reference import Reference, display_name, normalize_model_name, parse_reference
from modelrunner.distribution.registry import (
    ProgressSink,
    PullResult,
    PushResult,
    RegistryClient,
    RegistryConfig,
    RegistryStatistics,
    RemoteModel,
)
from modelrunner.distribution.store import DeleteAction, Model, ModelStore, default_models_path

__all__ = [
    "MODEL_CONFIG_MEDIA_TYPES",
    "AmbiguousReference",
    "BlobNotFound",
    "Conflict",
    "Credentials",
    "DeleteAction",
    "Descriptor",
    "DigestMismatch",
    "DistributionError",
    "DockerConfig",
    "EventType",
    "GGUFInfo",
    "IngestBusy",
    "InvalidArchive",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidGGUF",
    "InvalidManifest",
    "InvalidReference",
    "LayerProgress",
    "Manifest",
    "Mode",
    "Model",
    "ModelConfig",
    "ModelNotFound",
    "ModelStore",
    "PackageResult",
    "ProgressEvent",
    "ProgressSink",
    "PullResult",
    "PushResult",
    "Reference",
    "RegistryClient",
    "RegistryConfig",
    "RegistryError",
    "RegistryStatistics",
    "RegistryUnauthorized",
    "RemoteModel",
    "RemoteNotFound",
    "StoreCorrupted",
    "UnsupportedMediaType",
    "default_models_path",
    "discover_shards",
    "display_name",
    "export_tar",
    "iter_export_tar",
    "load_tar",
    "normalize_model_name",
    "package_gguf",
    "parse_reference",
    "read_gguf",
    "read_gguf_shards",
    "repackage",
]
