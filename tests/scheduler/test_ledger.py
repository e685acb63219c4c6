"""The memory ledger: lending bytes per device like trio's CapacityLimiter lends tokens."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from modelrunner.scheduler import MemoryLedger, WouldNeverFit

GiB = 1 << 30


async def test_lend_and_release() -> None:
    ledger = MemoryLedger({"ram": 4 * GiB, "cuda:0": 8 * GiB})
    ledger.acquire_on_behalf_of_nowait("a", {"ram": GiB, "cuda:0": 6 * GiB})
    assert ledger.available("ram") == 3 * GiB and ledger.available("cuda:0") == 2 * GiB
    with pytest.raises(trio.WouldBlock):
        ledger.acquire_on_behalf_of_nowait("b", {"ram": GiB, "cuda:0": 3 * GiB})
    with pytest.raises(RuntimeError, match="already holds"):
        ledger.acquire_on_behalf_of_nowait("a", {"ram": 1})
    ledger.release_on_behalf_of("a")
    assert ledger.statistics().reserved == {"ram": 0, "cuda:0": 0}
    assert ledger.statistics().peak_reserved == {"ram": GiB, "cuda:0": 6 * GiB}
    with pytest.raises(RuntimeError, match="no loan"):
        ledger.release_on_behalf_of("a")


async def test_never_fits_is_an_error_not_a_wait() -> None:
    ledger = MemoryLedger({"ram": 4 * GiB})
    with pytest.raises(WouldNeverFit) as caught:
        await ledger.acquire_on_behalf_of("big", {"ram": 5 * GiB})
    assert caught.value.needed == {"ram": 5 * GiB}
    with pytest.raises(WouldNeverFit):  # a device without a budget has a budget of 0
        ledger.acquire_on_behalf_of_nowait("gpu", {"cuda:3": 1})
    ledger.acquire_on_behalf_of_nowait("cpu-only", {"ram": GiB, "cuda:3": 0})


async def test_waiters_are_woken_in_fifo_order_and_a_small_one_cannot_jump_a_big_one() -> None:
    ledger = MemoryLedger({"ram": 4 * GiB})
    ledger.acquire_on_behalf_of_nowait("holder", {"ram": 3 * GiB})
    order: list[str] = []

    async def borrow(name: str, size: int) -> None:
        await ledger.acquire_on_behalf_of(name, {"ram": size})
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(borrow, "big", 3 * GiB)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(borrow, "small", GiB)  # would fit now, but big is first in line
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and ledger.statistics().tasks_waiting == 2
        with pytest.raises(trio.WouldBlock):  # nowait respects the line too
            ledger.acquire_on_behalf_of_nowait("sneaky", {"ram": 1})
        ledger.adjust_on_behalf_of("holder", {"ram": 2 * GiB})  # 2 free: still not enough for big
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        ledger.release_on_behalf_of("holder")
        await trio.testing.wait_all_tasks_blocked()
    assert sorted(order) == ["big", "small"]
    assert ledger.statistics().reserved == {"ram": 4 * GiB}


async def test_cancelled_waiter_leaves_the_queue_and_unblocks_the_next() -> None:
    ledger = MemoryLedger({"ram": 4 * GiB})
    ledger.acquire_on_behalf_of_nowait("holder", {"ram": 2 * GiB})
    got: list[str] = []

    async def borrow(name: str, size: int) -> None:
        await ledger.acquire_on_behalf_of(name, {"ram": size})
        got.append(name)

    big_scope = trio.CancelScope()

    async def borrow_big() -> None:
        with big_scope:
            await borrow("big", 4 * GiB)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(borrow_big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(borrow, "small", GiB)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        big_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["small"]
    assert ledger.loan("big") is None and ledger.statistics().tasks_waiting == 0


async def test_adjust_records_reality_even_past_the_budget() -> None:
    ledger = MemoryLedger({"ram": 4 * GiB})
    ledger.acquire_on_behalf_of_nowait("a", {"ram": 3 * GiB})
    ledger.adjust_on_behalf_of("a", {"ram": GiB})
    assert ledger.available("ram") == 3 * GiB
    ledger.adjust_on_behalf_of("a", {"ram": 5 * GiB})
    assert ledger.available("ram") == -GiB
    assert not ledger.fits({"ram": 1})
    ledger.force_on_behalf_of("adopted", {"ram": GiB})
    assert ledger.statistics().reserved == {"ram": 6 * GiB}
    with pytest.raises(RuntimeError):
        ledger.adjust_on_behalf_of("nobody", {"ram": 1})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 5)), max_size=40))
def test_nowait_lending_never_exceeds_the_budget(operations: list[tuple[str, int]]) -> None:
    ledger = MemoryLedger({"ram": 8})
    for borrower, size in operations:
        if ledger.loan(borrower) is not None:
            ledger.release_on_behalf_of(borrower)
        else:
            with contextlib.suppress(trio.WouldBlock):
                ledger.acquire_on_behalf_of_nowait(borrower, {"ram": size})
        stats = ledger.statistics()
        assert 0 <= stats.reserved["ram"] <= 8
        assert stats.reserved["ram"] == sum(loan.get("ram", 0) for loan in stats.borrowers.values())
    assert ledger.statistics().peak_reserved["ram"] <= 8
