"""Admission planning: may a model load now, and whom must it displace? Pure: values in, plan out.

The scheduler calls ``plan_admission`` once per queued load, in arrival order, inside one synchronous
pass (nothing awaits while plans are made, so no lock is needed). Each plan says:

* ``start``: the load may begin now. Memory that is free now, or that runners already stopping will
  return, plus the idle runners listed in ``evict``, covers the estimate on every device.
* otherwise the load waits. The first waiting load (the head of the queue) may act to make room: it
  evicts idle runners (``evict``), asks busy ones to drain (``drain``: finish in-flight requests, take
  no new ones, then stop) and names a time (``wake_at``) at which protected runners lose their
  protection and the pass must run again.

Whatever a load counts on is *claimed*: ``remaining`` is the memory left for loads behind it, and
``claimed`` lists the runners it will displace, which later loads may not also count on. So a small
model may backfill around a big one that waits, but never with memory the big one is waiting for
(FIFO fairness without head-of-line blocking of loads that do not compete).

Which runners go first (cheapest to lose first):

1. idle runners past their protection, keep-alive ``-1`` ones after the others, least recently used
   first;
2. idle runners still protected (resident for less than the minimum residency and used within the
   idle grace), soonest unprotected first: the load waits for them;
3. busy runners past their minimum residency (already draining ones first): drained;
4. busy runners still within their minimum residency: drained once it ends.

A runner with requests in flight is never stopped by admission; it is drained, and stops only once
its last request is done. The minimum residency is what stops interleaved traffic for several models
from reloading on every request: a freshly loaded model serves its queued and incoming requests for
at least that long before it can be swapped out, unless it falls idle for longer than the idle grace.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["AdmissionPlan", "Resident", "plan_admission"]


class _Tier(enum.IntEnum):
    IDLE_EVICTABLE = 0
    IDLE_PINNED = 1
    IDLE_PROTECTED = 2
    BUSY_DRAINABLE = 3
    BUSY_PROTECTED = 4


@dataclass(frozen=True)
class Resident:
    """A loaded runner as admission sees it."""

    key: Hashable
    holds: Mapping[str, int]
    """Its ledger loan, bytes per device."""
    busy: bool
    """Requests in flight."""
    protected_until: float
    """Before this time it may not be evicted or drained (minimum residency / idle grace)."""
    last_used: float
    pinned: bool = False
    """keep_alive -1: displaced only after every other idle runner."""
    draining: bool = False


@dataclass(frozen=True)
class AdmissionPlan:
    start: bool
    evict: tuple[Hashable, ...] = ()
    drain: tuple[Hashable, ...] = ()
    claimed: tuple[Hashable, ...] = ()
    remaining: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    wake_at: float | None = None
    coverable: bool = True
    """False if even displacing every resident would not make room (memory is held by loads that
    are still starting, or overcommitted): wait for the next release."""


def _fits(need: Mapping[str, int], available: Mapping[str, int]) -> bool:
    return all(size <= 0 or size <= available.get(device, 0) for device, size in need.items())


def _plus(available: Mapping[str, int], residents: Iterable[Resident]) -> dict[str, int]:
    total = dict(available)
    for resident in residents:
        for device, size in resident.holds.items():
            total[device] = total.get(device, 0) + size
    return total


def _minus(available: Mapping[str, int], need: Mapping[str, int]) -> dict[str, int]:
    total = dict(available)
    for device, size in need.items():
        total[device] = total.get(device, 0) - size
    return total


def _tier(resident: Resident, now: float) -> _Tier:
    protected = resident.protected_until > now and not resident.draining
    if resident.busy:
        return _Tier.BUSY_PROTECTED if protected else _Tier.BUSY_DRAINABLE
    if protected:
        return _Tier.IDLE_PROTECTED
    return _Tier.IDLE_PINNED if resident.pinned else _Tier.IDLE_EVICTABLE


def _order(resident: Resident, now: float) -> tuple[float, ...]:
    tier = _tier(resident, now)
    if tier in (_Tier.IDLE_PROTECTED, _Tier.BUSY_PROTECTED):
        return (tier, resident.protected_until, resident.last_used)
    if tier is _Tier.BUSY_DRAINABLE:
        return (tier, 0.0 if resident.draining else 1.0, resident.last_used)
    return (tier, resident.last_used)


def plan_admission(
    need: Mapping[str, int],
    available: Mapping[str, int],
    residents: Sequence[Resident],
    now: float,
) -> AdmissionPlan:
    """Plan one load of ``need`` bytes per device.

    ``available`` is what the ledger has free plus what stopping runners will return, minus what
    earlier loads claimed (it may be negative). ``residents`` are the loaded runners not claimed by
    an earlier load.
    """
    if _fits(need, available):
        return AdmissionPlan(start=True, remaining=MappingProxyType(_minus(available, need)))
    short = {d for d, size in need.items() if size > 0 and size > available.get(d, 0)}
    helpful = [r for r in residents if any(r.holds.get(d, 0) > 0 for d in short)]
    helpful.sort(key=lambda r: _order(r, now))
    chosen: list[Resident] = []
    for resident in helpful:
        if _fits(need, _plus(available, chosen)):
            break
        still_short = {d for d in short if need[d] > _plus(available, chosen).get(d, 0)}
        if any(resident.holds.get(d, 0) > 0 for d in still_short):
            chosen.append(resident)
    if not _fits(need, _plus(available, chosen)):
        # Memory is held by something admission may not displace (loads still starting, or an
        # overcommit): claim what is there so later loads cannot take it, and wait for a release.
        return AdmissionPlan(
            start=False, coverable=False, remaining=MappingProxyType(_minus(available, need))
        )
    # Drop runners the greedy pass took that turned out unnecessary, costliest first.
    for resident in sorted(chosen, key=lambda r: _order(r, now), reverse=True):
        rest = [r for r in chosen if r is not resident]
        if _fits(need, _plus(available, rest)):
            chosen = rest
    remaining = MappingProxyType(_minus(_plus(available, chosen), need))
    tiers = {id(r): _tier(r, now) for r in chosen}
    evict = tuple(r.key for r in chosen if tiers[id(r)] in (_Tier.IDLE_EVICTABLE, _Tier.IDLE_PINNED))
    claimed = tuple(r.key for r in chosen)
    if len(evict) == len(chosen):
        return AdmissionPlan(start=True, evict=evict, claimed=claimed, remaining=remaining)
    drain = tuple(r.key for r in chosen if tiers[id(r)] is _Tier.BUSY_DRAINABLE)
    waiting_tiers = (_Tier.IDLE_PROTECTED, _Tier.BUSY_PROTECTED)
    protected = [r.protected_until for r in chosen if tiers[id(r)] in waiting_tiers]
    return AdmissionPlan(
        start=False,
        evict=evict,
        drain=drain,
        claimed=claimed,
        remaining=remaining,
        wake_at=min(protected) if protected else None,
    )
