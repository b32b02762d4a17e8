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
from simulator.engine import DailyTraffic
from simulator.world import Device

IntArray = npt.NDArray[np.int64]
ROUTE_CODES: Final = {route: code for code, route in enumerate(ROUTES)}
ID_INFIX: Final = "/d/"
"""Event ids of daily records: ``{iccid}/d/{JST day number}``, as the reference engine writes them."""


class ColumnarDailyTraffic(DailyTraffic):
    """Per SIM and JST day: traffic summed over sessions, held as numpy columns.

    The fast engine plans one device at a time: its rows are gathered while it is planned, and
    :meth:`device_done` sums them per day (keeping, per day, the first row's route, as the
    reference's dict keeps the route of the day's first session) into compact columns. Platform
    messages per hour stay in the inherited dict (few devices send them).
    """

    def __init__(self) -> None:
        """Start empty."""
        super().__init__()
        self.rows: list[tuple[IntArray, ...]] = []
        self.pending: list[tuple[int, int, int, int, int]] = []
        self.columns: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in COLUMNS}

    def add(self, device: Device, day: int, up: int, down: int, stamp: int, route: str, gateway: str) -> None:
        """Add one session's part of a day (one row) of the device being planned."""
        self.devices[device.index] = device
        self.pending.append((day, up, down, stamp, ROUTE_CODES[route]))

    def add_rows(
        self, device: Device, days: IntArray, ups: IntArray, downs: IntArray, stamps: IntArray, route: str
    ) -> None:
        """Add many days' parts at once (one row per element) of the device being planned."""
        self._flush_pending()
        self.devices[device.index] = device
        code = np.full(len(days), ROUTE_CODES[route], dtype=np.int64)
        self.rows.append((days.astype(np.int64), ups.astype(np.int64), downs.astype(np.int64), stamps, code))

    def _flush_pending(self) -> None:
        if self.pending:
            self.rows.append(tuple(np.array(self.pending, dtype=np.int64).T))
            self.pending = []

    def device_done(self, device: Device) -> None:
        """Sum the planned device's rows per day into the columns."""
        self._flush_pending()
        if not self.rows:
            return
        day, up, down, stamp, route = (np.concatenate(column) for column in zip(*self.rows, strict=True))
        self.rows = []
        order = np.argsort(day, kind="stable")  # rows of a day keep the order they came in
        day, up, down, stamp, route = (column[order] for column in (day, up, down, stamp, route))
        first = np.flatnonzero(np.concatenate(([True], day[1:] != day[:-1])))
        up, down = np.add.reduceat(up, first), np.add.reduceat(down, first)
        stamp = np.maximum.reduceat(stamp, first)
        carrying = up + down > 0
        first = first[carrying]
        values = {
            "device": np.full(len(first), device.index, dtype=np.int32),
            "day": day[first].astype(np.int32),
            "up": up[carrying],
            "down": down[carrying],
            "stamp": stamp[carrying].astype(np.int32),
            "route": route[first].astype(np.int8),
        }
        for name, column in values.items():
            self.columns[name].append(column)

    def add_records(
        self, device: IntArray, day: IntArray, up: IntArray, down: IntArray, stamp: IntArray, route: IntArray
    ) -> None:
        """Add records already summed per (SIM, day) — devices whose days are all in this call."""
        values = {"device": device, "day": day, "up": up, "down": down, "stamp": stamp, "route": route}
        for name, column in values.items():
            self.columns[name].append(column.astype(DTYPES[name]))

    def compact(self, devices: list[Any], start_us: int) -> CompactTraffic:
        """The records as a compact ``sim.traffic`` block, in (device, day) order.

        SIM codes are positions in ``devices`` (the engine's devices, in increasing index order).
        Each column is joined and its parts freed in turn, so memory holds the rows about once.
        """
        joined: dict[str, npt.NDArray[Any]] = {}
        for name in COLUMNS:
            parts = self.columns[name]
            joined[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=DTYPES[name])
            parts.clear()
        indexes = np.array([item.index for item in devices], dtype=np.int64)
        position = np.zeros(int(indexes.max(initial=0)) + 1, dtype=np.int32)
        position[indexes] = np.arange(len(indexes), dtype=np.int32)
        return CompactTraffic(
            origin_us=start_us,
            second=joined["stamp"],
            sim=position[joined["device"]],
            up_bytes=joined["up"],
            down_bytes=joined["down"],
            route=joined["route"],
            key=joined["day"],
            iccids=tuple(item.iccid for item in devices),
            accounts=tuple(item.fleet.account for item in devices),
            gateways=tuple(item.fleet.gateway for item in devices),
            id_infix=ID_INFIX,
        )


COLUMNS: Final = ("device", "day", "up", "down", "stamp", "route")
DTYPES: Final = {
    "device": np.int32,
    "day": np.int32,
    "up": np.int64,
    "down": np.int64,
    "stamp": np.int32,
    "route": np.int8,
}
