"""Ask an engine on its unix socket whether it is healthy (``GET /health`` answering 200).

Used by re-adoption: only a runner whose engine answers is adopted; anything else is removed.
llama.cpp's server answers 503 while it is still loading a model, which counts as not healthy.
"""

from __future__ import annotations

import os

import httpx
import trio

__all__ = ["HEALTH_PROBE_SECONDS", "probe_health"]

HEALTH_PROBE_SECONDS = 2.0


async def probe_health(socket_path: str | os.PathLike[str], *, path: str = "/health") -> bool:
    """True if an HTTP server on ``socket_path`` answers ``GET path`` with 200 within the probe time.

    Never raises for a missing socket, a refused connection, a timeout or a non-HTTP answer: each of
    those means "not healthy". A checkpoint.
    """
    if not socket_path:
        await trio.lowlevel.checkpoint()
        return False
    transport = httpx.AsyncHTTPTransport(uds=os.fspath(socket_path), retries=0)
    with trio.move_on_after(HEALTH_PROBE_SECONDS):
        try:
            async with httpx.AsyncClient(transport=transport, timeout=HEALTH_PROBE_SECONDS) as client:
                response = await client.get(f"http://engine{path}")
                return response.status_code == 200
        except httpx.HTTPError:
            return False
    return False
