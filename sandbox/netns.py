"""Prepared network namespaces, for the engines that must listen on TCP (pyroute2).

By default an engine needs nothing here: runc gives a container a fresh network namespace with only
``lo``, up, and the engine talks over a Unix socket in ``/run/engine``. A backend that can only serve
on TCP gets a *prepared* namespace instead, created here before the container and passed as
``SandboxRequest.netns_path``: it holds ``lo`` (127.0.0.1 and ::1), up, and nothing else, so the
engine can listen on loopback and the daemon reaches it by entering the namespace. runc leaves a
namespace passed by path as it is, which is why ``lo`` must be raised here.

All functions block briefly (netlink; creating a namespace forks). :func:`open_loopback_netns` runs
them in worker threads.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from modelrunner.sandbox.errors import NetnsError
from pyroute2 import IPRoute, netns

__all__ = [
    "NETNS_RUN_DIR",
    "NetInterface",
    "create_loopback_netns",
    "netns_interfaces",
    "netns_path",
    "open_loopback_netns",
    "remove_netns",
]

NETNS_RUN_DIR = "/var/run/netns"  # where `ip netns` and pyroute2 keep named namespaces
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class NetInterface:
    name: str
    up: bool
    addresses: tuple[str, ...]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise NetnsError(f"network namespace name {name!r} must be 1-63 letters, digits, '_', '.' or '-'")
    return name


def netns_path(name: str) -> str:
    """Where the named namespace lives (the path to pass as ``SandboxRequest.netns_path``)."""
    return os.path.join(NETNS_RUN_DIR, _check_name(name))


def create_loopback_netns(name: str) -> str:
    """Create the named namespace with ``lo`` up and no other interface; return its path (blocking).

    Raises:
        NetnsError: the name is taken or invalid, or the kernel refused (not root).
    """
    path = netns_path(name)
    if os.path.exists(path):
        raise NetnsError(
            f"network namespace {name!r} already exists at {path}; remove it or pick another name"
        )
    try:
        netns.create(name)
    except OSError as exc:
        raise NetnsError(f"cannot create network namespace {name!r}: {exc.strerror or exc}") from exc
    try:
        with IPRoute(netns=name, flags=0) as ipr:  # flags=0: never create a namespace by accident
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")
    except Exception as exc:  # pyroute2 raises NetlinkError, OSError or ValueError here
        remove_netns(name)
        raise NetnsError(f"cannot bring up lo in network namespace {name!r}: {exc}") from exc
    return path


def remove_netns(name: str) -> None:
    """Remove the named namespace; a namespace that is already gone is fine (blocking).

    Processes still inside keep the namespace alive until they exit; only the name goes.

    Raises:
        NetnsError: the kernel refused to remove it.
    """
    path = netns_path(name)
    if not os.path.exists(path):
        return
    try:
        netns.remove(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NetnsError(f"cannot remove network namespace {name!r}: {exc.strerror or exc}") from exc


def netns_interfaces(path: str) -> tuple[NetInterface, ...]:
    """The interfaces of the namespace at ``path`` (a named one, or ``/proc/<pid>/ns/net``; blocking).

    Raises:
        NetnsError: ``path`` is not a network namespace.
    """
    if not os.path.exists(path):
        raise NetnsError(f"no network namespace at {path}")
    try:
        with IPRoute(netns=path, flags=0) as ipr:
            addresses: dict[int, list[str]] = {}
            for addr in ipr.get_addr():
                addresses.setdefault(addr["index"], []).append(str(addr.get("IFA_ADDRESS")))
            return tuple(
                NetInterface(
                    name=str(link.get("ifname")),
                    up=link.get("state") == "up",
                    addresses=tuple(sorted(addresses.get(link["index"], []))),
                )
                for link in ipr.get_links()
            )
    except Exception as exc:  # pyroute2 raises NetlinkError, OSError or ValueError here
        raise NetnsError(f"cannot inspect network namespace {path}: {exc}") from exc


@asynccontextmanager
async def open_loopback_netns(name: str) -> AsyncIterator[str]:
    """``async with open_loopback_netns(name) as path``: a prepared namespace for one runner.

    The namespace is removed on exit, in a shielded scope, even when the block is cancelled.

    Raises:
        NetnsError: see :func:`create_loopback_netns`.
    """
    path = await trio.to_thread.run_sync(create_loopback_netns, name)
    try:
        yield path
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await trio.to_thread.run_sync(remove_netns, name)
