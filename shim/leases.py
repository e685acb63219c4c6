"""containerd leases: what a client creates is held by a lease, or it is garbage.

Every lease modelrunner creates expires (``containerd.io/gc.expire``), so even if modelrunner is
killed between creating a resource and recording it, containerd's garbage collector eventually frees
it. Runner leases carry ``io.modelrunner.*`` labels so re-adoption can find strays sooner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import trio
from modelrunner.shim._pb import to_datetime, validate_identifier
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import ContainerdError, NotFound
from modelrunner.shim.proto import containerd_leases_pb2 as leases_pb

__all__ = ["Lease", "add_resource", "create_lease", "delete_lease", "list_leases", "temporary_lease"]

log = logging.getLogger("modelrunner.shim.leases")

GC_EXPIRE_LABEL = "containerd.io/gc.expire"
PURPOSE_LABEL = "io.modelrunner.purpose"  # on temporary leases (imports)
TEMPORARY_LEASE_TTL = dt.timedelta(hours=1)
CLEANUP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    labels: Mapping[str, str]
    created_at: dt.datetime | None


def _expiry(ttl: dt.timedelta) -> str:
    return (dt.datetime.now(dt.UTC) + ttl).strftime("%Y-%m-%dT%H:%M:%SZ")


async def create_lease(
    client: Containerd,
    lease_id: str,
    labels: Mapping[str, str] | None = None,
    *,
    ttl: dt.timedelta | None = None,
) -> Lease:
    """Create a lease; with ``ttl`` it expires (is garbage-collected) after that long.

    Raises:
        AlreadyExists: a lease with that ID exists.
    """
    validate_identifier("lease id", lease_id)
    all_labels = dict(labels or {})
    if ttl is not None:
        all_labels[GC_EXPIRE_LABEL] = _expiry(ttl)
    response = await client.unary(
        client.leases_stub.Create,
        leases_pb.CreateRequest(id=lease_id, labels=all_labels),
        f"creating lease {lease_id}",
    )
    return Lease(response.lease.id, dict(response.lease.labels), to_datetime(response.lease.created_at))


async def delete_lease(
    client: Containerd, lease_id: str, *, sync: bool = False, missing_ok: bool = True
) -> None:
    """Delete a lease. ``sync`` runs garbage collection before returning (slower, but deterministic)."""
    try:
        await client.unary(
            client.leases_stub.Delete,
            leases_pb.DeleteRequest(id=lease_id, sync=sync),
            f"deleting lease {lease_id}",
        )
    except NotFound:
        if not missing_ok:
            raise


async def add_resource(client: Containerd, lease_id: str, resource_id: str, resource_type: str) -> None:
    """Make ``lease`` hold an existing object, e.g. ``("sha256:...", "content")`` or
    ``(chain_id, "snapshots/overlayfs")``, so garbage collection cannot take it while in use.

    Take the reference *before* checking that the object exists: then it cannot vanish in between.
    """
    await client.unary(
        client.leases_stub.AddResource,
        leases_pb.AddResourceRequest(
            id=lease_id, resource=leases_pb.Resource(id=resource_id, type=resource_type)
        ),
        f"adding {resource_type} {resource_id} to lease {lease_id}",
    )


async def list_leases(client: Containerd, *filters: str) -> list[Lease]:
    response = await client.unary(
        client.leases_stub.List, leases_pb.ListRequest(filters=list(filters)), "listing leases"
    )
    return [Lease(lease.id, dict(lease.labels), to_datetime(lease.created_at)) for lease in response.leases]


@contextlib.asynccontextmanager
async def temporary_lease(
    client: Containerd, purpose: str, *, sync_delete: bool = False
) -> AsyncIterator[str]:
    """A lease for the duration of the block (expiring in an hour in case we are killed).

    Deleting it on exit is shielded and bounded, so cancellation does not leak it.
    """
    lease_id = f"modelrunner-{purpose}-{secrets.token_hex(6)}"
    # Never cancel the creation mid-flight: containerd could still create the lease after our
    # delete. Cancellation takes effect right after it instead.
    with trio.CancelScope(shield=True), trio.fail_after(CLEANUP_TIMEOUT_SECONDS):
        await create_lease(client, lease_id, {PURPOSE_LABEL: purpose}, ttl=TEMPORARY_LEASE_TTL)
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
        yield lease_id
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_SECONDS):
            try:
                await delete_lease(client, lease_id, sync=sync_delete)
            except ContainerdError as exc:  # it expires on its own; do not hide the block's outcome
                log.warning("could not delete lease %s (it expires within the hour): %s", lease_id, exc)
