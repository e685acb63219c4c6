"""The model store: a standard OCI image layout on disk, safe for concurrent processes.

Layout (``root`` comes from ``MODELS_PATH``; see :func:`default_models_path`)::

    oci-layout                       {"imageLayoutVersion": "1.0.0"}
    index.json                       one descriptor per tag (ref.name = canonical reference),
                                     one without ref.name per untagged model
    blobs/sha256/<hex>               manifests, configs and layers, read-only, named by digest
    bundles/sha256/<model hex>/      what an engine mounts read-only: hard links to blobs
    ingest/sha256/<hex>.incomplete   partial downloads (resumed with Range requests)
    ingest/sha256/<hex>.lock         one writer per blob across processes
    .lock                            serialises metadata changes across processes

Rules that keep it consistent whatever is killed when:

- A blob becomes visible only by ``rename`` after its size and digest were verified, so a file
  under ``blobs/`` always holds what its name says.
- ``index.json`` is replaced atomically (temp file, fsync, rename, fsync of the directory) and only
  under the store lock; readers need no lock because they always see a whole old or new file.
- A model enters the index only after every blob it names exists; deletion removes the index
  entries first and the blobs afterwards, so a crash leaves at worst unreferenced blobs, never a
  listed model with missing content.
- Model ID = ``sha256:`` + SHA-256 of the raw manifest bytes = the manifest's blob digest.

Every method blocks on disk I/O (and briefly on the store lock); async code calls them through
``trio.to_thread.run_sync``. :class:`ModelStore` is safe to share between threads.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from modelrunner.distribution.errors import (
    AmbiguousReference,
    BlobNotFound,
    Conflict,
    DigestMismatch,
    DistributionError,
    IngestBusy,
    InvalidManifest,
    InvalidReference,
    ModelNotFound,
    StoreCorrupted,
)
from modelrunner.distribution.oci import (
    ANNOTATION_FILEPATH,
    ANNOTATION_REF_NAME,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_CHAT_TEMPLATE,
    MEDIA_TYPE_CNCF_WEIGHT_GGUF,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_GGUF,
    MEDIA_TYPE_MMPROJ,
    MEDIA_TYPE_MMPROJ_SPEC,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    ModelConfig,
    check_model_config_media_type,
    created_unix,
    digest_hex,
    parse_digest,
    parse_index,
    parse_manifest,
    parse_model_config,
    sha256_digest,
)
from modelrunner.distribution.reference import (
    DEFAULT_REGISTRY,
    Reference,
    looks_like_digest,
    looks_like_id,
    normalize_model_name,
    parse_reference,
)

__all__ = [
    "BlobIngest",
    "DeleteAction",
    "Model",
    "ModelStore",
    "default_models_path",
]

LAYOUT_VERSION: Final = "1.0.0"
_COPY_CHUNK: Final = 8 * 1024 * 1024
_MODEL_CACHE_SIZE: Final = 512
_MANIFEST_TYPES: Final = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
_INDEX_TYPES: Final = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
_GGUF_LAYER_TYPES: Final = (MEDIA_TYPE_GGUF, MEDIA_TYPE_CNCF_WEIGHT_GGUF)
_MMPROJ_TYPES: Final = (MEDIA_TYPE_MMPROJ, MEDIA_TYPE_MMPROJ_SPEC)


def default_models_path(
    environ: Mapping[str, str], *, uid: int | None = None, home: str | None = None
) -> Path:
    """The store root: ``MODELS_PATH``, else ``/var/lib/modelrunner/models`` for root, else
    ``$XDG_DATA_HOME/modelrunner/models`` (``~/.local/share`` when unset).

    Takes the environment as an argument so that only cli/ reads ``os.environ``.
    """
    explicit = environ.get("MODELS_PATH", "").strip().strip("'\"")
    if explicit:
        return Path(explicit).expanduser()
    if (os.getuid() if uid is None else uid) == 0:
        return Path("/var/lib/modelrunner/models")
    data_home = environ.get("XDG_DATA_HOME", "").strip()
    base = Path(data_home) if data_home else Path(home or Path.home()) / ".local" / "share"
    return base / "modelrunner" / "models"


@dataclass(frozen=True, slots=True)
class Model:
    """One model: a manifest in the store and the tags that point at it."""

    id: str
    tags: tuple[str, ...]
    manifest: Manifest
    config_media_type: str
    config: ModelConfig
    size: int
    """Bytes of all layers (the weights, templates, licences...)."""

    @property
    def short_id(self) -> str:
        """The 12-hex short ID the CLI shows."""
        return self.id.partition(":")[2][:12]

    @property
    def created(self) -> int:
        """``descriptor.created`` of the config as Unix seconds; 0 when absent (as DMR)."""
        return created_unix(self.config.created)

    def to_dmr_json(self) -> dict[str, Any]:
        """DMR's Model object: ``{"id", "tags", "created", "config"}`` (``tags`` omitted if none)."""
        out: dict[str, Any] = {"id": self.id}
        if self.tags:
            out["tags"] = list(self.tags)
        out["created"] = self.created
        out["config"] = dict(self.config.config)
        return out


@dataclass(frozen=True, slots=True)
class DeleteAction:
    """One line of DMR's delete response: ``{"Untagged": tag}`` or ``{"Deleted": id}``."""

    untagged: str = ""
    deleted: str = ""

    def to_json(self) -> dict[str, str]:
        return {"Untagged": self.untagged} if self.untagged else {"Deleted": self.deleted}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hasher(digest: str) -> Any:
    algorithm, _ = digest_hex(digest)
    return hashlib.new(algorithm)


class BlobIngest:
    """A resumable, exclusive writer of one blob (containerd's ingest: ref-locked partial file,
    verify, rename).

    Obtained from :meth:`ModelStore.open_ingest`; the bytes already in ``<hex>.incomplete`` are
    kept and hashed, so :attr:`offset` is where a download resumes. :meth:`commit` checks size and
    digest and renames the file under ``blobs/``; on a mismatch the partial file is deleted and
    :class:`DigestMismatch` raised. :meth:`close` releases the lock and keeps the partial file.
    Not thread-safe: one thread at a time (calls may move between threads).
    """

    def __init__(self, store: ModelStore, digest: str, size: int | None, lock_fd: int) -> None:
        self.digest = digest
        self.size = size
        self._store = store
        self._lock_fd = lock_fd
        self._path = store._incomplete_path(digest)
        self._hash = _hasher(digest)
        # Unbuffered: callers write MiB batches, and what was written survives a kill.
        self._file: IO[bytes] | None = open(self._path, "a+b", buffering=0)  # noqa: SIM115 - closed in close()
        self._closed = False
        self.offset = 0
        self._prime()

    def _prime(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        existing = os.fstat(self._file.fileno()).st_size
        if self.size is not None and existing > self.size:
            self.restart()
            return
        while chunk := self._file.read(_COPY_CHUNK):
            self._hash.update(chunk)
        self.offset = existing

    def restart(self) -> None:
        """Drop what was written so far (the server ignored our Range request)."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate(0)
        self._hash = _hasher(self.digest)
        self.offset = 0

    def write(self, data: bytes) -> None:
        assert self._file is not None
        if self.size is not None and self.offset + len(data) > self.size:
            raise DigestMismatch(f"{self.digest} ({self.size} bytes)",
                                 f"more than {self.size} bytes", what="blob size")
        view = memoryview(data)
        while view:  # a raw file may write less than asked
            view = view[self._file.write(view) or 0:]
        self._hash.update(data)
        self.offset += len(data)

    @property
    def complete(self) -> bool:
        return self.size is not None and self.offset == self.size

    def commit(self) -> Path:
        """Verify and publish the blob; returns its path under ``blobs/``.

        Raises:
            DigestMismatch: the bytes do not hash to the digest (the partial file is removed).
        """
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        actual = f"{digest_hex(self.digest)[0]}:{self._hash.hexdigest()}"
        if actual != self.digest or (self.size is not None and self.offset != self.size):
            self.discard()
            raise DigestMismatch(self.digest, actual)
        final = self._store.blob_path(self.digest)
        os.chmod(self._path, 0o444)
        os.rename(self._path, final)
        _fsync_dir(final.parent)
        self.close(remove_lock=True)
        return final

    def discard(self) -> None:
        """Delete the partial file and release the lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self.close()

    def close(self, *, remove_lock: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if remove_lock:
            # Only after a successful commit: a waiter that then locks the unlinked file finds the
            # blob present and stops; a later opener creates a fresh lock file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._store._ingest_lock_path(self.digest))
        os.close(self._lock_fd)

    def __enter__(self) -> BlobIngest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _StoreLock:
    """A reentrant lock across threads (RLock) and processes (flock on ``.lock``)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd = -1

    def __enter__(self) -> None:
        self._rlock.acquire()
        if self._depth == 0:
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                self._rlock.release()
                raise
            self._fd = fd
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1
        self._rlock.release()


class ModelStore:
    """Models in an OCI image layout under ``root`` (created if missing).

    ``default_registry`` is DMR's ``DEFAULT_REGISTRY``: the registry of references that name none.

    Raises (constructor):
        StoreCorrupted: ``root`` is a non-empty directory that is not an OCI image layout, or its
            ``oci-layout`` names another version.
    """

    def __init__(self, root: str | os.PathLike[str], *, default_registry: str = DEFAULT_REGISTRY) -> None:
        self.root = Path(root)
        self.default_registry = default_registry
        self._blobs = self.root / "blobs"
        self._bundles = self.root / "bundles"
        self._ingest = self.root / "ingest"
        self._index_path = self.root / "index.json"
        self._lock = _StoreLock(self.root / ".lock")
        self._cache: OrderedDict[str, tuple[Manifest, str, ModelConfig]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._init_layout()

    # --- layout -----------------------------------------------------------------------------------

    def _init_layout(self) -> None:
        layout_file = self.root / "oci-layout"
        if self.root.is_dir() and not layout_file.exists():
            strangers = [p.name for p in self.root.iterdir() if p.name != ".lock"]
            if strangers:
                hint = (" (this looks like a Docker Model Runner store; modelrunner keeps its own)"
                        if "models.json" in strangers or "layout.json" in strangers else "")
                raise StoreCorrupted(
                    f"{self.root} is not empty and not an OCI image layout{hint}; "
                    "point MODELS_PATH at an empty or new directory"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self._blobs / "sha256", self._bundles / "sha256", self._ingest / "sha256"):
            directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if not layout_file.exists():
                self._write_atomic(layout_file, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
            else:
                try:
                    version = json.loads(layout_file.read_bytes()).get("imageLayoutVersion")
                except (ValueError, AttributeError) as exc:
                    raise StoreCorrupted(f"{layout_file} is not valid JSON: {exc}") from exc
                if version != LAYOUT_VERSION:
                    raise StoreCorrupted(f"{layout_file}: unsupported imageLayoutVersion {version!r}")
            if not self._index_path.exists():
                self._write_index([])

    def _write_atomic(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    # --- blobs ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists). Raises InvalidDigest for a bad digest."""
        algorithm, hex_part = digest_hex(digest)
        return self._blobs / algorithm / hex_part

    def _incomplete_path(self, digest: str) -> Path:
        algorithm, hex_part = digest_hex(digest)
        return self._ingest / algorithm / f"{hex_part}.incomplete"

    def _ingest_lock_path(self, digest: str) -> Path:
        algorithm, hex_part = digest_hex(digest)
        return self._ingest / algorithm / f"{hex_part}.lock"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def incomplete_size(self, digest: str) -> int:
        """Bytes already downloaded for ``digest`` (0 when there is no partial file)."""
        try:
            return self._incomplete_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def read_blob(self, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob's bytes (manifests, configs), verified against its digest.

        Raises:
            BlobNotFound: no such blob.
            StoreCorrupted: it is bigger than ``limit`` or does not hash to its name.
        """
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        if len(data) > limit:
            raise StoreCorrupted(f"blob {digest} is larger than {limit} bytes")
        actual = f"{digest_hex(digest)[0]}:{hashlib.new(digest_hex(digest)[0], data).hexdigest()}"
        if actual != digest:
            raise StoreCorrupted(f"blob {path} does not match its digest (found {actual})")
        return data

    def write_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store a small blob from memory (configs, manifests); returns its digest.

        Raises:
            DigestMismatch: ``digest`` is given and ``data`` does not hash to it.
        """
        actual = sha256_digest(data)
        if digest is not None and parse_digest(digest) != actual:
            raise DigestMismatch(digest, actual)
        path = self.blob_path(actual)
        if not path.exists():
            self._write_atomic(path, data, 0o444)
        return actual

    def import_file(self, source: str | os.PathLike[str]) -> Descriptor:
        """Copy a local file into the store, hashing on the way; returns its (media-type-less)
        descriptor. An existing identical blob is kept and the copy dropped."""
        hasher = hashlib.sha256()
        tmp = self._ingest / f"import-{secrets.token_hex(8)}.tmp"
        size = 0
        try:
            with open(source, "rb") as src, open(tmp, "xb") as dst:
                while chunk := src.read(_COPY_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = f"sha256:{hasher.hexdigest()}"
            final = self.blob_path(digest)
            if final.exists():
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o444)
                os.rename(tmp, final)
                _fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Descriptor("", digest, size)

    def open_ingest(self, digest: str, size: int | None = None) -> BlobIngest | None:
        """Start or resume writing a blob; None if it is already in the store.

        Raises:
            IngestBusy: another thread or process holds this blob's ingest lock; retry later
                (the async pull polls, so waiting stays cancellable).
        """
        if self.has_blob(digest):
            return None
        lock_path = self._ingest_lock_path(digest)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise IngestBusy(digest) from None
            raise
        if self.has_blob(digest):  # the previous holder finished while we waited
            os.close(fd)
            return None
        try:
            return BlobIngest(self, digest, size, fd)
        except BaseException:
            os.close(fd)
            raise

    # --- index ------------------------------------------------------------------------------------

    def _read_index(self) -> list[Descriptor]:
        try:
            data = self._index_path.read_bytes()
        except FileNotFoundError:
            raise StoreCorrupted(f"{self._index_path} is missing") from None
        try:
            return list(parse_index(data).manifests)
        except InvalidManifest as exc:
            raise StoreCorrupted(f"{self._index_path}: {exc}") from exc

    def _write_index(self, entries: Iterable[Descriptor]) -> None:
        self._write_atomic(self._index_path, Index(tuple(entries)).to_bytes())

    def _tag_of(self, entry: Descriptor) -> str:
        name = entry.annotations.get(ANNOTATION_REF_NAME, "")
        if not name:
            return ""
        try:
            return str(self._parse(name))
        except InvalidReference:
            return name  # written by another tool; kept verbatim

    def _parse(self, reference: str) -> Reference:
        return parse_reference(reference, default_registry=self.default_registry)

    # --- models -----------------------------------------------------------------------------------

    def _load(self, digest: str) -> tuple[Manifest, str, ModelConfig]:
        with self._cache_lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                return cached
        manifest = parse_manifest(self.read_blob(digest))
        check_model_config_media_type(manifest.config.media_type)
        config = parse_model_config(self.read_blob(manifest.config.digest, 16 * 1024 * 1024),
                                    manifest.config.media_type)
        loaded = (manifest, manifest.config.media_type, config)
        with self._cache_lock:
            self._cache[digest] = loaded
            while len(self._cache) > _MODEL_CACHE_SIZE:
                self._cache.popitem(last=False)
        return loaded

    def _model(self, digest: str, tags: tuple[str, ...]) -> Model:
        manifest, media_type, config = self._load(digest)
        return Model(digest, tags, manifest, media_type, config, sum(layer.size for layer in manifest.layers))

    def _grouped(self, entries: list[Descriptor]) -> OrderedDict[str, list[str]]:
        models: OrderedDict[str, list[str]] = OrderedDict()
        for entry in entries:
            if entry.media_type not in _MANIFEST_TYPES:
                continue
            tags = models.setdefault(entry.digest, [])
            tag = self._tag_of(entry)
            if tag and tag not in tags:
                tags.append(tag)
        return models

    def list(self) -> list[Model]:
        """Every model in the store, in index order. Entries that are not readable model
        artifacts (another tool's images, missing blobs) are left out; :meth:`check` names them."""
        out = []
        for digest, tags in self._grouped(self._read_index()).items():
            try:
                out.append(self._model(digest, tuple(tags)))
            except DistributionError:
                continue
        return out

    def has_model(self, model_id: str) -> bool:
        return any(e.digest == model_id for e in self._read_index())

    def resolve(self, reference: str, *, partial: bool = True) -> str:
        """The ID of the model ``reference`` names.

        Tries, in DMR's order: a full ID (``sha256:<hex>`` or 64 hex) or 12-hex short ID; a
        ``name@sha256:…`` digest reference; the normalized tag; and, with ``partial``, the last
        path component of the stored tags (``smollm2`` finds ``docker.io/myorg/smollm2:v1``).

        Raises:
            ModelNotFound: nothing matches.
            AmbiguousReference: a short ID or partial name matches several models.
            InvalidReference: the reference is blank or malformed.
        """
        return self._resolve(reference, partial=partial)[0]

    def _resolve(self, reference: str, *, partial: bool) -> tuple[str, str]:
        """(model ID, canonical tag if the reference named a tag else "")."""
        text = reference.strip()
        if not text:
            raise InvalidReference(reference, "the reference is empty")
        models = self._grouped(self._read_index())
        if looks_like_id(text) or looks_like_digest(text):
            matches = [d for d in models if d == text or d.partition(":")[2] == text
                       or (len(text) == 12 and d.partition(":")[2].startswith(text))]
            if len(matches) == 1:
                return matches[0], ""
            if len(matches) > 1:
                raise AmbiguousReference(text, matches)
            raise ModelNotFound(reference)
        ref = self._parse(text)
        if ref.digest:
            if ref.digest in models:
                return ref.digest, ""
            raise ModelNotFound(reference)
        canonical = str(ref)
        for digest, tags in models.items():
            if canonical in tags:
                return digest, canonical
        if partial:
            wanted = normalize_model_name(text).rsplit("/", 1)[-1]
            wanted_name = wanted.partition(":")[0]
            explicit_tag = ":" in text.rsplit("/", 1)[-1]
            found = {
                digest
                for digest, tags in models.items()
                for tag in tags
                if (tag.rsplit("/", 1)[-1] == wanted if explicit_tag
                    else tag.rsplit("/", 1)[-1].partition(":")[0] == wanted_name)
            }
            if len(found) == 1:
                return found.pop(), ""
            if len(found) > 1:
                raise AmbiguousReference(reference, sorted(found))
        raise ModelNotFound(reference)

    def get(self, reference: str) -> Model:
        """The model ``reference`` names (see :meth:`resolve` for what a reference can be).

        Raises:
            ModelNotFound, AmbiguousReference, InvalidReference: as :meth:`resolve`.
            StoreCorrupted: the model's manifest or config blob is missing or damaged.
        """
        digest = self.resolve(reference)
        tags = tuple(self._grouped(self._read_index()).get(digest, []))
        try:
            return self._model(digest, tags)
        except BlobNotFound as exc:
            raise StoreCorrupted(f"model {digest} is listed but its blob {exc.digest} is missing") from exc

    # --- writes -----------------------------------------------------------------------------------

    def commit(self, manifest_bytes: bytes, tags: Iterable[str] = ()) -> str:
        """Register a model whose blobs are all in the store; returns its ID.

        The manifest blob is written, then the index entry, then the tags (moved from any other
        model that had them). Committing an existing model just applies the tags.

        Raises:
            InvalidManifest, UnsupportedMediaType: not a model manifest.
            BlobNotFound: a blob the manifest names is missing (e.g. deleted by a concurrent
                ``delete``); fetch it again and retry.
            InvalidReference: a tag is malformed.
        """
        manifest = parse_manifest(manifest_bytes)
        check_model_config_media_type(manifest.config.media_type)
        canonical_tags = [str(self._parse(t)) for t in tags]
        model_id = sha256_digest(manifest_bytes)
        with self._lock:
            for blob in manifest.blobs():
                if not self.has_blob(blob.digest):
                    raise BlobNotFound(blob.digest)
            self.write_blob(manifest_bytes, model_id)
            entries = self._read_index()
            if not any(e.digest == model_id for e in entries):
                entries.append(Descriptor(manifest.media_type, model_id, len(manifest_bytes)))
            for tag in canonical_tags:
                entries = self._apply_tag(entries, model_id, tag)
            self._write_index(entries)
        return model_id

    def _apply_tag(
        self, entries: builtins.list[Descriptor], model_id: str, tag: str
    ) -> builtins.list[Descriptor]:
        """Index entries with ``tag`` on ``model_id`` and on no other model."""
        if any(e.digest == model_id and self._tag_of(e) == tag for e in entries):
            return entries
        out: builtins.list[Descriptor] = []
        target: Descriptor | None = None
        for entry in entries:
            if self._tag_of(entry) == tag:
                if entry.digest != model_id and not any(
                    e.digest == entry.digest and e is not entry for e in entries
                ):
                    # The tag leaves a model that has no other entry: keep it, untagged.
                    out.append(Descriptor(entry.media_type, entry.digest, entry.size))
                continue
            out.append(entry)
            if entry.digest == model_id:
                target = entry
        if target is None:
            raise ModelNotFound(model_id)
        tagged = Descriptor(target.media_type, model_id, target.size, {ANNOTATION_REF_NAME: tag})
        untagged = [i for i, e in enumerate(out) if e.digest == model_id and not self._tag_of(e)]
        if untagged:
            out[untagged[0]] = tagged
        else:
            out.append(tagged)
        return out

    def tag(self, source: str, target: str) -> str:
        """Add tag ``target`` to the model ``source`` names; returns the canonical tag.

        Raises:
            ModelNotFound, AmbiguousReference: ``source`` as :meth:`resolve`.
            InvalidReference: ``target`` is malformed, or a digest/ID.
        """
        ref = self._parse(target)
        if ref.digest:
            raise InvalidReference(target, "a tag cannot contain a digest")
        canonical = str(ref)
        with self._lock:
            model_id = self.resolve(source)
            self._write_index(self._apply_tag(self._read_index(), model_id, canonical))
        return canonical

    def delete(self, reference: str, *, force: bool = False) -> builtins.list[DeleteAction]:
        """DMR's delete: a tag is untagged, and the model goes with its last tag; an ID deletes the
        model and all its tags, but only with ``force`` when it has more than one.

        Raises:
            ModelNotFound: nothing matches (no partial-name guessing when deleting).
            Conflict: an ID or digest of a model with several tags, without ``force`` (409).
        """
        with self._lock:
            model_id, via_tag = self._resolve(reference, partial=False)
            if "@" in reference:
                via_tag = ""
            entries = self._read_index()
            tags = self._grouped(entries).get(model_id, [])
            actions: builtins.list[DeleteAction] = []
            if via_tag:
                entries = [e for e in entries if not (e.digest == model_id and self._tag_of(e) == via_tag)]
                actions.append(DeleteAction(untagged=via_tag))
                if len(tags) > 1:
                    self._write_index(entries)
                    return actions
            elif len(tags) > 1 and not force:
                raise Conflict(
                    f"unable to delete {reference!r} (must be forced) due to multiple tag references"
                )
            actions += [DeleteAction(untagged=t) for t in tags if t != via_tag]
            remaining = [e for e in entries if e.digest != model_id]
            self._write_index(remaining)
            self._remove_model_files(model_id, remaining)
            actions.append(DeleteAction(deleted=model_id))
            return actions

    def _referenced(self, entries: Iterable[Descriptor]) -> set[str]:
        """Every blob the given index entries reach (manifests, configs, layers, nested indexes)."""
        seen: set[str] = set()
        pending = [(e.media_type, e.digest) for e in entries]
        while pending:
            media_type, digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                data = self.read_blob(digest)
                if media_type in _INDEX_TYPES:
                    pending += [(m.media_type, m.digest) for m in parse_index(data).manifests]
                elif media_type in _MANIFEST_TYPES:
                    seen.update(b.digest for b in parse_manifest(data).blobs())
            except DistributionError:
                continue  # an unreadable entry keeps what it names only by digest
        return seen

    def _remove_model_files(self, model_id: str, remaining: builtins.list[Descriptor]) -> None:
        keep = self._referenced(remaining)
        try:
            manifest = self._load(model_id)[0]
            own = [model_id, *(b.digest for b in manifest.blobs())]
        except DistributionError:
            own = [model_id]
        self._remove_bundle(model_id)
        for digest in own:
            if digest not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.blob_path(digest))
        with self._cache_lock:
            self._cache.pop(model_id, None)

    def purge(self) -> None:
        """Remove every model, blob, bundle and partial download; the layout stays (DMR's
        ``DELETE /models/purge``)."""
        with self._lock:
            if not (self.root / "oci-layout").is_file():
                raise StoreCorrupted(f"{self.root} is not an OCI image layout; refusing to purge it")
            self._write_index([])
            for directory in (self._bundles, self._blobs, self._ingest):
                trash = self.root / f".trash-{secrets.token_hex(6)}"
                os.rename(directory, trash)
                shutil.rmtree(trash, ignore_errors=True)
                (directory / "sha256").mkdir(parents=True)
            with self._cache_lock:
                self._cache.clear()

    # --- bundles ----------------------------------------------------------------------------------

    def _bundle_dir(self, model_id: str) -> Path:
        algorithm, hex_part = digest_hex(model_id)
        return self._bundles / algorithm / hex_part

    def bundle_layout(self, model: Model) -> dict[str, str]:
        """File name in the bundle -> blob digest, for ``model``."""
        files: dict[str, str] = {"config.json": model.manifest.config.digest}
        ggufs = [layer for layer in model.manifest.layers if layer.media_type in _GGUF_LAYER_TYPES]
        if len(ggufs) == 1:
            files["model.gguf"] = ggufs[0].digest
        else:
            for i, layer in enumerate(ggufs, start=1):
                files[f"model-{i:05d}-of-{len(ggufs):05d}.gguf"] = layer.digest
        for layer in model.manifest.layers:
            if layer in ggufs:
                continue
            if layer.media_type in _MMPROJ_TYPES:
                files.setdefault("model.mmproj", layer.digest)
            elif layer.media_type == MEDIA_TYPE_CHAT_TEMPLATE:
                files.setdefault("template.jinja", layer.digest)
            elif model.config_media_type != MEDIA_TYPE_CONFIG_V01:
                # Layer-per-file artifacts (v0.2, ModelPack) name each file's place in the bundle.
                name = _safe_relative_path(layer.annotations.get(ANNOTATION_FILEPATH, ""))
                if name and name not in files:
                    files[name] = layer.digest
        return files

    def bundle(self, reference: str) -> Path:
        """The model's bundle directory, built on first use: ``model.gguf`` (or
        ``model-0000i-of-0000N.gguf`` shards), ``model.mmproj``, ``template.jinja`` and
        ``config.json`` (the config blob), each a hard link to its read-only blob, so the sandbox
        can mount it read-only at ``/models`` with no copy.

        Raises:
            ModelNotFound, AmbiguousReference: as :meth:`resolve`.
            StoreCorrupted: a blob of the model is missing.
        """
        model = self.get(reference)
        files = self.bundle_layout(model)
        final = self._bundle_dir(model.id)
        if self._bundle_ok(final, files):
            return final
        with self._lock:
            if self._bundle_ok(final, files):
                return final
            tmp = self._bundles / f".tmp-{secrets.token_hex(6)}"
            tmp.mkdir(mode=0o755)
            try:
                for name, digest in files.items():
                    target = tmp / name
                    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    try:
                        os.link(self.blob_path(digest), target)
                    except FileNotFoundError:
                        raise StoreCorrupted(f"model {model.id}: blob {digest} is missing") from None
                self._remove_bundle(model.id)
                os.rename(tmp, final)
                _fsync_dir(final.parent)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def _bundle_ok(self, directory: Path, files: Mapping[str, str]) -> bool:
        try:
            return all(
                os.stat(directory / name).st_ino == os.stat(self.blob_path(digest)).st_ino
                for name, digest in files.items()
            )
        except FileNotFoundError:
            return False

    def _remove_bundle(self, model_id: str) -> None:
        directory = self._bundle_dir(model_id)
        if directory.exists():
            trash = self._bundles / f".trash-{secrets.token_hex(6)}"
            os.rename(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # --- maintenance ------------------------------------------------------------------------------

    def check(self, *, verify_digests: bool = False) -> builtins.list[str]:
        """Problems found in the store (empty when consistent): unreadable index, listed models
        whose blobs are missing, tags on several models, and with ``verify_digests`` blobs whose
        content does not hash to their name. Reads only; takes no lock."""
        problems: builtins.list[str] = []
        try:
            entries = self._read_index()
        except StoreCorrupted as exc:
            return [str(exc)]
        seen_tags: dict[str, str] = {}
        for entry in entries:
            tag = self._tag_of(entry)
            if tag:
                if tag in seen_tags and seen_tags[tag] != entry.digest:
                    problems.append(f"tag {tag} points at {seen_tags[tag]} and {entry.digest}")
                seen_tags[tag] = entry.digest
        for digest in self._grouped(entries):
            try:
                manifest, _, _ = self._load(digest)
            except DistributionError as exc:
                problems.append(f"model {digest}: {exc}")
                continue
            for blob in manifest.blobs():
                path = self.blob_path(blob.digest)
                if not path.is_file():
                    problems.append(f"model {digest}: blob {blob.digest} is missing")
                elif path.stat().st_size != blob.size:
                    problems.append(f"model {digest}: blob {blob.digest} has the wrong size")
        if verify_digests:
            for path in sorted((self._blobs / "sha256").iterdir()):
                hasher = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(_COPY_CHUNK):
                        hasher.update(chunk)
                if hasher.hexdigest() != path.name:
                    problems.append(f"blob {path} does not match its digest")
        return problems

    def cleanup(self, *, max_age: float = 7 * 24 * 3600) -> builtins.list[Path]:
        """Remove leftovers older than ``max_age`` seconds and return what was removed: partial
        downloads nobody is resuming (DMR drops them after 7 days), their lock files, temp files of
        interrupted imports and writes, half-built or discarded bundles, and blobs no model refers
        to (left by a crash between a delete's index update and its blob removal). The daemon
        calls it at start-up; it takes the store lock, and skips anything another process holds.
        """
        removed: builtins.list[Path] = []
        cutoff = time.time() - max_age

        def old(path: Path) -> bool:
            try:
                return path.lstat().st_mtime < cutoff
            except FileNotFoundError:
                return False

        def remove(path: Path) -> None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)

        with self._lock:
            ingest = self._ingest / "sha256"
            for partial in sorted(ingest.glob("*.incomplete")):
                if not old(partial):
                    continue
                lock_fd = os.open(partial.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(lock_fd)
                    continue  # a pull is resuming it right now
                try:
                    remove(partial)
                finally:
                    os.close(lock_fd)
            for lock in sorted(ingest.glob("*.lock")):
                if old(lock) and not lock.with_suffix(".incomplete").exists():
                    remove(lock)
            for leftover in [*self._ingest.glob("import-*.tmp"), *self.root.glob(".*.tmp"),
                             *self._bundles.glob(".tmp-*"), *self._bundles.glob(".trash-*"),
                             *self.root.glob(".trash-*")]:
                if old(leftover):
                    remove(leftover)
            keep = self._referenced(self._read_index())
            for blob in sorted((self._blobs / "sha256").iterdir()):
                if f"sha256:{blob.name}" not in keep and old(blob):
                    remove(blob)
        return removed

    def iter_blob(self, digest: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The bytes of a blob in chunks (for pushes and exports).

        Raises:
            BlobNotFound: no such blob.
        """
        try:
            f = open(self.blob_path(digest), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        with f:
            while chunk := f.read(chunk_size):
                yield chunk


def _safe_relative_path(value: str) -> str:
    """``value`` if it is a plain relative path inside the bundle, else ""."""
    if not value or "\\" in value or "\x00" in value:
        return ""
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        return ""
    return str(path)

