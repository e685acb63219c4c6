"""Export and load models as tar archives in DMR's format (dmr.md 2.9).

An archive holds ``blobs/`` and ``blobs/sha256/`` directory entries, one ``blobs/sha256/<hex>``
file per layer and for the config, and last ``manifest.json`` with the raw manifest bytes (so the
model ID survives the round trip). Exports are deterministic (zero mtimes, uid/gid 0, fixed modes)
and streamed in chunks; loads are streamed too, verify every blob against its name before it
becomes visible, and refuse anything else in the archive (links, devices, other paths).
"""

from __future__ import annotations

import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Final

from modelrunner.distribution.errors import BlobNotFound, DigestMismatch, IngestBusy, InvalidArchive
from modelrunner.distribution.oci import MAX_MANIFEST_BYTES, parse_manifest
from modelrunner.distribution.store import BlobIngest, ModelStore

__all__ = ["export_tar", "iter_export_tar", "load_tar"]

_BLOB_NAME: Final = re.compile(r"^(?:\./)?blobs/sha256/([0-9a-f]{64})$")
_DIRS: Final = ("blobs", "blobs/sha256")
_CHUNK: Final = 1024 * 1024
_BLOCK: Final = 512


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX: ustar for ordinary sizes, an extended header for blobs over 8 GiB.
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def iter_export_tar(store: ModelStore, reference: str) -> Iterator[bytes]:
    """The archive of model ``reference`` as a stream of byte chunks (for an HTTP response).

    Raises (on first iteration):
        ModelNotFound, AmbiguousReference: as :meth:`ModelStore.resolve`.
        BlobNotFound: a blob of the model is missing from the store.
    """
    model = store.get(reference)
    manifest_bytes = store.read_blob(model.id)
    for directory in _DIRS:
        yield _header(directory + "/", 0, directory=True)
    blobs = [*model.manifest.layers, model.manifest.config]
    written: set[str] = set()
    for blob in blobs:
        if blob.digest in written:
            continue
        written.add(blob.digest)
        yield _header(f"blobs/sha256/{blob.digest.partition(':')[2]}", blob.size)
        sent = 0
        for chunk in store.iter_blob(blob.digest, _CHUNK):
            sent += len(chunk)
            yield chunk
        if sent != blob.size:
            raise BlobNotFound(blob.digest)
        yield _padding(blob.size)
    yield _header("manifest.json", len(manifest_bytes))
    yield manifest_bytes + _padding(len(manifest_bytes))
    yield b"\0" * (2 * _BLOCK)


def export_tar(store: ModelStore, reference: str, destination: IO[bytes]) -> None:
    """Write the archive of model ``reference`` to ``destination``; blocks."""
    for chunk in iter_export_tar(store, reference):
        destination.write(chunk)


def _open_ingest(store: ModelStore, digest: str, size: int) -> BlobIngest | None:
    # Another pull of the same blob holds its lock; a load runs in a thread, so it may wait.
    while True:
        try:
            return store.open_ingest(digest, size)
        except IngestBusy:
            time.sleep(0.05)


def load_tar(store: ModelStore, source: IO[bytes], tags: Iterable[str] = ()) -> str:
    """Load an archive from a stream (read once, front to back) and return the model ID.

    No tag is applied unless ``tags`` are given (DMR's load applies none; its CLI tags after).

    Raises:
        InvalidArchive: not a tar, truncated, an unexpected entry, no ``manifest.json``, or a
            blob the manifest names is neither in the archive nor in the store.
        DigestMismatch: a blob does not hash to its name (nothing of it is kept).
        InvalidManifest, UnsupportedMediaType: ``manifest.json`` is not a model manifest.
    """
    manifest_bytes: bytes | None = None
    try:
        with tarfile.open(fileobj=source, mode="r|*") as archive:
            for member in archive:
                name = member.name
                if member.isdir() and name.rstrip("/").removeprefix("./") in _DIRS:
                    continue
                if not member.isreg():
                    raise InvalidArchive(f"unexpected entry {name!r} (only blobs and manifest.json)")
                if name.removeprefix("./") == "manifest.json":
                    if member.size > MAX_MANIFEST_BYTES:
                        raise InvalidArchive(f"manifest.json is {member.size} bytes, more than allowed")
                    f = archive.extractfile(member)
                    assert f is not None
                    manifest_bytes = f.read()
                    continue
                match = _BLOB_NAME.match(name)
                if match is None:
                    raise InvalidArchive(f"unexpected entry {name!r} (only blobs and manifest.json)")
                _load_blob(store, archive, member, f"sha256:{match.group(1)}")
    except tarfile.TarError as exc:
        raise InvalidArchive(f"not a readable tar archive: {exc}") from exc
    except EOFError as exc:
        raise InvalidArchive("the archive is truncated") from exc
    if manifest_bytes is None:
        raise InvalidArchive("the archive has no manifest.json")
    manifest = parse_manifest(manifest_bytes)
    try:
        return store.commit(manifest_bytes, tags)
    except BlobNotFound as exc:
        raise InvalidArchive(
            f"the archive lacks blob {exc.digest} named by its manifest ({len(manifest.layers)} layers)"
        ) from exc


def _load_blob(store: ModelStore, archive: tarfile.TarFile, member: tarfile.TarInfo, digest: str) -> None:
    reader = archive.extractfile(member)
    assert reader is not None
    ingest = _open_ingest(store, digest, member.size)
    if ingest is None:
        return  # already stored (the tar stream skips the member's bytes by itself)
    try:
        if ingest.offset:
            ingest.restart()  # a partial download of the same blob: the archive has it whole
        while chunk := reader.read(_CHUNK):
            ingest.write(chunk)
        if ingest.offset != member.size:
            raise InvalidArchive(f"blob {digest} is truncated in the archive")
        ingest.commit()
    except (DigestMismatch, InvalidArchive):
        ingest.discard()
        raise
    finally:
        ingest.close()

