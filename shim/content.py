"""containerd's content store over gRPC: blob info, reads, label updates and streamed writes.

Writes use ``Content.Write`` (a bidirectional stream). The request iterator runs on grpc's own
thread and pulls each chunk from the trio side through the run's token, so a blob of any size moves
in 1 MiB pieces without being held in memory; containerd checks the size and digest on commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from google.protobuf import field_mask_pb2
from modelrunner.shim import _rpc
from modelrunner.shim._pb import to_datetime
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from modelrunner.shim.leases import add_resource
from modelrunner.shim.oci import Descriptor
from modelrunner.shim.proto import containerd_content_pb2 as content_pb

__all__ = ["BlobInfo", "blob_info", "list_blobs", "read_blob", "update_blob_labels", "write_blob"]

WRITE_CHUNK = 1024 * 1024
ABORT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int
    labels: Mapping[str, str]
    created_at: dt.datetime | None


def _info(info: Any) -> BlobInfo:
    return BlobInfo(info.digest, info.size, dict(info.labels), to_datetime(info.created_at))


async def blob_info(client: Containerd, digest: str) -> BlobInfo | None:
    """The blob's info, or None if the content store does not have it."""
    try:
        response = await client.unary(
            client.content_stub.Info, content_pb.InfoRequest(digest=digest), f"looking up blob {digest}"
        )
    except NotFound:
        return None
    return _info(response.info)


async def list_blobs(client: Containerd, *filters: str) -> list[BlobInfo]:
    found: list[BlobInfo] = []

    def handle(response: Any) -> None:
        found.extend(_info(i) for i in response.info)

    await _rpc.consume_stream(
        lambda: client.content_stub.List(
            content_pb.ListContentRequest(filters=list(filters)), metadata=client.metadata()
        ),
        handle,
        "listing blobs",
    )
    return found


async def read_blob(client: Containerd, digest: str, *, max_bytes: int) -> bytes:
    """The whole blob, refusing ones over ``max_bytes`` (for manifests and configs).

    Raises:
        NotFound: no such blob.
        InvalidArgument: the blob is larger than ``max_bytes``.
    """
    chunks: list[bytes] = []
    total = 0

    def handle(response: Any) -> None:
        nonlocal total
        total += len(response.data)
        if total > max_bytes:
            raise InvalidArgument(f"reading blob {digest}", f"it is larger than {max_bytes} bytes")
        chunks.append(response.data)

    await _rpc.consume_stream(
        lambda: client.content_stub.Read(
            content_pb.ReadContentRequest(digest=digest), metadata=client.metadata()
        ),
        handle,
        f"reading blob {digest}",
    )
    return b"".join(chunks)


async def update_blob_labels(client: Containerd, digest: str, labels: Mapping[str, str]) -> None:
    """Set (merge) labels on a blob; other labels are left alone."""
    if not labels:
        return
    request = content_pb.UpdateRequest(
        info=content_pb.Info(digest=digest, labels=dict(labels)),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]),
    )
    await client.unary(client.content_stub.Update, request, f"labelling blob {digest}")


async def write_blob(
    client: Containerd,
    descriptor: Descriptor,
    stream: trio.abc.ReceiveStream,
    *,
    labels: Mapping[str, str],
    lease: str,
) -> None:
    """Write a blob from ``stream`` into the content store under ``lease``, labelling it.

    If the store has the blob already, nothing is read from ``stream``: the blob is added to the
    lease (so a pending garbage collection cannot take it) and only the labels are set.
    A checkpoint; cancelling aborts the write and discards the partial blob.

    Raises:
        InvalidArgument: the bytes do not have the descriptor's size or digest.
        ContainerdError: containerd refused the write.
    """
    await add_resource(client, lease, descriptor.digest, "content")
    if await blob_info(client, descriptor.digest) is not None:
        await update_blob_labels(client, descriptor.digest, labels)
        return
    token = trio.lowlevel.current_trio_token()
    ref = f"modelrunner-{descriptor.digest.replace(':', '-')}-{secrets.token_hex(4)}"
    source_error: list[BaseException] = []
    operation = f"writing blob {descriptor.digest}"

    def requests() -> Iterator[content_pb.WriteContentRequest]:
        # Runs on grpc's request-iterator thread. An exception here would only show up as a
        # cancelled call, so remember it and stop; the trio side re-raises it.
        offset = 0
        try:
            while True:
                chunk = trio.from_thread.run(stream.receive_some, WRITE_CHUNK, trio_token=token)
                if not chunk:
                    break
                yield content_pb.WriteContentRequest(
                    action=content_pb.WRITE,
                    ref=ref,
                    total=descriptor.size,
                    expected=descriptor.digest,
                    offset=offset,
                    data=bytes(chunk),
                )
                offset += len(chunk)
        except BaseException as exc:
            source_error.append(exc)
            return
        yield content_pb.WriteContentRequest(
            action=content_pb.COMMIT,
            ref=ref,
            total=descriptor.size,
            expected=descriptor.digest,
            offset=offset,
            labels=dict(labels),
        )

    try:
        await _rpc.consume_stream(
            lambda: client.content_stub.Write(requests(), metadata=client.metadata(lease)),
            lambda _response: None,
            operation,
        )
    except AlreadyExists:
        # Another writer committed the same blob first: the content is what we wanted.
        await update_blob_labels(client, descriptor.digest, labels)
        return
    except FailedPrecondition as exc:
        # containerd's words for a blob whose bytes do not match the descriptor.
        await _abort(client, ref)
        raise InvalidArgument(operation, f"the data does not match the descriptor: {exc.detail}") from exc
    except BaseException:
        with trio.CancelScope(shield=True):
            await _abort(client, ref)
        if source_error:
            raise source_error[0] from None
        raise
    if source_error:
        await _abort(client, ref)
        raise source_error[0]


async def _abort(client: Containerd, ref: str) -> None:
    with trio.move_on_after(ABORT_TIMEOUT_SECONDS), contextlib.suppress(ContainerdError):
        await client.unary(
            client.content_stub.Abort, content_pb.AbortRequest(ref=ref), f"aborting write {ref}"
        )
