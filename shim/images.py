"""Engine images in containerd: import an OCI layout tarball, pull by reference, unpack, resolve.

Import goes through containerd's API, not ``ctr``: each blob is streamed into the content store under
a temporary lease with the garbage-collection labels containerd's own client sets (index -> manifest
-> config and layers, config -> top snapshot), the image record is created, and every layer is
applied (``Diff.Apply``) onto a snapshot committed under its chain ID. Once the image record holds
the blobs and the config holds the snapshots, the lease goes and nothing is left to collect.

Pulling uses containerd's own pull path (``ctr images pull``, the Go resolver with its auth and
hosts.toml support), then resolves the result the same way. Any other source of blobs (for example
distribution/'s registry client) can feed :func:`import_from_source`.

:class:`ImageInstaller` tracks the install state per reference for ``/engines/status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import logging
import secrets
import tarfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, final

import trio
from google.protobuf import field_mask_pb2
from modelrunner.shim import content
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from modelrunner.shim.leases import add_resource, temporary_lease
from modelrunner.shim.oci import (
    HOST_PLATFORM,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_DOCUMENT_BYTES,
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    chain_ids,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
    sha256_digest,
)
from modelrunner.shim.proto import containerd_diff_pb2 as diff_pb
from modelrunner.shim.proto import containerd_images_pb2 as images_pb
from modelrunner.shim.proto import containerd_snapshots_pb2 as snapshots_pb
from modelrunner.shim.proto import containerd_types_pb2 as types_pb

__all__ = [
    "ContentSource",
    "Image",
    "ImageInstaller",
    "InstallState",
    "InstallStatus",
    "OCILayoutTarball",
    "get",
    "import_from_source",
    "import_tarball",
    "list_refs",
    "open_oci_tarball",
    "pull",
    "remove",
]

log = logging.getLogger("modelrunner.shim.images")

NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Image:
    """An engine image installed in containerd and unpacked, ready for ``Snapshots.View``.

    Attributes:
        ref: the image name in containerd (e.g. ``docker.io/modelrunner/llama.cpp:b11312-cpu``).
        target: what the name points to (an index or a manifest).
        manifest: the platform manifest's descriptor (equal to ``target`` for single-platform images).
        config_digest: digest of the image config blob.
        config: the parsed image config (entrypoint, user, env, labels, diff IDs...).
        chain_id: the snapshot holding the unpacked top layer; runners view it read-only.
        snapshotter: where it is unpacked.
        size: compressed size of the layers.
    """

    ref: str
    target: Descriptor
    manifest: Descriptor
    config_digest: str
    config: ImageConfig
    chain_id: str
    snapshotter: str
    size: int

    @property
    def digest(self) -> str:
        return self.target.digest


class ContentSource(Protocol):
    """Where an import reads an image's blobs from."""

    async def read(self, descriptor: Descriptor) -> bytes:
        """The whole blob (used for indexes, manifests and configs, which are small)."""
        ...

    def open(self, descriptor: Descriptor) -> contextlib.AbstractAsyncContextManager[trio.abc.ReceiveStream]:
        """A stream of the blob's bytes (used for layers)."""
        ...


# --- OCI layout tarball --------------------------------------------------------------------------


class _FileReceiveStream(trio.abc.ReceiveStream):
    """A blocking file read in trio worker threads, one chunk per call."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(self._file.read, max_bytes or READ_CHUNK)

    async def aclose(self) -> None:
        self._file.close()
        await trio.lowlevel.checkpoint()


@final
class OCILayoutTarball:
    """An OCI image layout packed as a tar file (what ``hack/build-engine-llamacpp`` produces).

    Use :func:`open_oci_tarball` (``async with open_oci_tarball(path) as tarball``).
    """

    def __init__(self, path: Path, tar: tarfile.TarFile, index: tuple[Descriptor, ...]) -> None:
        self.path = path
        self.index = index
        self._tar = tar
        self._lock = trio.Lock()  # a TarFile is not safe for concurrent reads

    def names(self) -> list[str]:
        """The image names the layout's index annotates its entries with."""
        names = []
        for entry in self.index:
            name = entry.annotations.get(NAME_ANNOTATION) or entry.annotations.get(REF_NAME_ANNOTATION)
            if name and name not in names:
                names.append(name)
        return names

    def resolve(self, ref: str | None, platform: Platform = HOST_PLATFORM) -> tuple[str, Descriptor]:
        """Pick the index entry to import and the name to record it under.

        With ``ref``, entries annotated with that name (or its tag) are candidates, or the only
        entry if it has no name. Without, the layout must name exactly one image.

        Raises:
            InvalidArgument: no matching entry, or the choice is ambiguous.
        """

        def named(entry: Descriptor, name: str) -> bool:
            tag = name.rsplit(":", 1)[-1] if ":" in name.rsplit("/", 1)[-1] else ""
            values = {entry.annotations.get(NAME_ANNOTATION), entry.annotations.get(REF_NAME_ANNOTATION)}
            return name in values or (bool(tag) and tag in values)

        if ref is None:
            names = [n for n in self.names() if "/" in n or ":" in n]
            if len(names) != 1:
                raise InvalidArgument(
                    f"importing {self.path}",
                    f"the tarball names {len(names)} images ({', '.join(names) or 'none'}); "
                    "say which reference to use",
                )
            ref = names[0]
        candidates = [e for e in self.index if named(e, ref)]
        if not candidates and len(self.index) == 1 and not self.names():
            candidates = list(self.index)
        if not candidates:
            raise InvalidArgument(
                f"importing {self.path}",
                f"the tarball has no image named {ref!r} (it has: {', '.join(self.names())})",
            )
        return ref, select_manifest(candidates, platform)

    async def read(self, descriptor: Descriptor) -> bytes:
        """The blob, checked against the descriptor's size and digest."""
        return await self._read_verified(descriptor)

    @contextlib.asynccontextmanager
    async def _open_blob(self, descriptor: Descriptor) -> AsyncIterator[trio.abc.ReceiveStream]:
        async with self._lock:
            member = self._member(descriptor)
            file = self._tar.extractfile(member)
            if file is None:
                raise InvalidArgument(
                    f"importing {self.path}", f"blob {descriptor.digest} is not a regular file"
                )
            stream = _FileReceiveStream(file)
            try:
                yield stream
            finally:
                await stream.aclose()

    def open(self, descriptor: Descriptor) -> contextlib.AbstractAsyncContextManager[trio.abc.ReceiveStream]:
        """A stream of a layer blob; containerd verifies its digest when the write commits."""
        return self._open_blob(descriptor)

    def _member(self, descriptor: Descriptor) -> tarfile.TarInfo:
        algorithm, hex_digest = descriptor.digest.split(":", 1)
        try:
            member = self._tar.getmember(f"blobs/{algorithm}/{hex_digest}")
        except KeyError:
            raise InvalidArgument(
                f"importing {self.path}", f"the layout lacks blob {descriptor.digest}"
            ) from None
        if member.size != descriptor.size:
            raise InvalidArgument(
                f"importing {self.path}",
                f"blob {descriptor.digest} is {member.size} bytes, the descriptor says {descriptor.size}",
            )
        return member

    async def _read_verified(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"importing {self.path}", f"document {descriptor.digest} is too large")
        async with self._lock:
            member = self._member(descriptor)
            data = await trio.to_thread.run_sync(_read_member, self._tar, member.name, MAX_DOCUMENT_BYTES)
        if (
            data is None
            or not descriptor.digest.startswith("sha256:")
            or sha256_digest(data) != descriptor.digest
        ):
            raise InvalidArgument(
                f"importing {self.path}", f"blob {descriptor.digest} does not match its digest"
            )
        return data


@contextlib.asynccontextmanager
async def open_oci_tarball(path: str | Path) -> AsyncIterator[OCILayoutTarball]:
    """Open an OCI layout tarball and check it (``oci-layout`` version, ``index.json``).

    Raises:
        NotFound: no such file.
        InvalidArgument: not a tar file, or not an OCI image layout.
    """
    path = Path(path)
    try:
        tar = await trio.to_thread.run_sync(tarfile.open, path, "r:*")
    except FileNotFoundError as exc:
        raise NotFound(f"importing {path}", "no such file") from exc
    except (tarfile.TarError, OSError) as exc:
        raise InvalidArgument(f"importing {path}", f"not a readable tar file: {exc}") from exc
    try:
        layout = await trio.to_thread.run_sync(_read_member, tar, "oci-layout", MAX_DOCUMENT_BYTES)
        index_bytes = await trio.to_thread.run_sync(_read_member, tar, "index.json", MAX_DOCUMENT_BYTES)
        if layout is None or index_bytes is None:
            raise InvalidArgument(
                f"importing {path}", "not an OCI image layout: it needs oci-layout and index.json at the top"
            )
        if b'"imageLayoutVersion"' not in layout:
            raise InvalidArgument(f"importing {path}", "oci-layout has no imageLayoutVersion")
        yield OCILayoutTarball(path, tar, parse_index(index_bytes))
    finally:
        tar.close()


def _read_member(tar: tarfile.TarFile, name: str, limit: int) -> bytes | None:
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    if member.size > limit:
        raise InvalidArgument("reading an image layout", f"{name} is larger than {limit} bytes")
    file = tar.extractfile(member)
    return None if file is None else file.read()


# --- import -------------------------------------------------------------------------------------


async def import_tarball(
    client: Containerd, path: str | Path, ref: str | None = None, *, platform: Platform = HOST_PLATFORM
) -> Image:
    """Import an OCI layout tarball's image for ``platform`` into containerd and unpack it.

    ``ref`` names the image to import (and what to call it); without it the tarball must name
    exactly one image (``io.containerd.image.name`` or ``org.opencontainers.image.ref.name``).
    Importing an image that is already there re-checks it and is fast.

    Raises:
        NotFound: no such file.
        InvalidArgument: the file is not a valid OCI layout or lacks the image/platform.
        ContainerdError: containerd refused a step.
    """
    async with open_oci_tarball(path) as tarball:
        name, root = tarball.resolve(ref, platform)
        return await import_from_source(client, name, root, tarball, platform=platform)


async def import_from_source(
    client: Containerd,
    ref: str,
    root: Descriptor,
    source: ContentSource,
    *,
    platform: Platform = HOST_PLATFORM,
) -> Image:
    """Import the image ``root`` (an index or manifest descriptor) from ``source`` as ``ref``."""
    _validate_ref(ref)
    async with temporary_lease(client, "import") as lease:
        root_bytes = await source.read(root)
        manifest_desc = root
        index_labels: dict[str, str] = {}
        manifest_bytes = root_bytes
        if root.media_type in INDEX_MEDIA_TYPES:
            manifest_desc = select_manifest(parse_index(root_bytes), platform)
            if manifest_desc.media_type not in MANIFEST_MEDIA_TYPES:
                raise InvalidArgument(f"importing {ref}", "nested image indexes are not supported")
            manifest_bytes = await source.read(manifest_desc)
            index_labels[f"{GC_REF_CONTENT}.m.0"] = manifest_desc.digest
        elif root.media_type not in MANIFEST_MEDIA_TYPES:
            raise InvalidArgument(
                f"importing {ref}", f"{root.media_type!r} is not an image index or manifest"
            )
        manifest = parse_manifest(manifest_bytes)
        config_bytes = await source.read(manifest.config)
        config = parse_config(config_bytes)
        _check_layers(ref, manifest, config)
        chains = chain_ids(config.diff_ids)

        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
            async with source.open(layer) as stream:
                await content.write_blob(
                    client, layer, stream, labels={UNCOMPRESSED_LABEL: diff_id}, lease=lease
                )
        config_labels = {f"{GC_REF_SNAPSHOT}.{client.snapshotter}": chains[-1]}
        await _write_document(client, manifest.config, config_bytes, config_labels, lease)
        manifest_labels = {f"{GC_REF_CONTENT}.config": manifest.config.digest}
        manifest_labels.update(
            {f"{GC_REF_CONTENT}.l.{i}": layer.digest for i, layer in enumerate(manifest.layers)}
        )
        await _write_document(client, manifest_desc, manifest_bytes, manifest_labels, lease)
        if manifest_desc is not root:
            await _write_document(client, root, root_bytes, index_labels, lease)

        await _unpack(client, manifest, config, lease)
        await _put_image_record(client, ref, root)
    # containerd's image record has no platform field: report what get() will read back.
    image = Image(
        ref=ref,
        target=dataclasses.replace(root, platform=None),
        manifest=dataclasses.replace(manifest_desc, platform=None),
        config_digest=manifest.config.digest,
        config=config,
        chain_id=chains[-1],
        snapshotter=client.snapshotter,
        size=sum(layer.size for layer in manifest.layers),
    )
    log.info("imported %s (%s, chain %s)", ref, root.digest, image.chain_id)
    return image


class _BytesStream(trio.abc.ReceiveStream):
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = max_bytes or READ_CHUNK
        chunk, self._data = bytes(self._data[:size]), self._data[size:]
        return chunk

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _write_document(
    client: Containerd, descriptor: Descriptor, data: bytes, labels: Mapping[str, str], lease: str
) -> None:
    await content.write_blob(client, descriptor, _BytesStream(data), labels=labels, lease=lease)


def _check_layers(ref: str, manifest: Manifest, config: ImageConfig) -> None:
    if not manifest.layers:
        raise InvalidArgument(f"importing {ref}", "the image has no layers")
    if len(manifest.layers) != len(config.diff_ids):
        raise InvalidArgument(
            f"importing {ref}",
            f"the manifest has {len(manifest.layers)} layers but the config {len(config.diff_ids)} diff IDs",
        )


def _validate_ref(ref: str) -> None:
    if not ref or len(ref) > 4096 or any(c.isspace() for c in ref) or ref.startswith(("/", ".")):
        raise InvalidArgument("naming an image", f"{ref!r} is not an image reference")


async def _snapshot_kind(client: Containerd, key: str) -> int | None:
    try:
        response = await client.unary(
            client.snapshots_stub.Stat,
            snapshots_pb.StatSnapshotRequest(snapshotter=client.snapshotter, key=key),
            f"looking up snapshot {key}",
        )
    except NotFound:
        return None
    kind: int = response.info.kind
    return kind


async def _unpack(client: Containerd, manifest: Manifest, config: ImageConfig, lease: str) -> None:
    """Apply each layer onto a snapshot named by its chain ID, skipping ones already unpacked."""
    parent = ""
    for layer, diff_id, chain in zip(
        manifest.layers, config.diff_ids, chain_ids(config.diff_ids), strict=True
    ):
        # Lease first, then look: an image removed a moment ago may still be awaiting collection.
        await add_resource(client, lease, chain, f"snapshots/{client.snapshotter}")
        if await _snapshot_kind(client, chain) == snapshots_pb.COMMITTED:
            parent = chain
            continue
        key = f"modelrunner-unpack-{secrets.token_hex(6)}-{chain}"
        operation = f"unpacking layer {layer.digest}"
        prepared = await client.unary(
            client.snapshots_stub.Prepare,
            snapshots_pb.PrepareSnapshotRequest(snapshotter=client.snapshotter, key=key, parent=parent),
            operation,
            lease=lease,
        )
        try:
            applied = await client.unary(
                client.diff_stub.Apply,
                diff_pb.ApplyRequest(
                    diff=types_pb.Descriptor(
                        media_type=layer.media_type, digest=layer.digest, size=layer.size
                    ),
                    mounts=list(prepared.mounts),
                ),
                operation,
                lease=lease,
            )
            if applied.applied.digest != diff_id:
                raise InvalidArgument(
                    operation, f"it unpacks to {applied.applied.digest} but the image config says {diff_id}"
                )
            # ALREADY_EXISTS: a concurrent import committed the same layer first.
            with contextlib.suppress(AlreadyExists):
                await client.unary(
                    client.snapshots_stub.Commit,
                    snapshots_pb.CommitSnapshotRequest(snapshotter=client.snapshotter, name=chain, key=key),
                    operation,
                    lease=lease,
                )
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10), contextlib.suppress(NotFound):
                # After a successful commit the key is gone already; otherwise drop the work snapshot.
                await client.unary(
                    client.snapshots_stub.Remove,
                    snapshots_pb.RemoveSnapshotRequest(snapshotter=client.snapshotter, key=key),
                    f"removing snapshot {key}",
                )
        parent = chain


async def _put_image_record(client: Containerd, ref: str, target: Descriptor) -> None:
    record = images_pb.Image(
        name=ref,
        target=types_pb.Descriptor(
            media_type=target.media_type,
            digest=target.digest,
            size=target.size,
            annotations=dict(target.annotations),
        ),
    )
    try:
        await client.unary(
            client.images_stub.Create, images_pb.CreateImageRequest(image=record), f"recording image {ref}"
        )
    except AlreadyExists:
        await client.unary(
            client.images_stub.Update,
            images_pb.UpdateImageRequest(
                image=record, update_mask=field_mask_pb2.FieldMask(paths=["target"])
            ),
            f"updating image {ref}",
        )


# --- queries -------------------------------------------------------------------------------------


def _descriptor(proto: Any) -> Descriptor:
    return Descriptor(proto.media_type, proto.digest, proto.size, dict(proto.annotations))


async def get(client: Containerd, ref: str, *, platform: Platform = HOST_PLATFORM) -> Image:
    """The installed, unpacked image ``ref``.

    Raises:
        NotFound: no image with that name.
        FailedPrecondition: the image is there but not unpacked into the client's snapshotter.
        InvalidArgument: its stored manifest or config is not valid.
    """
    try:
        response = await client.unary(
            client.images_stub.Get, images_pb.GetImageRequest(name=ref), f"looking up image {ref}"
        )
    except NotFound as exc:
        raise NotFound(f"looking up image {ref}", "the image is not installed") from exc
    target = _descriptor(response.image.target)
    manifest_desc = target
    manifest_bytes = await content.read_blob(client, target.digest, max_bytes=MAX_DOCUMENT_BYTES)
    if target.media_type in INDEX_MEDIA_TYPES:
        manifest_desc = select_manifest(parse_index(manifest_bytes), platform)
        manifest_bytes = await content.read_blob(client, manifest_desc.digest, max_bytes=MAX_DOCUMENT_BYTES)
    manifest = parse_manifest(manifest_bytes)
    config = parse_config(
        await content.read_blob(client, manifest.config.digest, max_bytes=MAX_DOCUMENT_BYTES)
    )
    _check_layers(ref, manifest, config)
    chain = chain_ids(config.diff_ids)[-1]
    if await _snapshot_kind(client, chain) != snapshots_pb.COMMITTED:
        raise FailedPrecondition(
            f"looking up image {ref}",
            f"the image is not unpacked into the {client.snapshotter} snapshotter; import or pull it again",
        )
    return Image(
        ref=ref,
        target=target,
        manifest=manifest_desc,
        config_digest=manifest.config.digest,
        config=config,
        chain_id=chain,
        snapshotter=client.snapshotter,
        size=sum(layer.size for layer in manifest.layers),
    )


async def list_refs(client: Containerd) -> list[str]:
    """Names of every image in the namespace."""
    response = await client.unary(client.images_stub.List, images_pb.ListImagesRequest(), "listing images")
    return sorted(image.name for image in response.images)


async def remove(client: Containerd, ref: str, *, sync: bool = True) -> None:
    """Remove the image record; with ``sync`` its blobs and snapshots are collected before return.

    Snapshots still viewed by runners stay until those runners are gone.

    Raises:
        NotFound: no image with that name.
    """
    await client.unary(
        client.images_stub.Delete, images_pb.DeleteImageRequest(name=ref, sync=sync), f"removing image {ref}"
    )


# --- pull ----------------------------------------------------------------------------------------


def _registry_host(ref: str) -> str:
    first = ref.split("/", 1)[0]
    return first if "/" in ref and ("." in first or ":" in first or first == "localhost") else "docker.io"


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def pull_command(
    client: Containerd, ref: str, *, plain_http: bool, platform: Platform = HOST_PLATFORM
) -> list[str]:
    """The ``ctr`` command line that pulls and unpacks ``ref`` (pure; exposed for tests)."""
    args = ["ctr", "--address", client.address, "--namespace", client.namespace, "images", "pull"]
    args += ["--snapshotter", client.snapshotter, "--platform", f"{platform.os}/{platform.architecture}"]
    if plain_http:
        args.append("--plain-http")
    args.append(ref)
    return args


async def pull(
    client: Containerd, ref: str, *, plain_http: bool | None = None, platform: Platform = HOST_PLATFORM
) -> Image:
    """Pull ``ref`` with containerd's own pull path, unpack it and return it.

    ``plain_http`` defaults to True only for loopback registries (``127.0.0.1:5000/...``).

    Raises:
        NotFound: the registry has no such image.
        Unavailable: the registry cannot be reached or refused the pull.
    """
    _validate_ref(ref)
    if plain_http is None:
        plain_http = _is_loopback(_registry_host(ref))
    command = pull_command(client, ref, plain_http=plain_http, platform=platform)
    try:
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        raise Unavailable(f"pulling {ref}", f"cannot run ctr: {exc}") from exc
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"ctr exited with {result.returncode}"
        if "not found" in detail:
            raise NotFound(f"pulling {ref}", detail)
        raise Unavailable(f"pulling {ref}", detail)
    return await get(client, ref, platform=platform)


# --- install status ------------------------------------------------------------------------------


class InstallState(enum.Enum):
    NOT_INSTALLED = "not installed"
    INSTALLING = "installing"
    INSTALLED = "installed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class InstallStatus:
    ref: str
    state: InstallState
    image: Image | None = None
    error: str = ""


@final
class ImageInstaller:
    """Install-state bookkeeping per image reference, for ``/engines/status``-style reporting.

    Installs are single-flight: a second ``install_*`` of a reference being installed waits for the
    first and returns its result. ``status()`` is sync and never blocks.
    """

    def __init__(self, client: Containerd) -> None:
        self._client = client
        self._status: dict[str, InstallStatus] = {}
        self._in_flight: dict[str, trio.Event] = {}

    def status(self, ref: str) -> InstallStatus:
        """The last known state (NOT_INSTALLED until :meth:`refresh` or an install says otherwise)."""
        return self._status.get(ref, InstallStatus(ref, InstallState.NOT_INSTALLED))

    async def refresh(self, ref: str) -> InstallStatus:
        """Ask containerd whether ``ref`` is installed and unpacked, and record the answer."""
        if ref in self._in_flight:
            return self.status(ref)
        try:
            image = await get(self._client, ref)
        except NotFound:
            status = InstallStatus(ref, InstallState.NOT_INSTALLED)
        except (FailedPrecondition, InvalidArgument) as exc:
            status = InstallStatus(ref, InstallState.ERROR, error=str(exc))
        else:
            status = InstallStatus(ref, InstallState.INSTALLED, image)
        self._status[ref] = status
        return status

    async def install_tarball(self, ref: str, path: str | Path) -> Image:
        async def work() -> Image:
            return await import_tarball(self._client, path, ref)

        return await self._install(ref, work)

    async def install_pull(self, ref: str, *, plain_http: bool | None = None) -> Image:
        async def work() -> Image:
            return await pull(self._client, ref, plain_http=plain_http)

        return await self._install(ref, work)

    async def _install(self, ref: str, work: Any) -> Image:
        while ref in self._in_flight:
            await self._in_flight[ref].wait()
            status = self.status(ref)
            if status.state is InstallState.INSTALLED and status.image is not None:
                return status.image
        done = trio.Event()
        self._in_flight[ref] = done
        previous = self._status.get(ref)
        self._status[ref] = InstallStatus(ref, InstallState.INSTALLING)
        try:
            image: Image = await work()
        except ContainerdError as exc:
            self._status[ref] = InstallStatus(ref, InstallState.ERROR, error=str(exc))
            raise
        except BaseException:
            # Cancelled: the install did not happen; report what was there before.
            self._status[ref] = previous or InstallStatus(ref, InstallState.NOT_INSTALLED)
            raise
        finally:
            del self._in_flight[ref]
            done.set()
        self._status[ref] = InstallStatus(ref, InstallState.INSTALLED, image)
        return image
