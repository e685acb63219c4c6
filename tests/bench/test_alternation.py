"""bench.alternation: the A B A B schedule, bounded in rounds and time."""

from __future__ import annotations

import pytest
import trio

from bench.alternation import Arm, alternate, alternation_order


def test_order_strictly_alternates_candidate_then_baseline() -> None:
    order = alternation_order(3)
    assert [arm.value for _, arm in order] == ["A", "B", "A", "B", "A", "B"]
    assert [index for index, _ in order] == [0, 0, 1, 1, 2, 2]


def test_order_needs_a_round() -> None:
    with pytest.raises(ValueError, match="at least 1 round"):
        alternation_order(0)


async def test_alternate_calls_the_arms_in_schedule_order() -> None:
    calls: list[tuple[str, int]] = []

    async def candidate(index: int) -> float:
        calls.append(("A", index))
        await trio.lowlevel.checkpoint()
        return float(index)

    async def baseline(index: int) -> float:
        calls.append(("B", index))
        return 10.0 + index

    paired = await alternate(3, candidate, baseline, time_budget=60)
    assert calls == [(arm.value, index) for index, arm in alternation_order(3)]
    assert paired.candidate == [0.0, 1.0, 2.0]
    assert paired.baseline == [10.0, 11.0, 12.0]
    assert (paired.rounds, paired.planned_rounds, paired.stopped_early) == (3, 3, False)


async def test_time_budget_stops_after_a_complete_round() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def candidate(index: int) -> int:
        now[0] += 4.0  # each arm takes 4 "seconds": the budget of 10 runs out during round 1
        return index

    async def baseline(index: int) -> int:
        now[0] += 4.0
        return index

    paired = await alternate(100, candidate, baseline, time_budget=10, clock=clock)
    assert paired.candidate == [0, 1] and paired.baseline == [0, 1]  # every kept value has its pair
    assert paired.stopped_early and paired.planned_rounds == 100


async def test_at_least_one_round_runs_even_past_the_budget() -> None:
    async def slow(index: int) -> int:
        return index

    paired = await alternate(5, slow, slow, time_budget=1e-9, clock=iter(range(0, 1000, 100)).__next__)
    assert paired.rounds == 1 and paired.stopped_early


async def test_errors_propagate() -> None:
    async def broken(index: int) -> float:
        raise RuntimeError("engine died")

    async def fine(index: int) -> float:
        return 1.0

    with pytest.raises(RuntimeError, match="engine died"):
        await alternate(2, fine, broken, time_budget=60)
    with pytest.raises(ValueError, match="time_budget"):
        await alternate(2, fine, fine, time_budget=0)


def test_arm_values() -> None:
    assert (Arm.CANDIDATE.value, Arm.BASELINE.value) == ("A", "B")
