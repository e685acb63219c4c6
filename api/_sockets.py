"""Reading a non-blocking socket directly, waiting through trio only when it is not ready.

trio's stream methods yield to the scheduler after every call that succeeded; on the proxy's hot
path those yields are passes of the run loop between a request's arrival and its forwarding, and
after every streamed chunk. Both the server's client connections (`_http`) and the engine
connections (`_upstream`) read through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["read_when_ready"]


async def read_when_ready(read: Callable[[], bytes], waitable: Any, *, drained: bool) -> bytes:
    """`read()` (a non-blocking read), waiting for `waitable` to be readable when it would block.

    `drained`: the previous read emptied the socket, so the next bytes (the engine's next token,
    the client's next request) are most likely still to come; waiting first saves a failed read,
    a system call and an exception, each time.
    """
    if drained:
        await trio.lowlevel.wait_readable(waitable)
    while True:
        try:
            return read()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(waitable)
