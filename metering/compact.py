"""Event logs too large for one Python object per event: ``sim.traffic`` records in columns.

A year of daily traffic records of 10^5 SIMs is 3.6 x 10^7 events. As :class:`~metering.events.Event`
objects they would take gigabytes and most of a run's time; as columns they take a few hundred
megabytes and go to the store in one SQL statement (or, for the simulator's own metering, stay numbers
behind a view of the store's events).

:class:`CompactTraffic` holds ``sim.traffic`` events as numbers per row (time, SIM code, bytes,
route code, id key) and a small table per SIM (ICCID, account, gateway); the event id of a row is
``{iccid}{id_infix}{key}``. :class:`CompactLog` is an event log made of ordinary events and such a
block: it iterates, counts, writes and rates like a list of events, and is one when it is small.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from metering.eventlog import ARROW_SCHEMA, event_line, event_sim, events_to_arrow, log_order
from metering.events import EVENT_COLUMNS, ROUTES, Event
from metering.timeutil import JST_OFFSET_US

IntArray = npt.NDArray[np.int64]
CHUNK_ROWS: Final = 1_000_000
"""Rows turned into events or Arrow at a time, so that memory stays bounded."""
JSONL_BUILDERS: Final = 2
"""Chunks of JSONL lines built at once (one a core of this 2-core machine); one more waits, built."""
JSONL_CHUNK_ROWS: Final = 250_000
"""Traffic rows of one chunk of JSONL lines (about 60 MB): three chunks are held at once."""
_TRAFFIC_TYPE: Final = pa.array(["sim.traffic"], type=pa.string())


@functools.lru_cache(maxsize=32)
def _nulls(count: int, kind: pa.DataType) -> pa.Array:
    """A column of ``count`` nulls (immutable, so the columns a traffic row never has are built once a size)."""
    return pa.nulls(count, type=kind)


_ROW_COLUMNS: Final = ("second", "sim", "up_bytes", "down_bytes", "route", "key")
"""The per-row columns of :class:`CompactTraffic` (the others describe the SIMs or the block)."""


@dataclass(frozen=True, eq=False)
class CompactTraffic:
    """``sim.traffic`` events in columns, in any order (:meth:`in_log_order` sorts them).

    Attributes:
        origin_us: Epoch microseconds that ``second`` counts from.
        second: Whole seconds since ``origin_us`` per row (the event's time).
        sim: Code of the row's SIM (an index into ``iccids``).
        up_bytes: Uplink bytes per row.
        down_bytes: Downlink bytes per row.
        route: Code of the row's route (an index into :data:`~metering.events.ROUTES`).
        key: The last part of the row's event id.
        iccids: ICCID per SIM code.
        accounts: Account per SIM code.
        gateways: Gateway per SIM code.
        id_infix: What joins ICCID and key in the event id.
    """

    origin_us: int
    second: npt.NDArray[np.int32]
    sim: npt.NDArray[np.int32]
    up_bytes: IntArray
    down_bytes: IntArray
    route: npt.NDArray[np.int8]
    key: npt.NDArray[np.int32]
    iccids: tuple[str, ...]
    accounts: tuple[str, ...]
    gateways: tuple[str, ...]
    id_infix: str

    def __len__(self) -> int:
        """Number of rows (events)."""
        return len(self.second)

    def account_ranks(self) -> IntArray:
        """Per SIM code, the rank of its account among the block's accounts in name order."""
        rank = {name: number for number, name in enumerate(sorted(set(self.accounts)))}
        return np.array([rank[account] for account in self.accounts], dtype=np.int64)

    def account_rows(self) -> dict[str, tuple[int, int]]:
        """Per account, its rows ``first:last`` (of a block in log order, see :meth:`in_log_order`)."""
        names = sorted(set(self.accounts))
        bounds = np.searchsorted(self.account_ranks()[self.sim], np.arange(len(names) + 1), side="left").tolist()
        return {name: (bounds[number], bounds[number + 1]) for number, name in enumerate(names)}

    def in_log_order(self) -> CompactTraffic:
        """The rows in log order (:func:`~metering.eventlog.log_order`), sorted where they are.

        By account, then by time, then by SIM code (the engine's device order, as the reference
        engine writes the records of one instant), so that a row's place does not depend on the
        other accounts of the block or on the order the rows were counted in; one SIM's rows of
        one second keep their order. The columns are reordered in place, one at a time, so a log
        of tens of millions of rows needs one column's copy at a time rather than a second copy
        of the whole block (the block's users take its rows in any order, or want them in log
        order).
        """
        if len(self) < 2:
            return self
        ranks = self.account_ranks()
        span = int(self.second.max()) + 1 if int(self.second.min()) >= 0 else 0
        sims = len(self.iccids)
        if span and (int(ranks.max()) + 1) * span * sims < 2**62:  # one sortable number a row
            order_key = (ranks[self.sim] * span + self.second) * sims + self.sim
            if bool(np.all(order_key[1:] >= order_key[:-1])):
                return self
            order = np.argsort(order_key, kind="stable")
            del order_key
        else:
            order = np.lexsort((self.sim, self.second, ranks[self.sim]))
        columns = {name: getattr(self, name) for name in _ROW_COLUMNS}
        if not all(column.flags.writeable for column in columns.values()):  # e.g. a Ray result's shared memory
            return dataclasses.replace(self, **{name: column[order] for name, column in columns.items()})
        for column in columns.values():
            column[:] = column[order]
        return self

    def ts(self, start: int = 0, stop: int | None = None) -> IntArray:
        """Epoch microseconds of rows ``start:stop``."""
        return self.origin_us + self.second[start:stop].astype(np.int64) * 1_000_000

    def events(self, start: int = 0, stop: int | None = None) -> Iterator[Event]:
        """Rows ``start:stop`` as events, in row order."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, CHUNK_ROWS):
            last = min(stop, first + CHUNK_ROWS)
            for ts, sim, up, down, route, key in zip(
                self.ts(first, last).tolist(),
                self.sim[first:last].tolist(),
                self.up_bytes[first:last].tolist(),
                self.down_bytes[first:last].tolist(),
                self.route[first:last].tolist(),
                self.key[first:last].tolist(),
                strict=True,
            ):
                iccid = self.iccids[sim]
                yield Event(
                    ts=ts,
                    type="sim.traffic",
                    account=self.accounts[sim],
                    id=f"{iccid}{self.id_infix}{key}",
                    sim=iccid,
                    gateway=self.gateways[sim],
                    up_bytes=up,
                    down_bytes=down,
                    route=ROUTES[route],
                )

    def to_arrow(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """Rows ``start:stop`` in the columnar event-log layout (:data:`~metering.eventlog.ARROW_SCHEMA`)."""
        rows = slice(start, len(self) if stop is None else stop)
        codes = pa.array(self.sim[rows])
        iccid = pa.array(self.iccids, type=pa.string()).take(codes)
        count = len(codes)
        columns: dict[str, pa.Array] = {
            "ts": pa.array(self.ts(rows.start, rows.stop)).cast(pa.timestamp("us", tz="UTC")),
            "type": _TRAFFIC_TYPE.take(pa.array(np.zeros(count, dtype=np.int32))),
            "account": pa.array(self.accounts, type=pa.string()).take(codes),
            "id": pc.binary_join_element_wise(iccid, pc.cast(pa.array(self.key[rows]), pa.string()), self.id_infix),
            "sim": iccid,
            "gateway": pa.array(self.gateways, type=pa.string()).take(codes),
            "up_bytes": pa.array(self.up_bytes[rows]),
            "down_bytes": pa.array(self.down_bytes[rows]),
            "route": pa.array(ROUTES, type=pa.string()).take(pa.array(self.route[rows])),
        }
        arrays = [columns[field.name] if field.name in columns else _nulls(count, field.type) for field in ARROW_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)

    def jsonl(self, start: int = 0, stop: int | None = None) -> bytes:
        """Rows ``start:stop`` as the bytes of JSONL lines (see :meth:`jsonl_lines`)."""
        return _joined(self.jsonl_lines(start, stop))

    def jsonl_lines(self, start: int = 0, stop: int | None = None) -> pa.StringArray:
        """Rows ``start:stop`` as lines of a JSONL log (each with its newline), built column by column.

        Byte for byte what :func:`metering.eventlog.event_line` writes for each row's event: the
        same keys in the same order, the time in JST (traffic rows fall on whole seconds), and no
        escaping, which the values never need (ICCIDs, names of :data:`~metering.events.NAME_PATTERN`,
        the routes); a test holds the two writers to the same bytes.
        """
        rows = slice(start, len(self) if stop is None else stop)
        if rows.start >= rows.stop:
            return pa.array([], type=pa.string())
        codes = pa.array(self.sim[rows])
        iccid = pa.array(self.iccids, type=pa.string()).take(codes)
        jst = (self.origin_us + JST_OFFSET_US) // 1_000_000 + self.second[rows].astype(np.int64)
        # "YYYY-MM-DD HH:MM:SS" as Arrow casts a timestamp (years 1970..2999: always four digits), then the T
        stamp = pc.binary_replace_slice(
            pc.cast(pa.array(jst.astype("datetime64[s]")), pa.string()), start=10, stop=11, replacement="T"
        )
        parts = [
            '{"ts": "',
            stamp,
            '+09:00", "type": "sim.traffic", "account": "',
            pa.array(self.accounts, type=pa.string()).take(codes),
            '", "id": "',
            iccid,
            self.id_infix,
            pc.cast(pa.array(self.key[rows]), pa.string()),
            '", "sim": "',
            iccid,
            '", "gateway": "',
            pa.array(self.gateways, type=pa.string()).take(codes),
            '", "up_bytes": ',
            pc.cast(pa.array(self.up_bytes[rows]), pa.string()),
            ', "down_bytes": ',
            pc.cast(pa.array(self.down_bytes[rows]), pa.string()),
            ', "route": "',
            pa.array(ROUTES, type=pa.string()).take(pa.array(self.route[rows])),
            '"}\n',
        ]
        lines: pa.StringArray = pc.binary_join_element_wise(*parts, "")
        return lines

    def store_tables(self) -> tuple[pa.Table, pa.Table]:
        """The rows (with their position) and the per-SIM table, for the store's bulk insert."""
        rows = pa.table(
            {
                "position": pa.array(np.arange(len(self), dtype=np.int32)),
                "second": pa.array(self.second),
                "sim": pa.array(self.sim),
                "up_bytes": pa.array(self.up_bytes),
                "down_bytes": pa.array(self.down_bytes),
                "route": pa.array(self.route),
                "key": pa.array(self.key),
            }
        )
        sims = pa.table(
            {
                "sim": pa.array(np.arange(len(self.iccids), dtype=np.int32)),
                "iccid": pa.array(self.iccids, type=pa.string()),
                "account": pa.array(self.accounts, type=pa.string()),
                "gateway": pa.array(self.gateways, type=pa.string()),
            }
        )
        return rows, sims


@dataclass(frozen=True, eq=False)
class CompactLog(Sequence[Event]):
    """An event log of ordinary events and a block of compact ``sim.traffic`` rows.

    Iterated in log order (:func:`~metering.eventlog.run_log_order`: by account, then by time);
    at the same instant of an account the ordinary events about no SIM come first, then SIM by
    SIM (by SIM code, the engine's device order) that SIM's ordinary events before its traffic row
    (a registration before the traffic it allows). The store takes the rows in any order.

    Attributes:
        events: The ordinary events, in log order.
        traffic: The compact traffic rows.
    """

    events: list[Event]
    traffic: CompactTraffic

    @functools.cached_property
    def _ordered(self) -> CompactTraffic:
        return self.traffic.in_log_order()

    def put_in_log_order(self) -> CompactLog:
        """Sort the traffic rows into log order now, where they are, and return the log.

        The order is kept when the log is pickled. A Ray worker sorts its log before it hands it
        back: the driver, which writes every worker's log, then has no rows to sort, nor to copy
        out of the read-only memory a Ray result's columns arrive in.
        """
        _ = self._ordered
        return self

    def __len__(self) -> int:
        """Number of events in all."""
        return len(self.events) + len(self.traffic)

    def __getitem__(self, position: int) -> Event:  # type: ignore[override]
        """The event at ``position`` in log order (for small logs: this materialises the log)."""
        return list(self)[position]

    def __iter__(self) -> Iterator[Event]:
        """The events in log order."""
        traffic = self._ordered
        row = 0
        for event, place in zip(self.events, self._places().tolist(), strict=True):
            if place > row:
                yield from traffic.events(row, place)
                row = place
            yield event
        yield from traffic.events(row)

    def _places(self) -> IntArray:
        """For each ordinary event, the traffic row (in log order) it goes before.

        The first row of its account at or after its instant — past the rows of that instant
        of SIMs before the event's own (:func:`~metering.eventlog.run_log_order`) — or the row
        after its account's last; in order, as the events are.
        """
        traffic = self._ordered
        times = traffic.ts()
        codes = {iccid: code for code, iccid in enumerate(traffic.iccids)}
        rows = traffic.account_rows()
        accounts = sorted(rows)
        ts = np.array([event.ts for event in self.events], dtype=np.int64)
        places = np.empty(len(self.events), dtype=np.int64)
        first = 0
        for account, group in itertools.groupby(event.account for event in self.events):
            last = first + sum(1 for _ in group)
            if account in rows:
                low, high = rows[account]
            else:  # an account without traffic: between the rows of the accounts around it
                after = bisect.bisect_left(accounts, account)
                low = high = rows[accounts[after]][0] if after < len(accounts) else len(traffic)
            places[first:last] = low + np.searchsorted(times[low:high], ts[first:last], side="left")
            ends = low + np.searchsorted(times[low:high], ts[first:last], side="right")
            for position in (first + np.flatnonzero(ends > places[first:last])).tolist():
                sim = event_sim(self.events[position])
                if sim is not None:  # after the rows of its instant of the SIMs before its own
                    tied = slice(int(places[position]), int(ends[position - first]))
                    places[position] += int(np.searchsorted(traffic.sim[tied], codes[sim], side="left"))
            first = last
        return places

    def _merged_chunks(self, size: int = CHUNK_ROWS) -> Iterator[tuple[int, int, list[Event], IntArray]]:
        """The log in chunks of about ``size`` traffic rows, each with the ordinary events among them.

        Yields ``(first, last, events, places)``: traffic rows ``first:last``, the ordinary events
        that fall among them, and for each event the row of the chunk it goes before (an event
        before the traffic of its instant). Few, large chunks: a log with an ordinary event at
        every other instant is not cut into thousands of small ones.
        """
        traffic = self._ordered
        places = self._places()
        total = len(traffic)
        starts = list(range(0, total, size)) or [0]
        for number, first in enumerate(starts):
            last = min(total, first + size)
            low = int(np.searchsorted(places, first, side="left")) if number else 0
            high = len(places) if number == len(starts) - 1 else int(np.searchsorted(places, last, side="left"))
            yield first, last, self.events[low:high], places[low:high] - first

    def to_arrow_batches(self) -> Iterator[pa.Table]:
        """The log in the columnar layout, in order, a bounded number of rows at a time.

        A chunk's columns are slices of its traffic rows and events, not copies: the Parquet
        writer takes chunked columns as they are.
        """
        traffic = self._ordered
        for first, last, events, places in self._merged_chunks():
            rows = traffic.to_arrow(first, last)
            yield pa.concat_tables(_interleaved(rows, events_to_arrow(events), places)) if events else rows

    def jsonl_chunks(self) -> Iterator[bytes]:
        """The log as JSONL, in order, a bounded number of lines at a time (traffic rows vectorised).

        The chunks are built :data:`JSONL_BUILDERS` at a time in threads (Arrow's kernels let go
        of the GIL, so they run on several cores while the caller writes the one before) and
        come out in log order: the bytes are those of building them one after the other.
        """
        traffic = self._ordered

        def built(first: int, last: int, events: list[Event], places: IntArray) -> bytes:
            rows = traffic.jsonl_lines(first, last)
            if events:
                lines = pa.array([event_line(event) + "\n" for event in events], type=pa.string())
                rows = pa.concat_arrays(_interleaved(rows, lines, places))
            return _joined(rows)

        with ThreadPoolExecutor(JSONL_BUILDERS, thread_name_prefix="jsonl") as builders:
            waiting: deque[Future[bytes]] = deque()
            for chunk in self._merged_chunks(JSONL_CHUNK_ROWS):
                waiting.append(builders.submit(built, *chunk))
                if len(waiting) > JSONL_BUILDERS:
                    yield waiting.popleft().result()
            while waiting:
                yield waiting.popleft().result()


def _interleaved(rows: Any, inserted: Any, places: IntArray) -> list[Any]:
    """Slices of ``rows`` with the entries of ``inserted`` put before row ``places[i]`` each (tables or arrays).

    ``places`` is in order; entries with the same place keep their order.
    """
    pieces, done = [], 0
    starts = np.flatnonzero(np.diff(places, prepend=-1)).tolist()  # where a new place begins in ``inserted``
    for start, stop in zip(starts, [*starts[1:], len(places)], strict=True):
        place = int(places[start])
        pieces += [rows.slice(done, place - done), inserted.slice(start, stop - start)]
        done = place
    pieces.append(rows.slice(done))
    return pieces


def _joined(lines: pa.StringArray) -> bytes:
    """The concatenation of a string array's values (each already ends with its newline)."""
    if not len(lines):
        return b""
    offsets, data = lines.buffers()[1], lines.buffers()[2]
    first, last = np.frombuffer(offsets, dtype=np.int32)[[lines.offset, lines.offset + len(lines)]].tolist()
    return bytes(memoryview(data)[first:last]) if data is not None else b""


def traffic_insert_sql(id_infix: str, origin_us: int, first_seq: int) -> str:
    """The ``SELECT`` (store layout) of compact rows registered as ``compact_rows``/``compact_sims``."""
    routes = "[" + ", ".join(f"'{route}'" for route in ROUTES) + "]"
    infix = id_infix.replace("'", "''")
    values = {
        "sim": "s.iccid",
        "gateway": "s.gateway",
        "up_bytes": "r.up_bytes",
        "down_bytes": "r.down_bytes",
        "route": f"{routes}[r.route + 1]",
    }
    columns = [
        f"{first_seq} + r.position",
        f"{origin_us} + CAST(r.second AS BIGINT) * 1000000",
        "'sim.traffic'",
        "s.account",
        f"s.iccid || '{infix}' || CAST(r.key AS VARCHAR)",
        *(values.get(name, "NULL") for name in EVENT_COLUMNS),
        "NULL",
        "'simulated'",
        "r.position + 1",
    ]
    return f"SELECT {', '.join(columns)} FROM compact_rows r JOIN compact_sims s USING (sim)"


def concatenate_logs(logs: Sequence[Sequence[Event]]) -> Sequence[Event]:
    """One log of several logs of disjoint accounts (the shards of a run), in log order.

    The events of each account keep their order (:func:`~metering.eventlog.log_order`); compact
    logs stay compact.
    """
    if not logs:
        return []
    if not all(isinstance(log, CompactLog) for log in logs):
        return sorted(itertools.chain.from_iterable(logs), key=log_order)
    compacts = [log for log in logs if isinstance(log, CompactLog)]
    events = sorted(itertools.chain.from_iterable(log.events for log in compacts), key=log_order)
    blocks = [log.traffic for log in compacts]
    offsets = np.cumsum([0] + [len(block.iccids) for block in blocks[:-1]])
    infixes = {(block.id_infix, block.origin_us) for block in blocks}
    if len(infixes) != 1:
        raise ValueError("compact logs with different id forms or origins cannot be joined")
    infix, origin_us = infixes.pop()
    traffic = CompactTraffic(
        origin_us=origin_us,
        second=np.concatenate([block.second for block in blocks]),
        sim=np.concatenate([block.sim + np.int32(offset) for block, offset in zip(blocks, offsets, strict=True)]),
        up_bytes=np.concatenate([block.up_bytes for block in blocks]),
        down_bytes=np.concatenate([block.down_bytes for block in blocks]),
        route=np.concatenate([block.route for block in blocks]),
        key=np.concatenate([block.key for block in blocks]),
        iccids=tuple(iccid for block in blocks for iccid in block.iccids),
        accounts=tuple(account for block in blocks for account in block.accounts),
        gateways=tuple(gateway for block in blocks for gateway in block.gateways),
        id_infix=infix,
    )
    return CompactLog(events, traffic)
