"""The memory ledger: bytes per device, lent to named borrowers, shaped like trio's CapacityLimiter.

A borrower (the scheduler uses a runner key) holds at most one loan, a mapping device -> bytes. A loan
is made only when every device it names has room; otherwise ``acquire_on_behalf_of`` waits in a fair
FIFO queue (a later, smaller request never jumps a waiting one, so a big model cannot starve), and
leaves that queue at once when cancelled. ``adjust_on_behalf_of`` corrects a loan to what the engine
measurably uses; it records reality even if that overcommits a device, because refusing to know
about memory that is already in use would only hide it. ``statistics()`` returns a frozen snapshot,
including the highest reservation ever seen per device, which tests and metrics compare with the
budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

__all__ = ["LedgerStatistics", "MemoryLedger", "WouldNeverFit"]


class WouldNeverFit(ValueError):
    """A loan larger than a device's whole budget: waiting could never help."""

    def __init__(self, needed: Mapping[str, int], budget: Mapping[str, int]) -> None:
        self.needed = dict(needed)
        self.budget = dict(budget)
        parts = ", ".join(f"{d}: {needed[d]} > {budget.get(d, 0)}" for d in sorted(needed))
        super().__init__(f"loan exceeds the whole budget ({parts})")


@dataclass(frozen=True)
class LedgerStatistics:
    budget: Mapping[str, int]
    reserved: Mapping[str, int]
    available: Mapping[str, int]
    """budget - reserved; negative where corrections or adopted runners overcommit a device."""
    peak_reserved: Mapping[str, int]
    """Highest reserved total per device since the ledger was created."""
    borrowers: Mapping[Hashable, Mapping[str, int]]
    tasks_waiting: int


class MemoryLedger:
    """Per-device byte budget lent on behalf of borrowers.

    Devices are strings (``"ram"``, GPU ids). A device absent from the budget has a budget of 0, so a
    loan naming it can never be made (``WouldNeverFit``), unless its amount there is 0.
    """

    def __init__(self, budget: Mapping[str, int]) -> None:
        for device, size in budget.items():
            if size < 0:
                raise ValueError(f"negative budget for {device!r}: {size}")
        self._budget = dict(budget)
        self._reserved: dict[str, int] = dict.fromkeys(self._budget, 0)
        self._peak: dict[str, int] = dict.fromkeys(self._budget, 0)
        self._loans: dict[Hashable, dict[str, int]] = {}
        self._waiters: OrderedDict[trio.lowlevel.Task, tuple[Hashable, dict[str, int], trio.Event]] = (
            OrderedDict()
        )

    # -- queries -----------------------------------------------------------------------------------

    @property
    def budget(self) -> Mapping[str, int]:
        return MappingProxyType(self._budget)

    def reserved(self, device: str) -> int:
        return self._reserved.get(device, 0)

    def available(self, device: str) -> int:
        return self._budget.get(device, 0) - self._reserved.get(device, 0)

    def loan(self, borrower: Hashable) -> Mapping[str, int] | None:
        loan = self._loans.get(borrower)
        return None if loan is None else MappingProxyType(loan)

    def fits(self, amounts: Mapping[str, int]) -> bool:
        """Whether a loan of ``amounts`` could be made right now."""
        return all(size <= 0 or size <= self.available(device) for device, size in amounts.items())

    def never_fits(self, amounts: Mapping[str, int]) -> dict[str, int]:
        """The devices (with amounts) where ``amounts`` exceeds the whole budget; empty if none."""
        return {d: size for d, size in amounts.items() if size > 0 and size > self._budget.get(d, 0)}

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(
            budget=MappingProxyType(dict(self._budget)),
            reserved=MappingProxyType(dict(self._reserved)),
            available=MappingProxyType({d: self.available(d) for d in self._budget}),
            peak_reserved=MappingProxyType(dict(self._peak)),
            borrowers=MappingProxyType({b: MappingProxyType(dict(loan)) for b, loan in self._loans.items()}),
            tasks_waiting=len(self._waiters),
        )

    # -- lending -----------------------------------------------------------------------------------

    def acquire_on_behalf_of_nowait(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        """Lend ``amounts`` to ``borrower`` now.

        Raises:
            RuntimeError: ``borrower`` already holds a loan (like CapacityLimiter's double borrow).
            WouldNeverFit: ``amounts`` exceeds a device's whole budget.
            trio.WouldBlock: no room now, or earlier callers are already waiting (FIFO fairness).
        """
        self._check_new_loan(borrower, amounts)
        if self._waiters or not self.fits(amounts):
            raise trio.WouldBlock
        self._lend(borrower, amounts)

    async def acquire_on_behalf_of(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        """Lend ``amounts`` to ``borrower``, waiting in FIFO order until every device has room.

        A checkpoint. Cancellation while waiting leaves the queue at once and lends nothing.

        Raises:
            RuntimeError: ``borrower`` already holds a loan or is already waiting.
            WouldNeverFit: ``amounts`` exceeds a device's whole budget.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.acquire_on_behalf_of_nowait(borrower, amounts)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        if any(waiting_borrower == borrower for waiting_borrower, _, _ in self._waiters.values()):
            raise RuntimeError(f"{borrower!r} is already waiting for a loan")
        granted = trio.Event()
        self._waiters[task] = (borrower, dict(amounts), granted)
        try:
            await granted.wait()
        except BaseException:
            if task in self._waiters:
                # Cancelled while still queued: leave, and let whoever was behind us try again.
                del self._waiters[task]
                self._wake_waiters()
            elif granted.is_set() and borrower in self._loans:
                # Granted in the same instant we were cancelled: give it back rather than leak it.
                self.release_on_behalf_of(borrower)
            raise

    def adjust_on_behalf_of(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        """Replace ``borrower``'s loan with ``amounts`` (a correction to measured use).

        May overcommit a device: the bytes are in use whether or not the ledger admits it.

        Raises:
            RuntimeError: ``borrower`` holds no loan.
        """
        if borrower not in self._loans:
            raise RuntimeError(f"{borrower!r} holds no loan to adjust")
        self._return(borrower)
        self._lend(borrower, amounts)
        self._wake_waiters()

    def force_on_behalf_of(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        """Record memory already in use (a re-adopted runner), even past the budget.

        Raises:
            RuntimeError: ``borrower`` already holds a loan.
        """
        if borrower in self._loans:
            raise RuntimeError(f"{borrower!r} already holds a loan")
        self._lend(borrower, amounts)

    def release_on_behalf_of(self, borrower: Hashable) -> None:
        """Return ``borrower``'s loan and wake waiters that now fit.

        Raises:
            RuntimeError: ``borrower`` holds no loan.
        """
        if borrower not in self._loans:
            raise RuntimeError(f"{borrower!r} holds no loan to release")
        self._return(borrower)
        self._wake_waiters()

    def set_budget(self, budget: Mapping[str, int]) -> None:
        """Change the budget (e.g. a device detected late); existing loans stay."""
        self._budget = dict(budget)
        for device in self._budget:
            self._reserved.setdefault(device, 0)
            self._peak.setdefault(device, 0)
        self._wake_waiters()

    # -- internals ---------------------------------------------------------------------------------

    def _check_new_loan(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        if borrower in self._loans:
            raise RuntimeError(f"{borrower!r} already holds a loan; release it first")
        if any(size < 0 for size in amounts.values()):
            raise ValueError(f"negative loan for {borrower!r}: {dict(amounts)}")
        too_big = self.never_fits(amounts)
        if too_big:
            raise WouldNeverFit(too_big, self._budget)

    def _lend(self, borrower: Hashable, amounts: Mapping[str, int]) -> None:
        loan = {device: size for device, size in amounts.items() if size > 0}
        self._loans[borrower] = loan
        for device, size in loan.items():
            self._reserved[device] = self._reserved.get(device, 0) + size
            self._peak[device] = max(self._peak.get(device, 0), self._reserved[device])

    def _return(self, borrower: Hashable) -> None:
        for device, size in self._loans.pop(borrower).items():
            self._reserved[device] -= size

    def _wake_waiters(self) -> None:
        # Strict FIFO: stop at the first waiter that does not fit, so it is not starved by smaller
        # loans behind it (CapacityLimiter wakes in order for the same reason).
        while self._waiters:
            task, (borrower, amounts, granted) = next(iter(self._waiters.items()))
            if not self.fits(amounts):
                return
            del self._waiters[task]
            self._lend(borrower, amounts)
            granted.set()

    def waiting_borrowers(self) -> Iterable[Hashable]:
        return [borrower for borrower, _, _ in self._waiters.values()]
