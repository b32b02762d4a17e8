"""Gateway traffic policies over a session's bursts: mass-traffic interruption and traffic control.

Both are pure functions of the bursts (see :class:`devices.traffic.Bursts`):

* Art. 49(2): a session whose volume within a sliding window exceeds the threshold is cut at the
  burst that crossed it; so a cut session carried at most the threshold plus one window's volume.
* Traffic control: a monthly quota per SIM; once it is used up, every further burst is capped at
  what the bandwidth limit lets through in one minute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class MassTrafficPolicy:
    """Cut a session when more than ``threshold_bytes`` flow within ``window_s`` seconds (Art. 49(2))."""

    threshold_bytes: int
    window_s: int

    def cut_at(self, times: IntArray, volumes: IntArray) -> int | None:
        """Index of the burst at which the session is cut, or ``None``."""
        if not len(times):
            return None
        total = np.cumsum(volumes)
        left = np.searchsorted(times, times - self.window_s, side="right")
        before = np.where(left > 0, total[np.maximum(left - 1, 0)], 0)
        over = np.flatnonzero(total - before > self.threshold_bytes)
        return int(over[0]) if len(over) else None


@dataclass(frozen=True, slots=True)
class TrafficControl:
    """A monthly quota per SIM, then a bandwidth limit."""

    quota_bytes: int
    throttle_kbps: int

    @property
    def burst_cap(self) -> int:
        """Bytes one burst may carry once the quota is used up (a minute at the limit)."""
        return self.throttle_kbps * 1000 // 8 * 60

    def apply(self, volumes: IntArray, used_before: int) -> tuple[IntArray, bool]:
        """Cap the bursts that come after the quota is used up.

        Args:
            volumes: Bytes per burst, in time order, within one month.
            used_before: Bytes the SIM already used this month.

        Returns:
            The allowed bytes per burst, and whether any burst was throttled.
        """
        running = used_before + np.cumsum(volumes) - volumes
        over = running >= self.quota_bytes
        capped = np.where(over, np.minimum(volumes, self.burst_cap), volumes)
        return capped, bool(np.any(capped < volumes))
