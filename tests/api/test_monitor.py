"""The server's connection monitor: hang-ups and pipelined bytes over real sockets, idle deadlines."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from modelrunner.api._monitor import ConnectionMonitor


@pytest.fixture
async def monitor() -> AsyncIterator[ConnectionMonitor]:
    monitor = ConnectionMonitor(sweep_interval=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        yield monitor
        nursery.cancel_scope.cancel()


def _pair() -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    server.setblocking(False)
    return server, client


class Calls(list[bytes]):
    """What a watch was told, with an event set on the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.called = trio.Event()

    def append(self, data: bytes) -> None:
        super().append(data)
        self.called.set()


async def _next_call(calls: Calls) -> None:
    with trio.fail_after(5):
        await calls.called.wait()


async def test_hang_up_is_reported_as_empty_bytes(monitor: ConnectionMonitor) -> None:
    server, client = _pair()
    with server, client:
        calls = Calls()
        assert monitor.watch(server.fileno(), calls.append)
        await trio.sleep(0.01)
        assert calls == []  # an idle client says nothing
        client.close()
        await _next_call(calls)
        assert calls == [b""]
        assert monitor.watching == 0


async def test_reset_is_reported_as_a_hang_up(monitor: ConnectionMonitor) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        server.setblocking(False)
        with server:
            calls = Calls()
            assert monitor.watch(server.fileno(), calls.append)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()  # linger 0: a reset, not a FIN
            await _next_call(calls)
            assert calls == [b""]


async def test_pipelined_bytes_are_handed_over_and_watching_stops(monitor: ConnectionMonitor) -> None:
    server, client = _pair()
    with server, client:
        calls = Calls()
        assert monitor.watch(server.fileno(), calls.append)
        client.sendall(b"GET / HTTP/1.1\r\n")
        await _next_call(calls)
        assert calls == [b"GET / HTTP/1.1\r\n"]
        client.close()
        await trio.sleep(0.01)
        assert calls == [b"GET / HTTP/1.1\r\n"]  # one call per watch


async def test_unwatched_socket_is_not_reported_and_can_be_watched_again(monitor: ConnectionMonitor) -> None:
    server, client = _pair()
    with server, client:
        first = Calls()
        second = Calls()
        assert monitor.watch(server.fileno(), first.append)
        monitor.unwatch(server.fileno())
        monitor.unwatch(server.fileno())  # twice is harmless
        assert monitor.watch(server.fileno(), second.append)
        client.close()
        await _next_call(second)
        assert first == [] and second == [b""]


async def test_many_sockets_each_get_their_own_answer(monitor: ConnectionMonitor) -> None:
    pairs = [_pair() for _ in range(20)]
    try:
        calls: dict[int, Calls] = {}
        for index, (server, _) in enumerate(pairs):
            calls[index] = Calls()
            assert monitor.watch(server.fileno(), calls[index].append)
        for index, (_, client) in enumerate(pairs):
            if index % 2:
                client.close()
            else:
                client.sendall(b"x%d" % index)
        for got in calls.values():
            await _next_call(got)
        assert calls == {index: [b"" if index % 2 else b"x%d" % index] for index in range(20)}
    finally:
        for server, client in pairs:
            server.close()
            client.close()


async def test_closed_descriptor_cannot_be_watched(monitor: ConnectionMonitor) -> None:
    server, client = _pair()
    fd = server.fileno()
    server.close()
    client.close()
    assert not monitor.watch(fd, lambda data: None)
    assert monitor.watching == 0


async def test_monitor_refuses_watches_after_it_stopped() -> None:
    monitor = ConnectionMonitor(sweep_interval=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    server, client = _pair()
    with server, client:
        assert not monitor.watch(server.fileno(), lambda data: None)


async def test_deadline_fires_once_after_its_timeout(
    autojump_clock: trio.testing.MockClock, monitor: ConnectionMonitor
) -> None:
    fired: list[float] = []
    start = trio.current_time()
    monitor.set_deadline("conn", 0.05, lambda: fired.append(trio.current_time() - start))
    await trio.sleep(0.2)
    assert len(fired) == 1
    assert 0.05 <= fired[0] <= 0.05 + 0.01  # within one sweep of the timeout
    assert monitor.deadlines == 0


async def test_cleared_or_renewed_deadline_does_not_fire_early(
    autojump_clock: trio.testing.MockClock, monitor: ConnectionMonitor
) -> None:
    fired: list[str] = []
    monitor.set_deadline("cleared", 0.05, lambda: fired.append("cleared"))
    monitor.set_deadline("renewed", 0.05, lambda: fired.append("renewed"))
    monitor.clear_deadline("cleared")
    monitor.clear_deadline("never set")  # harmless
    await trio.sleep(0.03)
    monitor.set_deadline("renewed", 0.2, lambda: fired.append("renewed"))
    await trio.sleep(0.1)
    assert fired == []
    await trio.sleep(0.2)
    assert fired == ["renewed"]


def test_sweep_interval_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sweep_interval"):
            ConnectionMonitor(sweep_interval=bad)
