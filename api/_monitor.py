"""Watching client connections from outside their tasks: hang-ups mid-request and idle deadlines.

Two things the server must notice about a connection while its task is busy with something else:

* **the client went away mid-request.** A request that waits on an engine must stop when its
  client leaves (Go's net/http cancels the request's context the same way). Watching each client
  socket from a task of its own cost every proxied request a task spawn, two task steps and a
  cancellation on the way out, about a tenth of the daemon's CPU per request. Here a request adds
  its socket to a private epoll set on entry and removes it on exit (two system calls), and one
  task, parked on that set's descriptor, runs only when a watched client actually sent something
  or hung up. Bytes are a pipelined next request: they are handed over and watching stops (HTTP/1.1
  answers in order anyway); end of file or a reset means the client is gone.
* **an idle keep-alive connection outlived its timeout.** A cancel scope with a deadline around
  each wait for the next request costs trio's deadline bookkeeping on every request; instead the
  connection records when it started waiting, and one task sweeps the waiting ones a few times per
  timeout, so a connection is closed between `timeout` and `timeout + sweep_interval` after it
  went idle.
"""

from __future__ import annotations

import math
import os
import select
from collections.abc import Callable

import trio

__all__ = ["ConnectionMonitor"]

_RECEIVE_SIZE = 64 * 1024
_WATCH_EVENTS = select.EPOLLIN | select.EPOLLRDHUP

OnData = Callable[[bytes], None]
"""Called with what the client sent; b"" means it closed or reset the connection."""


class ConnectionMonitor:
    """Hang-up watches and idle deadlines for a server's connections. Run `run()` in its nursery.

    `sweep_interval`: how often idle deadlines are checked (seconds).
    """

    def __init__(self, *, sweep_interval: float = 1.0) -> None:
        if not sweep_interval > 0 or math.isinf(sweep_interval):
            raise ValueError(f"sweep_interval must be a positive number of seconds, not {sweep_interval}")
        self.sweep_interval = sweep_interval
        self._epoll = select.epoll()
        self._watched: dict[int, OnData] = {}
        self._deadlines: dict[object, tuple[float, Callable[[], None]]] = {}

    # -- hang-ups ------------------------------------------------------------------------------

    def watch(self, fd: int, on_data: OnData) -> bool:
        """Call `on_data` once when `fd` becomes readable; False if it cannot be watched.

        The caller must `unwatch(fd)` before the descriptor is closed or watched again.
        """
        if self._epoll.closed:
            return False
        try:
            self._epoll.register(fd, _WATCH_EVENTS)
        except OSError:
            return False  # closed under us, or not pollable: nothing to watch
        self._watched[fd] = on_data
        return True

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd` (a no-op when it already fired)."""
        if self._watched.pop(fd, None) is not None:
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        # Plain try/except, not contextlib.suppress: this runs on every proxied request.
        try:  # noqa: SIM105
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # the descriptor was closed first: the kernel dropped it from the set

    @property
    def watching(self) -> int:
        return len(self._watched)

    def dispatch_ready(self) -> None:
        """Hand what every ready socket has to say to its watcher."""
        for fd, _events in self._epoll.poll(0):
            on_data = self._watched.pop(fd, None)
            self._unregister(fd)
            if on_data is None:
                continue
            try:
                data = os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                # Readiness without bytes (a spurious wake-up): keep watching.
                self.watch(fd, on_data)
                continue
            except OSError:
                data = b""  # reset by the peer
            on_data(data)

    # -- idle deadlines ------------------------------------------------------------------------

    def set_deadline(self, key: object, timeout: float, on_expire: Callable[[], None]) -> None:
        """Call `on_expire` once `timeout` seconds have passed, unless `clear_deadline(key)` first."""
        self._deadlines[key] = (trio.current_time() + timeout, on_expire)

    def clear_deadline(self, key: object) -> None:
        self._deadlines.pop(key, None)

    @property
    def deadlines(self) -> int:
        return len(self._deadlines)

    def expire_due(self) -> None:
        """Fire the deadlines that have passed."""
        now = trio.current_time()
        due = [key for key, (when, _) in self._deadlines.items() if when <= now]
        for key in due:
            _, on_expire = self._deadlines.pop(key)
            on_expire()

    # -- lifetime ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve watches and deadlines until cancelled; closes the epoll set on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep)
                while True:
                    await trio.lowlevel.wait_readable(self._epoll)
                    self.dispatch_ready()
        finally:
            self._watched.clear()
            self._deadlines.clear()
            self._epoll.close()

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(self.sweep_interval)
            if self._deadlines:
                self.expire_due()
