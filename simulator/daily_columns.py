"""The fast engine's daily traffic records, gathered in numpy columns.

With ``traffic_records = "daily"`` a SIM has one ``sim.traffic`` record per JST day with traffic,
summed over the day's sessions and stamped at the last second of the day's last session. The
reference engine keeps these in a dict of Python lists (:class:`~simulator.engine.DailyTraffic`);
at 10^5 SIMs x 365 days that costs gigabytes and minutes, so the fast engine adds whole arrays of
a device's days at once, sums them per (SIM, day) in one numpy step at the end, and hands the
metering core a :class:`~metering.compact.CompactTraffic` block.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metering.compact import CompactTraffic
from metering.events import ROUTES
from simulator.engine import DailyTraffic, Device

IntArray = npt.NDArray[np.int64]
ROUTE_CODES: Final = {route: code for code, route in enumerate(ROUTES)}
ID_INFIX: Final = "/d/"
"""Event ids of daily records: ``{iccid}/d/{JST day number}``, as the reference engine writes them."""


class ColumnarDailyTraffic(DailyTraffic):
    """Per SIM and JST day: traffic summed over sessions, held as numpy chunks.

    Rows are kept in the order they were added; per (SIM, day) the first row's route is kept, as
    the reference's dict keeps the route of the day's first session. Platform messages per hour
    stay in the inherited dict (few devices send them).
    """

    def __init__(self) -> None:
        """Start empty."""
        super().__init__()
        self.chunks: list[tuple[IntArray, ...]] = []
        self.pending: list[tuple[int, int, int, int, int, int]] = []

    def add(self, device: Device, day: int, up: int, down: int, stamp: int, route: str, gateway: str) -> None:
        """Add one session's part of a day (one row)."""
        self.devices[device.index] = device
        self.pending.append((device.index, day, up, down, stamp, ROUTE_CODES[route]))

    def add_rows(
        self, device: Device, days: IntArray, ups: IntArray, downs: IntArray, stamps: IntArray, route: str
    ) -> None:
        """Add a device's parts of many days at once (one row per element)."""
        self._flush_pending()
        self.devices[device.index] = device
        count = len(days)
        self.chunks.append(
            (
                np.full(count, device.index, dtype=np.int64),
                days.astype(np.int64),
                ups.astype(np.int64),
                downs.astype(np.int64),
                stamps.astype(np.int64),
                np.full(count, ROUTE_CODES[route], dtype=np.int64),
            )
        )

    def _flush_pending(self) -> None:
        if self.pending:
            columns = np.array(self.pending, dtype=np.int64).T
            self.chunks.append(tuple(columns))
            self.pending = []

    def totals(self) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
        """One row per (SIM, day): device index, day, up, down, latest stamp, first route.

        Sorted by (stamp, device, day): the order of the reference engine's log.
        """
        self._flush_pending()
        if not self.chunks:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty, empty, empty
        device, day, up, down, stamp, route = (np.concatenate(column) for column in zip(*self.chunks, strict=True))
        self.chunks = []
        order = np.lexsort((day, device))  # stable: rows of a (device, day) keep the order they came in
        device, day, up, down, stamp, route = (column[order] for column in (device, day, up, down, stamp, route))
        first = np.flatnonzero(np.concatenate(([True], (device[1:] != device[:-1]) | (day[1:] != day[:-1]))))
        device, day, route = device[first], day[first], route[first]
        up, down = np.add.reduceat(up, first), np.add.reduceat(down, first)
        stamp = np.maximum.reduceat(stamp, first)
        order = np.lexsort((day, device, stamp))
        return tuple(column[order] for column in (device, day, up, down, stamp, route))  # type: ignore[return-value]

    def compact(self, devices: list[Any], start_us: int) -> CompactTraffic:
        """The records as a compact ``sim.traffic`` block (SIM codes are device indexes)."""
        device, day, up, down, stamp, route = self.totals()
        carrying = (up + down) > 0
        device, day, up, down, stamp, route = (column[carrying] for column in (device, day, up, down, stamp, route))
        return CompactTraffic(
            ts=start_us + stamp * 1_000_000,
            sim=device.astype(np.int32),
            up_bytes=up,
            down_bytes=down,
            route=route.astype(np.int8),
            key=day,
            iccids=tuple(item.iccid for item in devices),
            accounts=tuple(item.fleet.account for item in devices),
            gateways=tuple(item.fleet.gateway for item in devices),
            id_infix=ID_INFIX,
        )
