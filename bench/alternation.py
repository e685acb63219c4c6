"""Run a candidate and its baseline in alternation: A B A B ...

Machines drift (other tenants, thermal state, page cache), so a candidate measured for a minute and
then its baseline for a minute compare two different machines. Alternating in short rounds puts
both under the same conditions, and each round gives one paired ratio.

The schedule is pure (:func:`alternation_order`); :func:`alternate` drives two async measurement
callables along it, bounded in rounds and in time. Each callable receives the round index and
returns one value (a float or anything the scenario summarises later).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Arm", "Paired", "alternate", "alternation_order"]

T = TypeVar("T")


class Arm(enum.Enum):
    """Which side of a comparison a measurement belongs to."""

    CANDIDATE = "A"
    """modelrunner: the thing being measured."""
    BASELINE = "B"
    """What the candidate is compared against (llama-server directly, skopeo, a bare process)."""


def alternation_order(rounds: int) -> list[tuple[int, Arm]]:
    """The strict A B A B ... schedule: ``[(0, A), (0, B), (1, A), (1, B), ...]``.

    Raises:
        ValueError: ``rounds`` is below 1.
    """
    if rounds < 1:
        raise ValueError(f"a comparison needs at least 1 round, not {rounds}")
    return [(index, arm) for index in range(rounds) for arm in (Arm.CANDIDATE, Arm.BASELINE)]


@dataclass
class Paired(Generic[T]):
    """One value per completed round for each arm (``candidate[i]`` and ``baseline[i]`` ran back to
    back), plus whether the time budget cut the comparison short."""

    candidate: list[T] = field(default_factory=list)
    baseline: list[T] = field(default_factory=list)
    planned_rounds: int = 0
    stopped_early: bool = False

    @property
    def rounds(self) -> int:
        return min(len(self.candidate), len(self.baseline))


async def alternate(
    rounds: int,
    candidate: Callable[[int], Awaitable[T]],
    baseline: Callable[[int], Awaitable[T]],
    *,
    time_budget: float,
    clock: Callable[[], float] = time.monotonic,
) -> Paired[T]:
    """Measure ``candidate`` and ``baseline`` along :func:`alternation_order`.

    After each complete round, stops early once ``time_budget`` seconds have passed since the start
    (so every kept value has its pair); at least one round always runs. A checkpoint only as far as
    the callables are; an exception from either propagates and discards the partial result.

    Raises:
        ValueError: ``rounds`` is below 1 or ``time_budget`` is not positive.
    """
    if time_budget <= 0:
        raise ValueError(f"time_budget must be positive, not {time_budget}")
    result: Paired[T] = Paired(planned_rounds=rounds)
    started = clock()
    for index, arm in alternation_order(rounds):
        if arm is Arm.CANDIDATE:
            if index > 0 and clock() - started >= time_budget:
                result.stopped_early = True
                break
            result.candidate.append(await candidate(index))
        else:
            result.baseline.append(await baseline(index))
    return result
