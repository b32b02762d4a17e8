"""Coverage (Art. 44): zones where the radio drops, and the outages of a device's route.

Each zone kind is an on/off process with a mean time between outages and a mean outage length
(exponentially distributed). A device follows a route through zones; its outages are the union of
its zones' outages, drawn from the generator keyed by (seed, SIM) so they are reproducible per SIM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

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


IntArray = npt.NDArray[np.int64]
FOREVER: Final = 2**62
"""An instant after every horizon: "no further outage"."""


def zone_outages(zone: Zone, rng: np.random.Generator, horizon_s: int) -> tuple[IntArray, IntArray]:
    """Outage intervals ``[start, end)`` (whole seconds) of one zone up to ``horizon_s``, drawn in bulk.

    Returns:
        The starts and the ends, as two arrays in time order.
    """
    expected = int(horizon_s / (zone.mean_gap_s + zone.mean_outage_s)) + 1
    count = expected + 4 * int(expected**0.5) + 8
    gaps = rng.exponential(zone.mean_gap_s, count)
    lengths = np.maximum(1.0, rng.exponential(zone.mean_outage_s, count))
    starts = _outage_starts(gaps, lengths)
    while starts[-1] < horizon_s:  # rare: draw more than the margin allowed for
        more_gaps = rng.exponential(zone.mean_gap_s, count)
        more_lengths = np.maximum(1.0, rng.exponential(zone.mean_outage_s, count))
        base = starts[-1] + lengths[-1]
        more_starts = base + np.cumsum(more_gaps) + np.concatenate(([0.0], np.cumsum(more_lengths)[:-1]))
        starts, lengths = np.concatenate((starts, more_starts)), np.concatenate((lengths, more_lengths))
    kept = int(np.searchsorted(starts, horizon_s))  # starts grow: the ones before the horizon are a prefix
    begin = starts[:kept].astype(np.int64)
    ends = starts[:kept]
    ends += lengths[:kept]  # starts are not needed any more: their buffer takes the ends
    finish = np.minimum(ends.astype(np.int64), horizon_s)
    valid = finish > begin
    if valid.all():
        return begin, finish
    return begin[valid], finish[valid]


def _outage_starts(gaps: npt.NDArray[np.float64], lengths: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Start of each outage: the gaps before it plus the outages before it (in that order of summing)."""
    starts = np.cumsum(gaps)
    before = np.zeros(len(lengths))
    np.cumsum(lengths[:-1], out=before[1:])
    starts += before
    return starts


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of intervals, sorted and without overlaps (the obvious reference of :func:`merge_arrays`)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def merge_arrays(starts: IntArray, ends: IntArray) -> tuple[IntArray, IntArray]:
    """The union of intervals ``[starts[i], ends[i])``, vectorised; touching intervals join, as in :func:`merge`."""
    if not len(starts):
        return starts.astype(np.int64), ends.astype(np.int64)
    order = np.lexsort((ends, starts))
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    opens = np.ones(len(starts), dtype=bool)
    opens[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(opens)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return starts[first], reach[last]


def route_outages(route: tuple[str, ...], seed: int, sim: int, horizon_s: int) -> Outages:
    """The outages of a device on ``route`` (zone names), keyed by (seed, SIM)."""
    if not route:
        return NO_OUTAGES
    drawn = [
        zone_outages(ZONES[name], keyed_generator(seed, STREAM_COVERAGE, sim, position), horizon_s)
        for position, name in enumerate(route)
    ]
    if len(drawn) == 1:
        return Outages(*drawn[0])
    starts, ends = merge_arrays(
        np.concatenate([part[0] for part in drawn]), np.concatenate([part[1] for part in drawn])
    )
    return Outages(starts, ends)


@dataclass(frozen=True, eq=False)
class Outages:
    """A device's outage intervals ``[starts[i], ends[i])``, sorted and disjoint, with a fast look-up.

    Attributes:
        starts: Outage starts (scenario seconds).
        ends: Outage ends.
    """

    starts: IntArray
    ends: IntArray

    @classmethod
    def of(cls, intervals: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> Outages:
        """Outages from ``(start, end)`` pairs (sorted and disjoint)."""
        return cls(
            np.array([start for start, _ in intervals], dtype=np.int64),
            np.array([end for _, end in intervals], dtype=np.int64),
        )

    def __eq__(self, other: object) -> bool:
        """Same intervals."""
        return (
            isinstance(other, Outages)
            and np.array_equal(self.starts, other.starts)
            and np.array_equal(self.ends, other.ends)
        )

    def __hash__(self) -> int:
        """Hash of the intervals."""
        return hash((self.starts.tobytes(), self.ends.tobytes()))

    @property
    def intervals(self) -> list[tuple[int, int]]:
        """The intervals as ``(start, end)`` pairs."""
        return list(zip(self.starts.tolist(), self.ends.tolist(), strict=True))

    def state_at(self, now: int) -> tuple[bool, int]:
        """Whether ``now`` is inside an outage, and when that changes next.

        Returns:
            ``(True, end of the outage)`` or ``(False, start of the next outage, or 2**62)``.
        """
        if not len(self.starts):
            return False, FOREVER
        index = int(np.searchsorted(self.starts, now, side="right")) - 1
        if index >= 0 and now < self.ends[index]:
            return True, int(self.ends[index])
        following = index + 1
        return False, int(self.starts[following]) if following < len(self.starts) else FOREVER

    def total_seconds(self) -> int:
        """Seconds without coverage in all."""
        return int((self.ends - self.starts).sum())


NO_OUTAGES: Final = Outages(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
"""A device always in coverage."""
