"""Bridge grpcio's thread-based calls into trio.

Unary calls use ``Multicallable.future()``: grpc completes the future on its own completion thread and
the done-callback wakes the waiting trio task through the run's token, so no worker thread is held
per call (measured here: about 0.7 ms per Version call). Cancelling the trio scope cancels the RPC.
``grpc.aio`` cannot be used because it needs asyncio's loop.

Streaming calls (Content.Read/Write, Snapshots.List) consume their iterator in one worker thread per
call; cancelling the trio scope calls ``call.cancel()``, which ends the iterator promptly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import grpc
import trio
from modelrunner.shim.errors import from_rpc_error

Metadata = tuple[tuple[str, str], ...]


async def await_future(future: Any, operation: str, *, cancel_on_abort: bool = True) -> Any:
    """Wait for a grpc future from trio and return its result.

    A checkpoint. If the waiting task is cancelled the RPC is cancelled too, unless
    ``cancel_on_abort`` is false (used for a future several tasks share, e.g. a task's Wait).

    Raises:
        ContainerdError: the typed error for the RPC's status.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: Any) -> None:
        # RunFinishedError: the trio run ended first; nobody is waiting any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        if cancel_on_abort:
            future.cancel()
        raise
    return result_or_raise(future, operation)


def result_or_raise(future: Any, operation: str) -> Any:
    """The result of a finished grpc future, or its typed error."""
    try:
        return future.result()
    except grpc.FutureCancelledError as exc:
        raise from_rpc_error(operation, _Cancelled()) from exc
    except grpc.RpcError as exc:
        raise from_rpc_error(operation, exc) from exc


class _Cancelled:
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "call cancelled"


async def unary(
    method: Any,
    request: Any,
    metadata: Metadata,
    operation: str,
    *,
    wait_for_ready: bool = False,
) -> Any:
    """Run a unary RPC; see :func:`await_future` for cancellation and errors."""
    future = method.future(request, metadata=metadata, wait_for_ready=wait_for_ready)
    return await await_future(future, operation)


async def consume_stream(
    start: Callable[[], Any],
    handle: Callable[[Any], None],
    operation: str,
) -> None:
    """Start a streaming call and feed each response to ``handle`` in one worker thread.

    ``start`` returns the grpc call object (an iterator with ``cancel()``); ``handle`` runs in the
    worker thread and may raise to abort the stream. Cancelling the trio scope cancels the call.

    Raises:
        ContainerdError: the typed error for the call's status.
    """
    call = start()
    cancelled = threading.Event()

    def run() -> None:
        try:
            for response in call:
                handle(response)
        except grpc.RpcError as exc:
            if cancelled.is_set():
                return
            raise from_rpc_error(operation, exc) from exc

    try:
        await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    except BaseException:
        cancelled.set()
        call.cancel()
        raise
