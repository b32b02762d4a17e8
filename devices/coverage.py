"""Coverage (Art. 44): zones where the radio drops, and the outages of a device's route.

Each zone kind is an on/off process with a mean time between outages and a mean outage length
(exponentially distributed). A device follows a route through zones; its outages are the union of
its zones' outages, drawn from the generator keyed by (seed, SIM) so they are reproducible per SIM.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Final

import numpy as np

from devices.keyed_random import STREAM_COVERAGE, keyed_generator


@dataclass(frozen=True, slots=True)
class Zone:
    """A kind of place with no radio: mean seconds between outages, mean outage seconds."""

    name: str
    mean_gap_s: float
    mean_outage_s: float


ZONES: Final[dict[str, Zone]] = {
    zone.name: zone
    for zone in (
        Zone("tunnel", 57 * 60, 3 * 60),
        Zone("underground", 57 * 60, 3 * 60),
        Zone("car_park", 6 * 3600, 20 * 60),
        Zone("building_shadow", 3 * 3600, 5 * 60),
        Zone("mountain", 24 * 3600, 2 * 3600),
        Zone("sea", 7 * 24 * 3600, 12 * 3600),
    )
}
"""The zone kinds of Art. 44 and their default on/off parameters."""


def zone_outages(zone: Zone, rng: np.random.Generator, horizon_s: int) -> list[tuple[int, int]]:
    """Outage intervals ``[start, end)`` (whole seconds) of one zone up to ``horizon_s``, drawn in bulk."""
    expected = int(horizon_s / (zone.mean_gap_s + zone.mean_outage_s)) + 1
    count = expected + 4 * int(expected**0.5) + 8
    gaps = rng.exponential(zone.mean_gap_s, count)
    lengths = np.maximum(1.0, rng.exponential(zone.mean_outage_s, count))
    starts = np.cumsum(gaps) + np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
    while starts[-1] < horizon_s:  # rare: draw more than the margin allowed for
        more_gaps = rng.exponential(zone.mean_gap_s, count)
        more_lengths = np.maximum(1.0, rng.exponential(zone.mean_outage_s, count))
        base = starts[-1] + lengths[-1]
        more_starts = base + np.cumsum(more_gaps) + np.concatenate(([0.0], np.cumsum(more_lengths)[:-1]))
        starts, lengths = np.concatenate((starts, more_starts)), np.concatenate((lengths, more_lengths))
    keep = starts < horizon_s
    begin = starts[keep].astype(np.int64)
    finish = np.minimum(horizon_s, (starts[keep] + lengths[keep]).astype(np.int64))
    valid = finish > begin
    return list(zip(begin[valid].tolist(), finish[valid].tolist(), strict=True))


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of intervals, sorted and without overlaps."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def route_outages(route: tuple[str, ...], seed: int, sim: int, horizon_s: int) -> Outages:
    """The outages of a device on ``route`` (zone names), keyed by (seed, SIM)."""
    intervals: list[tuple[int, int]] = []
    for position, name in enumerate(route):
        rng = keyed_generator(seed, STREAM_COVERAGE, sim, position)
        intervals.extend(zone_outages(ZONES[name], rng, horizon_s))
    return Outages(tuple(merge(intervals)))


@dataclass(frozen=True)
class Outages:
    """A device's outage intervals, with a fast "where am I" look-up."""

    intervals: tuple[tuple[int, int], ...]

    def state_at(self, now: int) -> tuple[bool, int]:
        """Whether ``now`` is inside an outage, and when that changes next.

        Returns:
            ``(True, end of the outage)`` or ``(False, start of the next outage, or 2**62)``.
        """
        index = bisect.bisect_right(self.intervals, (now, 2**62)) - 1
        if index >= 0 and now < self.intervals[index][1]:
            return True, self.intervals[index][1]
        following = index + 1
        return False, self.intervals[following][0] if following < len(self.intervals) else 2**62

    def total_seconds(self) -> int:
        """Seconds without coverage in all."""
        return sum(end - start for start, end in self.intervals)
