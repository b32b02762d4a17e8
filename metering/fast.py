"""The fast rater: columnar aggregation in DuckDB, vectorised rules in numpy, lazy invoices.

The bulk of an event log is usage (``sim.traffic``, ``mono.message``, ``sms.sent``) and the
registrations of SIMs that never change. DuckDB reduces both in a few passes:

* ``sim_life``: per SIM, its registrations and deletions; ``simple_sims`` are SIMs with one
  registration period (and at most one deletion after it) whose traffic lies inside it — the
  overwhelming majority in a fleet;
* ``traffic_month``: per SIM and JST month, bytes, event count and the first and last instant; the
  evidence ids the lines cite (first event, first and last communication, ordered by ``(ts, seq)``
  like the reference's processing order) are looked up by :class:`Evidence` when lines are built
  (for data packs, while rating).

The stages, in the order :meth:`FastRater.rate` runs them, and what each hands to the next:

1. ``_aggregate`` builds the temporary tables in dependency order: ``sim_life`` and
   ``traffic_month`` from ``events``; ``simple_sims`` from both; ``message_month`` from
   ``simple_sims`` (a simple SIM's messages inside its registration) and ``usage_month`` (messages
   and SMS per subject and month) from ``events``;
2. ``_simple_sims`` reads ``simple_sims``, ``traffic_month`` and ``message_month`` into numpy
   columns (:class:`SimpleSims`, :class:`SimTraffic`);
3. ``_histories`` replays every subject that is not simple from its raw events, with
   ``usage_month`` for the usage of simple SIMs;
4. ``_vector_rules`` rates the simple SIMs month by month, one unit per rule (``_sim_basic_block``,
   ``_maintenance_block``, ``_metered_block``; data packs pool with the replayed SIMs), and the
   reference rule units (:data:`~metering.rules.monthly.MONTHLY_RULES`) rate the histories.

Simple SIMs are rated for SMC-38, SMC-39 and SMC-40 by numpy rules over SIM x month arrays and
their lines stay columnar. Everything else — re-registered SIMs, traffic outside a registration (an
error), gateways, sub-options, device IDs, SMS, points — is replayed by the reference code and
rated by the reference rule units, fed with monthly aggregates (raw events only for complex
subjects). Invoice totals are summed columnar; :class:`~metering.invoice.InvoiceDocument` objects
(with their notes) are built only when a month is read. Property tests demand byte-identical
documents from this rater and :func:`metering.reference.rate_reference`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from metering.collector import paused_collector
from metering.compact import CompactLog
from metering.events import EVENT_COLUMNS, Event, EventError
from metering.history import AccountHistory, Usage, processing_order, replay
from metering.invoice import InvoiceDocument, Line, build_invoice, make_line, points_block, sort_invoices
from metering.money import divide_round, from_minor, priced, to_minor, total
from metering.rating import Rating
from metering.rules import Charge, Outcome
from metering.rules.data_fee import (
    Pool,
    data_fee,
    history_pools,
    metered_data_fee,
    metered_note_template,
    pack_charges,
)
from metering.rules.line_maintenance_fee import maintenance_note
from metering.rules.monthly import MONTHLY_RULES, RuleUnit
from metering.rules.points import PointsClose, points_charges, points_ledger
from metering.rules.registrations import registration_note
from metering.rules.sim_basic_fee import WORDING as SIM_BASIC_WORDING
from metering.store import EventStore, StoreError, store_failure
from metering.tariff import Tariff
from metering.timeutil import month_of_instant, month_sql, month_start, months_of_instants

LOG: Final = logging.getLogger(__name__)
STREAM_BATCH: Final = 100_000
"""Events read from a row-by-row log between two appends to the store (bounds the memory of ``bill``)."""
STREAM_MEMORY_LIMIT: Final = "384MB"
"""DuckDB's memory for ``bill``'s throw-away store: beyond it, it spills; ``bill`` stays under 1 GB."""

BULK_TYPES: Final = ("sim.traffic", "mono.message", "sms.sent")
NEVER: Final = 2**62


MONTH_SQL: Final = month_sql()


def order_key(alias: str = "") -> str:
    """SQL of an event's place in processing order, ``(ts, seq)`` as one number (``alias``: table prefix)."""
    prefix = f"{alias}." if alias else ""
    return f"({prefix}ts::HUGEINT * 1099511627776 + {prefix}seq)"


ORDER_KEY: Final = order_key()
SIMPLE_VOLUME: Final = 2**62
"""A SIM with a month of this many bytes or more is rated by the reference rules (exact Python ints)."""
REGISTERED_SQL: Final = f"({order_key('e')} > s.start_key AND (s.end_key IS NULL OR {order_key('e')} < s.end_key))"
"""Whether event ``e`` lies inside the registration of simple SIM ``s``, in processing order (as the
reference replay decides it)."""
COMMUNICATION_SQL: Final = (
    "(e.type = 'sim.traffic' AND (e.up_bytes > 0 OR e.down_bytes > 0)) "
    f"OR (e.type = 'mono.message' AND {REGISTERED_SQL})"
)
"""Whether event ``e`` of simple SIM ``s`` is communication (Art. 38(2), 57(2)): traffic of more
than 0 bytes, or a platform message while the SIM is registered (in processing order, as the
reference replay decides it)."""
EVENT_FIELDS: Final = ("ts", "type", "account", "id", *EVENT_COLUMNS, "extra", "source", "line")
ObjectArray = npt.NDArray[np.object_]
PoolPart = tuple[int, int, list[tuple[str, str]]]
"""Part of a data pack pool: SIM count, volume, ``(iccid, first traffic id)`` of SIMs with traffic."""
IntArray = npt.NDArray[np.int64]
INT64_SAFE: Final = 2**60
"""A block of int64 amounts whose sum stays below this bound cannot overflow, even with the month's
other blocks (at most three) added."""


def _fetch_events(connection: duckdb.DuckDBPyConnection, sql: str) -> list[Event]:
    """Events selected by ``sql`` (a query over ``events e`` returning :data:`EVENT_FIELDS`)."""
    found = []
    for row in connection.execute(sql).fetchall():
        values: dict[str, Any] = dict(zip(EVENT_FIELDS, row, strict=True))
        values["extra"] = values["extra"] or ""
        values["source"] = values["source"] or ""
        found.append(Event(**values))
    return found


def _numpy(column: pa.ChunkedArray) -> npt.NDArray[Any]:
    """A column as numpy; HUGEINT sums (Arrow decimals) as int64, or as exact Python ints when they do not fit."""
    if pa.types.is_decimal(column.type):
        try:
            return column.cast(pa.int64()).to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]
        except pa.ArrowInvalid:
            return np.array([None if value is None else int(value) for value in column.to_pylist()], dtype=object)
    return column.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _columns(connection: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    """The result of a query as numpy columns (sums exact, see :func:`_numpy`)."""
    table = connection.sql(sql).to_arrow_table()
    return {name: _numpy(table.column(name)) for name in table.column_names}


@dataclass
class SimpleSims:
    """SIMs rated by the vectorised rules: one registration period, all traffic inside it."""

    account: ObjectArray
    sim: ObjectArray
    start: IntArray
    end: IntArray
    start_month: IntArray
    end_month: IntArray
    start_id: ObjectArray

    def __len__(self) -> int:
        """Number of SIMs."""
        return len(self.sim)


@dataclass
class SimTraffic:
    """``traffic_month`` rows of the simple SIMs, with the SIM's row in :class:`SimpleSims`.

    Attributes:
        sim: The SIM's row.
        month: JST month.
        volume: Bytes up and down (below :data:`SIMPLE_VOLUME`).
        events: Traffic events.
        message_sim: The SIM's row, for each (SIM, month) with a platform message while registered.
        message_month: Its month.
    """

    sim: IntArray
    month: IntArray
    volume: IntArray
    events: IntArray
    message_sim: IntArray
    message_month: IntArray


@dataclass
class LineBlock:
    """Charged lines of one vectorised rule in one month, as columns over simple SIMs."""

    item: str
    rule: str
    sims: IntArray
    quantity: IntArray
    amount_minor: npt.NDArray[Any]
    unit_price: Decimal
    details: dict[str, Any]


class Evidence:
    """Evidence ids of the simple SIMs' traffic per month, looked up only for lines being built.

    Per SIM and month: the first traffic event, and the first and the last communication (traffic
    with bytes > 0, or a platform message while the SIM is registered), in processing order
    ``(ts, seq)`` — what the reference rules cite.
    """

    SPAN: Final = 1 << 24

    def __init__(self, connection: duckdb.DuckDBPyConnection, months: set[int] | None) -> None:
        """Query the evidence of ``months`` (``None``: every month)."""
        where = "e.type IN ('sim.traffic', 'mono.message')"
        if months is not None:
            ranges = " OR ".join(f"(e.ts >= {month_start(m)} AND e.ts < {month_start(m + 1)})" for m in sorted(months))
            where += f" AND ({ranges or 'false'})"
        traffic = "e.type = 'sim.traffic'"
        table = connection.sql(
            f"""
            SELECT s.idx * {self.SPAN} + {month_sql("e.ts")} AS key,
                   arg_min(e.id, {order_key("e")})
                       FILTER (WHERE {traffic}) AS first_id,
                   arg_min(e.id, {order_key("e")})
                       FILTER (WHERE {COMMUNICATION_SQL}) AS used_id,
                   arg_max(e.id, {order_key("e")})
                       FILTER (WHERE {COMMUNICATION_SQL}) AS last_used_id
            FROM events e JOIN simple_sims s ON e.account = s.account AND e.sim = s.sim
            WHERE {where}
            GROUP BY ALL ORDER BY key
            """
        ).to_arrow_table()
        self.keys: IntArray = table.column("key").to_numpy().astype(np.int64)
        self.columns = {name: table.column(name) for name in ("first_id", "used_id", "last_used_id")}

    def lookup(self, column: str, sims: IntArray, months: IntArray) -> list[str | None]:
        """The ``column`` id of each (SIM, month) pair; ``None`` where there is none."""
        if not len(sims):
            return []
        wanted = sims * self.SPAN + months
        position = np.minimum(np.searchsorted(self.keys, wanted), max(len(self.keys) - 1, 0))
        found = (self.keys[position] == wanted) if len(self.keys) else np.zeros(len(sims), dtype=bool)
        values: list[str | None] = self.columns[column].take(pa.array(position)).to_pylist() if len(self.keys) else []
        return [value if hit else None for value, hit in zip(values or [None] * len(sims), found.tolist(), strict=True)]

    def first_ids(self, sims: IntArray, month: int) -> ObjectArray:
        """The first traffic event id of each SIM in ``month`` (object array, ``None`` if none)."""
        return np.array(self.lookup("first_id", sims, np.full(len(sims), month, dtype=np.int64)) or [], dtype=object)


@dataclass(frozen=True)
class _MonthColumns:
    """One month of the simple SIMs, as columns (one entry per SIM): what the month's rule units read."""

    month: int
    sims: IntArray
    in_month: npt.NDArray[np.bool_]
    rows: IntArray
    volume: IntArray
    used: npt.NDArray[np.bool_]
    covers: npt.NDArray[np.bool_]
    edge: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, simple: SimpleSims, traffic: SimTraffic, month: int, sims: IntArray) -> _MonthColumns:
        """The month's volume, communication (traffic or messages) and registration of every simple SIM."""
        in_month = traffic.month == month
        rows = traffic.sim[in_month]
        volume = np.zeros(len(sims), dtype=np.int64)
        volume[rows] = traffic.volume[in_month]
        used = volume > 0
        used[traffic.message_sim[traffic.message_month == month]] = True
        covers = (simple.start_month <= month) & (simple.end_month >= month)
        edge = (simple.start_month == month) | (simple.end_month == month)
        return cls(month, sims, in_month, rows, volume, used, covers, edge)


@dataclass(frozen=True)
class _IdleInputs:
    """What SMC-39 needs across months: when each SIM communicated, and from when idle months count."""

    comm_keys: IntArray
    """Sorted (SIM << 24 | month) keys of the months with communication (a repeated key changes no search)."""
    span: int
    counted_from: IntArray
    transitional: int
    transitional_at: int

    @classmethod
    def of(cls, simple: SimpleSims, traffic: SimTraffic, tariff: Tariff) -> _IdleInputs:
        """The inputs of the simple SIMs under ``tariff`` (its transitional start, I-3)."""
        span = 1 << 24
        communicated = traffic.volume > 0
        comm_keys = np.sort(
            np.concatenate(
                [
                    traffic.sim[communicated] * span + traffic.month[communicated],
                    traffic.message_sim * span + traffic.message_month,
                ]
            )
        )
        transitional = tariff.transitional_start
        transitional_at = month_start(transitional)
        counted_from = simple.start_month.copy()
        before = (simple.start < transitional_at) & (simple.end >= transitional_at)
        counted_from[before] = np.maximum(counted_from[before], transitional)
        return cls(comm_keys, span, counted_from, transitional, transitional_at)


@dataclass
class _Invoices:
    """Everything needed to build the invoice documents on demand."""

    tariff: Tariff
    months: Sequence[int]
    simple: SimpleSims
    blocks: dict[int, list[LineBlock]]
    lines: dict[tuple[int, str], list[Line]]
    closes: dict[str, dict[int, PointsClose]]
    event_months: dict[str, set[int]]
    accounts: list[str]
    connection: duckdb.DuckDBPyConnection
    totals: dict[tuple[int, str], int] = field(default_factory=dict)
    evidence: Evidence | None = None

    def evidence_for(self) -> Evidence:
        """The evidence of every month the built lines cite (queried once)."""
        if self.evidence is None:
            needed = set(self.months)
            for blocks in self.blocks.values():
                for block in blocks:
                    if "last_month" in block.details:
                        needed.update(int(m) for m in np.unique(block.details["last_month"]) if m >= 0)
            self.evidence = Evidence(self.connection, needed)
        return self.evidence


class LazyDocuments(Mapping[int, InvoiceDocument]):
    """Month → invoice document, built (lines with notes, totals) the first time it is read."""

    def __init__(self, invoices: _Invoices) -> None:
        """Wrap the columnar result of a fast rating."""
        self._invoices = invoices
        self._built: dict[int, InvoiceDocument] = {}

    def __getitem__(self, month: int) -> InvoiceDocument:
        """The document of ``month`` (built once)."""
        if month not in self._invoices.months:
            raise KeyError(month)
        if month not in self._built:
            self._built[month] = _build_document(self._invoices, month)
        return self._built[month]

    def __iter__(self) -> Iterator[int]:
        """The months rated."""
        return iter(self._invoices.months)

    def __len__(self) -> int:
        """Number of months rated."""
        return len(self._invoices.months)

    def subtotal_minor(self, month: int, account: str) -> int:
        """An invoice's subtotal in minor units (``10**-amount_decimals``), from the columns."""
        return self._invoices.totals.get((month, account), 0)


def _block_lines(block: LineBlock, invoices: _Invoices, month: int) -> Iterator[tuple[str, Line]]:
    """Invoice lines of one vectorised block, with the notes of the shared rule code.

    A block has few distinct amounts and one note wording per month: each amount is made a
    ``Decimal`` once, and the data fee notes are filled into the month's template.
    """
    tariff, simple = invoices.tariff, invoices.simple
    evidence = invoices.evidence_for()
    details = {key: value.tolist() for key, value in block.details.items()}
    this_month = np.full(len(block.sims), month, dtype=np.int64)
    if block.item == "sim_basic_fee":
        cited = evidence.lookup("used_id", block.sims, this_month)
    elif block.item == "line_maintenance_fee":
        cited = evidence.lookup("last_used_id", block.sims, block.details["last_month"])
    else:
        cited = evidence.lookup("first_id", block.sims, this_month)
    minors = block.amount_minor.tolist()
    amounts = {minor: from_minor(minor, tariff.amount_decimals) for minor in set(minors)}
    notes: dict[bool, str] = {}
    metered = metered_note_template(month, tariff).format
    item, rule, unit_price, start_ids, iccids, accounts = (
        block.item,
        block.rule,
        block.unit_price,
        simple.start_id,
        simple.sim,
        simple.account,
    )
    for position, (index, quantity, minor) in enumerate(
        zip(block.sims.tolist(), block.quantity.tolist(), minors, strict=True)
    ):
        cite = cited[position]
        if item == "sim_basic_fee":
            evidence_ids: tuple[str, ...] = (start_ids[index], cite) if cite else (start_ids[index],)
            used = bool(details["used"][position])
            if used not in notes:
                notes[used] = registration_note(SIM_BASIC_WORDING, month, 1, used)
            note = notes[used]
        elif item == "line_maintenance_fee":
            evidence_ids = (start_ids[index], cite) if cite else (start_ids[index],)
            note = maintenance_note(
                month,
                tariff.idle_months,
                details["idle"][position],
                cite is not None,
                details["transitional"][position],
            )
        else:
            evidence_ids = (cite,) if cite else ()
            note = metered(volume=details["volume"][position], events=details["events"][position], units=quantity)
        yield accounts[index], Line(item, rule, iccids[index], quantity, unit_price, amounts[minor], evidence_ids, note)


@paused_collector()  # a line per charge of every account: all kept
def _build_document(invoices: _Invoices, month: int) -> InvoiceDocument:
    """The month's document: a line per charge of every account."""
    tariff = invoices.tariff
    columnar: dict[str, list[Line]] = {}
    for block in invoices.blocks.get(month, []):
        for account, line in _block_lines(block, invoices, month):
            columnar.setdefault(account, []).append(line)
    built = []
    for account in invoices.accounts:
        close = invoices.closes.get(account, {}).get(month)
        lines = columnar.get(account, []) + invoices.lines.get((month, account), [])
        if lines or (close is not None and close.block.active) or month in invoices.event_months.get(account, ()):
            built.append(build_invoice(account, lines, points_block(close), tariff))
    return InvoiceDocument(month, tariff.label, sort_invoices(built))


class FastRater:
    """Rates the ``events`` table of a DuckDB connection (a store) with the columnar rules."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, tariff: Tariff) -> None:
        """Prepare to rate the events of ``connection`` under ``tariff``."""
        self.connection = connection
        self.tariff = tariff
        self.timings: dict[str, float] = {}
        """Seconds per phase of the last :meth:`rate`: aggregate, replay, vectorise, totals."""

    def _sql(self, sql: str) -> None:
        self.connection.execute(sql).fetchall()

    def _aggregate(self) -> None:
        """Build the temporary tables ``sim_life``, ``traffic_month``, ``simple_sims``, ``usage_month``."""
        self._sql(
            f"""
            CREATE OR REPLACE TEMP TABLE sim_life AS
            SELECT account, sim,
                   count(*) FILTER (WHERE type = 'sim.registered') AS regs,
                   count(*) FILTER (WHERE type = 'sim.deleted') AS dels,
                   min(ts) FILTER (WHERE type = 'sim.registered') AS start_ts,
                   min({ORDER_KEY}) FILTER (WHERE type = 'sim.registered') AS start_key,
                   arg_min(id, {ORDER_KEY}) FILTER (WHERE type = 'sim.registered') AS start_id,
                   min(ts) FILTER (WHERE type = 'sim.deleted') AS end_ts,
                   min({ORDER_KEY}) FILTER (WHERE type = 'sim.deleted') AS end_key
            FROM events WHERE type IN ('sim.registered', 'sim.deleted') GROUP BY account, sim
            """
        )
        self._sql(
            f"""
            CREATE OR REPLACE TEMP TABLE traffic_month AS
            SELECT account, sim, {MONTH_SQL} AS month, sum(up_bytes) + sum(down_bytes) AS volume,
                   count(*) AS events, min(ts) AS min_ts, max(ts) AS max_ts
            FROM events WHERE type = 'sim.traffic' GROUP BY ALL
            """
        )
        self._sql(
            f"""
            CREATE OR REPLACE TEMP TABLE simple_sims AS
            SELECT row_number() OVER (ORDER BY l.account, l.sim) - 1 AS idx,
                   l.account, l.sim, l.start_ts, l.start_id, l.end_ts, l.start_key, l.end_key
            FROM sim_life l
            LEFT JOIN (SELECT account, sim, min(min_ts) AS lo, max(max_ts) AS hi, max(volume) AS most
                       FROM traffic_month GROUP BY ALL) t
                ON l.account = t.account AND l.sim = t.sim
            WHERE l.regs = 1 AND (l.dels = 0 OR (l.dels = 1 AND l.end_key > l.start_key))
              AND (t.lo IS NULL OR (t.lo >= l.start_ts AND (l.end_ts IS NULL OR t.hi < l.end_ts)
                                    AND t.most < {SIMPLE_VOLUME}))
            """
        )
        self._sql(
            f"""
            CREATE OR REPLACE TEMP TABLE message_month AS
            SELECT s.idx, {month_sql("e.ts")} AS month
            FROM events e JOIN simple_sims s ON e.account = s.account AND e.sim = s.sim
            WHERE e.type = 'mono.message' AND {REGISTERED_SQL}
            GROUP BY ALL
            """
        )
        self._sql(
            f"""
            CREATE OR REPLACE TEMP TABLE usage_month AS
            SELECT type, account, CASE WHEN type = 'sms.sent' THEN kind ELSE sim END AS subject,
                   {MONTH_SQL} AS month, sum(count::HUGEINT) AS amount,
                   arg_min(id, {ORDER_KEY}) AS first_id, arg_min(ts, {ORDER_KEY}) AS first_ts,
                   arg_min(seq, {ORDER_KEY}) AS first_seq, min(ts) AS min_ts, max(ts) AS max_ts
            FROM events WHERE type IN ('mono.message', 'sms.sent') GROUP BY ALL
            """
        )

    def _simple_sims(self) -> tuple[SimpleSims, SimTraffic]:
        sims = _columns(
            self.connection,
            f"SELECT account, sim, start_ts, start_id, coalesce(end_ts, {NEVER}) AS end_ts "
            "FROM simple_sims ORDER BY idx",
        )
        start = sims["start_ts"].astype(np.int64)
        end = sims["end_ts"].astype(np.int64)
        simple = SimpleSims(
            account=sims["account"],
            sim=sims["sim"],
            start=start,
            end=end,
            start_month=months_of_instants(start),
            end_month=np.where(end == NEVER, NEVER, months_of_instants(np.minimum(end, 2**53))),
            start_id=sims["start_id"],
        )
        rows = _columns(
            self.connection,
            "SELECT s.idx, t.month, t.volume::BIGINT AS volume, t.events "
            "FROM traffic_month t JOIN simple_sims s ON t.account = s.account AND t.sim = s.sim",
        )
        messages = _columns(self.connection, "SELECT idx, month FROM message_month")
        traffic = SimTraffic(
            sim=rows["idx"].astype(np.int64),
            month=rows["month"].astype(np.int64),
            volume=rows["volume"].astype(np.int64),
            events=rows["events"].astype(np.int64),
            message_sim=messages["idx"].astype(np.int64),
            message_month=messages["month"].astype(np.int64),
        )
        return simple, traffic

    def _histories(self, simple: SimpleSims) -> tuple[dict[str, AccountHistory], list[EventError]]:
        """Replay everything but the simple SIMs and the aggregated usage, per account.

        Platform messages are replayed one by one where the reference must see them: messages of
        a SIM that is not simple (they are its communication, Art. 57(2)) and of a device ID with
        several issue periods, or with messages outside its one period. The others reach the
        rules as monthly aggregates; those of simple SIMs without a device ID only consume points.
        """
        tariff = self.tariff
        fields = ", ".join(f"e.{name}" for name in EVENT_FIELDS)
        bulk = ", ".join(f"'{name}'" for name in BULK_TYPES)
        events = _fetch_events(
            self.connection,
            f"SELECT {fields} FROM events e ANTI JOIN simple_sims s "
            f"ON e.account = s.account AND e.sim = s.sim AND e.type IN ('sim.registered', 'sim.deleted') "
            f"WHERE e.type NOT IN ({bulk}) ORDER BY e.seq",
        )
        complex_traffic = self.connection.execute(
            "SELECT count(*) FROM traffic_month t ANTI JOIN simple_sims s ON t.account = s.account AND t.sim = s.sim"
        ).fetchall()[0][0]
        if complex_traffic:
            events += _fetch_events(
                self.connection,
                f"SELECT {fields} FROM events e ANTI JOIN simple_sims s ON e.account = s.account AND e.sim = s.sim "
                "WHERE e.type = 'sim.traffic' ORDER BY e.seq",
            )
        usage = _columns(
            self.connection,
            "SELECT type, account, subject, month, amount, first_id, first_ts, first_seq, min_ts, max_ts "
            "FROM usage_month ORDER BY account, type, subject, month",
        )
        event_months: dict[str, set[int]] = {}
        month_rows = self.connection.execute(
            "SELECT DISTINCT account, month FROM traffic_month UNION SELECT DISTINCT account, month FROM usage_month "
            f"UNION SELECT DISTINCT account, {month_sql('start_ts')} FROM simple_sims "
            f"UNION SELECT DISTINCT account, {month_sql('end_ts')} FROM simple_sims WHERE end_ts IS NOT NULL"
        ).fetchall()
        for account, month in month_rows:
            event_months.setdefault(account, set()).add(int(month))
        accounts = {event.account for event in events} | set(event_months)
        by_account: dict[str, list[Event]] = {account: [] for account in accounts}
        for event in processing_order(events):
            by_account[event.account].append(event)
        # device IDs: a device with one issue period strictly containing all its messages is simple
        lifecycle = {account: replay(account, by_account[account], tariff)[0] for account in accounts}
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for kind, account, subject, low, high in zip(
            usage["type"].tolist(),
            usage["account"].tolist(),
            usage["subject"].tolist(),
            usage["min_ts"].tolist(),
            usage["max_ts"].tolist(),
            strict=True,
        ):
            if kind == "mono.message":
                first, last = spans.get((account, subject), (low, high))
                spans[(account, subject)] = (min(first, low), max(last, high))
        simple_keys = set(zip(simple.account.tolist(), simple.sim.tolist(), strict=True)) if spans else set()
        replayed, deviceless = set(), set()
        for (account, sim), (low, high) in spans.items():
            periods = lifecycle[account].devices.get(sim)
            if (account, sim) not in simple_keys:
                replayed.add((account, sim))
            elif not periods:
                deviceless.add((account, sim))
            elif not (len(periods) == 1 and periods[0].start < low and (periods[0].end or NEVER) > high):
                replayed.add((account, sim))
        if replayed:
            chosen = pa.table({"a": [key[0] for key in replayed], "s": [key[1] for key in replayed]})
            self.connection.register("replayed_messages", chosen)
            raw = _fetch_events(
                self.connection,
                f"SELECT {fields} FROM events e SEMI JOIN replayed_messages c ON e.account = c.a AND e.sim = c.s "
                "WHERE e.type = 'mono.message' ORDER BY e.seq",
            )
            self.connection.unregister("replayed_messages")
            for event in raw:
                by_account[event.account].append(event)
        histories: dict[str, AccountHistory] = {}
        errors: list[EventError] = []
        no_consumption = _without_consumption(tariff)
        for account in sorted(accounts):
            history, found = replay(account, processing_order(by_account[account]), no_consumption)
            history.event_months.update(event_months.get(account, ()))
            histories[account] = history
            errors.extend(found)
        self._attach_usage(histories, usage, replayed | deviceless)
        return histories, errors

    def _attach_usage(
        self, histories: dict[str, AccountHistory], usage: dict[str, Any], not_aggregated: set[tuple[str, str]]
    ) -> None:
        """Monthly message, SMS and point-consumption records from ``usage_month``.

        Messages of the SIMs in ``not_aggregated`` are not attached (replayed one by one, or of a
        SIM without a device ID); every message consumes points all the same.
        """
        consuming = self.tariff.points_consumption
        consumption: dict[str, list[tuple[int, int, Usage]]] = {}
        for kind, account, subject, amount, first_id, first_ts, first_seq in zip(
            usage["type"].tolist(),
            usage["account"].tolist(),
            usage["subject"].tolist(),
            usage["amount"].tolist(),
            usage["first_id"].tolist(),
            usage["first_ts"].tolist(),
            usage["first_seq"].tolist(),
            strict=True,
        ):
            history = histories[account]
            record = Usage(first_ts, amount, first_id, 0)
            if kind == "sms.sent":
                history.sms.setdefault(subject, []).append(record)
            elif (account, subject) not in not_aggregated:
                history.messages.setdefault(subject, []).append(record)
            per = consuming.get(kind, 0)
            if per:
                entry = (first_ts, first_seq, Usage(first_ts, amount * per, first_id, 0))
                consumption.setdefault(account, []).append(entry)
        for account, entries in consumption.items():
            entries.sort(key=lambda entry: (entry[0], entry[1]))
            histories[account].consumption = [entry[2] for entry in entries]

    def _amounts(self, quantity: IntArray, unit_price: Decimal) -> npt.NDArray[Any]:
        """Rounded line amounts in minor units, exact: one Decimal product per distinct quantity.

        int64 when the block's sum cannot overflow it, else exact Python ints (an object array).
        """
        tariff = self.tariff
        values, inverse = np.unique(quantity, return_inverse=True)
        decimals = tariff.amount_decimals
        minor = [
            to_minor(priced(unit_price, int(value), decimals, tariff.line_rounding), decimals)
            for value in values.tolist()
        ]
        if not minor:
            return np.zeros(0, dtype=np.int64)
        dtype = np.int64 if max(minor) * len(quantity) < INT64_SAFE else object
        return np.array(minor, dtype=dtype)[inverse]

    def _units(self, volume: IntArray) -> IntArray:
        unit, mode = self.tariff.data_unit_bytes, self.tariff.data_unit_rounding
        if mode == "down":
            return volume // unit
        if mode == "up":
            return -(-volume // unit)
        values, inverse = np.unique(volume, return_inverse=True)
        return np.array([divide_round(int(v), unit, mode) for v in values.tolist()], dtype=np.int64)[inverse]

    def _vector_rules(
        self, simple: SimpleSims, traffic: SimTraffic, months: Sequence[int], evidence: Evidence | None
    ) -> tuple[dict[int, list[LineBlock]], dict[int, dict[tuple[str, str], PoolPart]]]:
        """SMC-38, SMC-39 and SMC-40 for the simple SIMs, month by month, as column blocks (one unit each)."""
        tariff = self.tariff
        count = len(simple)
        sims = np.arange(count, dtype=np.int64)
        idle = _IdleInputs.of(simple, traffic, tariff)
        carriers: ObjectArray = np.array(
            [tariff.carrier_of(sim) for sim in simple.sim.tolist()] if tariff.data_plan != "metered" else [],
            dtype=object,
        )
        blocks: dict[int, list[LineBlock]] = {}
        pools: dict[int, dict[tuple[str, str], PoolPart]] = {}
        for month in months:
            columns = _MonthColumns.of(simple, traffic, month, sims)
            month_blocks = [self._sim_basic_block(columns), self._maintenance_block(simple, columns, idle)]
            if tariff.data_plan == "metered":
                month_blocks.append(self._metered_block(traffic, columns))
            else:
                assert evidence is not None, "data packs cite evidence while rating"
                first_ids = evidence.first_ids(sims, month)
                pools[month] = self._pools(simple, columns.covers, columns.volume, first_ids, carriers)
            blocks[month] = month_blocks
        return blocks, pools

    def _sim_basic_block(self, columns: _MonthColumns) -> LineBlock:
        """SMC-38 (Art. 38): a SIM registered in the month that communicated (or in a first or last month)."""
        exempt = self.tariff.interpretations.exempt_first_and_last_month
        basic = columns.covers & (columns.used | (columns.edge & (not exempt)))
        charged = columns.sims[basic]
        ones = np.ones(len(charged), np.int64)
        return self._block(
            "sim_basic_fee", "SMC-38", charged, ones, self.tariff.sim_basic_fee, {"used": columns.used[basic]}
        )

    def _maintenance_block(self, simple: SimpleSims, columns: _MonthColumns, inputs: _IdleInputs) -> LineBlock:
        """SMC-39 (Art. 39): the idle run starts at max(counted from, the month after the last communication)."""
        tariff, month, sims, span = self.tariff, columns.month, columns.sims, inputs.span
        count = len(sims)
        if len(inputs.comm_keys):
            position = np.searchsorted(inputs.comm_keys, sims * span + month, side="right") - 1
            safe = np.maximum(position, 0)
            same = (position >= 0) & (inputs.comm_keys[safe] // span == sims)
            last_month = np.where(same, inputs.comm_keys[safe] % span, -(10**9))
        else:
            same = np.zeros(count, dtype=bool)
            last_month = np.full(count, -(10**9), dtype=np.int64)
        after_use = same & (last_month + 1 >= inputs.counted_from)
        anchor = np.where(after_use, last_month + 1, inputs.counted_from)
        idle = np.maximum(0, month - anchor + 1)
        length = tariff.idle_months
        fee = columns.covers & (idle >= length) & (idle % length == 0)
        if tariff.interpretations.deleted_in_final_month == "no_fee":
            fee &= simple.end >= month_start(month + 1)
        charged = sims[fee]
        transitional = (anchor == inputs.transitional) & (simple.start < inputs.transitional_at)
        return self._block(
            "line_maintenance_fee",
            "SMC-39",
            charged,
            np.ones(len(charged), np.int64),
            tariff.line_maintenance_fee,
            {
                "last_month": np.where(after_use, last_month, -1)[fee],
                "idle": idle[fee],
                "transitional": transitional[fee],
            },
        )

    def _metered_block(self, traffic: SimTraffic, columns: _MonthColumns) -> LineBlock:
        """SMC-40 (Art. 40), metered: the month's volume in units of the tariff."""
        events = np.zeros(len(columns.sims), dtype=np.int64)
        events[columns.rows] = traffic.events[columns.in_month]
        units = self._units(columns.volume)
        metered = columns.covers & (units > 0)
        return self._block(
            "data_fee",
            "SMC-40",
            columns.sims[metered],
            units[metered],
            self.tariff.data_unit_price,
            {"volume": columns.volume[metered], "events": events[metered]},
        )

    @staticmethod
    def _pools(
        simple: SimpleSims,
        covers: npt.NDArray[np.bool_],
        volume: IntArray,
        first_ids: ObjectArray,
        carriers: ObjectArray,
    ) -> dict[tuple[str, str], PoolPart]:
        """Per (account, carrier): the simple SIMs' part of a data pack pool in one month."""
        found: dict[tuple[str, str], PoolPart] = {}
        for index in np.flatnonzero(covers).tolist():
            count, total, firsts = found.setdefault((simple.account[index], carriers[index]), (0, 0, []))
            first = first_ids[index]
            if first:
                firsts.append((simple.sim[index], first))
            found[(simple.account[index], carriers[index])] = (count + 1, total + int(volume[index]), firsts)
        return found

    def _block(
        self, item: str, rule: str, sims: IntArray, quantity: IntArray, price: Decimal, details: dict[str, Any]
    ) -> LineBlock:
        return LineBlock(item, rule, sims, quantity, self._amounts(quantity, price), price, details)

    def _reference_lines(
        self,
        history: AccountHistory,
        month: int,
        close: PointsClose | None,
        simple_pools: dict[tuple[str, str], PoolPart],
    ) -> list[Line]:
        """Lines of the subjects the reference rule units rate: the reference's own list of units.

        One unit is replaced: SMC-40 under a data pack pools the SIMs rated here with the SIMs
        rated in bulk (:meth:`_merge_pools`), which the reference unit cannot see.
        """
        tariff = self.tariff

        def pooled_data_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
            if tariff.data_plan == "metered":
                return metered_data_fee(history, month, tariff)
            return pack_charges(self._merge_pools(history, month, simple_pools), month, tariff)

        units: dict[RuleUnit, RuleUnit] = {data_fee: pooled_data_fee}
        outcomes: list[Outcome] = [
            outcome for rule in MONTHLY_RULES for outcome in units.get(rule, rule)(history, month, tariff)
        ]
        if close is not None:
            outcomes += points_charges(close, month, tariff)
        return [make_line(outcome, tariff) for outcome in outcomes if isinstance(outcome, Charge)]

    def _merge_pools(
        self, history: AccountHistory, month: int, simple_pools: dict[tuple[str, str], PoolPart]
    ) -> dict[str, Pool]:
        """Data pack pools: the simple SIMs' part plus the replayed SIMs' part, evidence in ICCID order."""
        merged: dict[str, PoolPart] = {
            carrier: part for (account, carrier), part in simple_pools.items() if account == history.account
        }
        for carrier, (count, volume, firsts) in history_pools(history, month, self.tariff).items():
            before = merged.get(carrier, (0, 0, []))
            merged[carrier] = (before[0] + count, before[1] + volume, before[2] + firsts)
        return {
            carrier: Pool(count, volume, tuple(first for _, first in sorted(firsts)))
            for carrier, (count, volume, firsts) in merged.items()
        }

    def rate(self, months: Sequence[int]) -> Rating:
        """Rate ``months``. The documents are built lazily; outcomes are left to the reference rater."""
        tariff = self.tariff
        clock = time.perf_counter()
        self._aggregate()
        simple, traffic = self._simple_sims()
        self.timings["aggregate"] = time.perf_counter() - clock
        clock = time.perf_counter()
        histories, errors = self._histories(simple)
        self.timings["replay"] = time.perf_counter() - clock
        if errors:
            return Rating({}, {}, tuple(sorted(errors, key=lambda error: (error.source, error.line))))
        clock = time.perf_counter()
        evidence = Evidence(self.connection, None) if tariff.data_plan != "metered" else None
        blocks, pools = self._vector_rules(simple, traffic, months, evidence)
        self.timings["vectorise"] = time.perf_counter() - clock
        clock = time.perf_counter()
        last = max(months, default=0)
        closes = {account: points_ledger(history, last, tariff) for account, history in histories.items()}
        accounts = sorted(set(histories) | set(simple.account.tolist()))
        lines: dict[tuple[int, str], list[Line]] = {}
        for month in months:
            for account, history in histories.items():
                found = self._reference_lines(history, month, closes[account].get(month), pools.get(month, {}))
                if found:
                    lines[(month, account)] = found
        months_with_events = {account: history.event_months for account, history in histories.items()}
        invoices = _Invoices(
            tariff, list(months), simple, blocks, lines, closes, months_with_events, accounts, self.connection
        )
        invoices.evidence = evidence
        account_index = {account: position for position, account in enumerate(accounts)}
        sim_account = np.array([account_index[account] for account in simple.account.tolist()], dtype=np.int64)
        decimals = tariff.amount_decimals
        for month, month_blocks in blocks.items():
            exact = all(block.amount_minor.dtype == np.int64 for block in month_blocks)
            per_account = np.zeros(len(accounts), dtype=np.int64 if exact else object)
            for block in month_blocks:
                np.add.at(per_account, sim_account[block.sims], block.amount_minor)
            for account, minor in zip(accounts, per_account.tolist(), strict=True):
                extra = total(line.amount for line in lines.get((month, account), []))
                invoices.totals[(month, account)] = minor + to_minor(extra, decimals)
        self.timings["totals"] = time.perf_counter() - clock
        [(first, last)] = self.connection.execute("SELECT min(ts), max(ts) FROM events").fetchall()
        span = None if first is None else (month_of_instant(first), month_of_instant(last))
        return Rating(LazyDocuments(invoices), {}, (), span)


def _without_consumption(tariff: Tariff) -> Tariff:
    """The tariff with no point consumption (consumption comes from the monthly aggregates)."""
    from dataclasses import replace

    return replace(tariff, points_consumption={})


def rate_connection(connection: duckdb.DuckDBPyConnection, tariff: Tariff, months: Sequence[int]) -> Rating:
    """Rate the ``events`` table of an open DuckDB connection."""
    return FastRater(connection, tariff).rate(months)


def rate_fast(
    paths: Sequence[Path],
    db: Path | None,
    tariff: Tariff,
    months: Sequence[int],
    timings: dict[str, float] | None = None,
) -> Rating:
    """Rate event logs and/or a store with the fast rater.

    A store alone is rated in place (read-only); files, with or without a store, are first
    ingested into an in-memory store, which also deduplicates them.

    Args:
        paths: Event logs, read in this order.
        db: A store to rate (alone, in place) or to read before the logs.
        tariff: The tariff to rate under.
        months: The months to rate.
        timings: Filled, when given, with the seconds of each stage: ``read`` (the logs, and a
            store given with them, into the working store), ``settle`` (repeated ids), the rater's
            phases (:attr:`FastRater.timings`) and ``documents`` (the invoice documents built,
            evidence ids included).

    Raises:
        StoreError: For a damaged, locked or unreadable store, or a working store that ran out of
            memory or disk (DuckDB's own errors never escape).
    """
    try:
        return _rate_fast(paths, db, tariff, months, {} if timings is None else timings)
    except duckdb.Error as exc:
        where = str(db) if db is not None and not paths else (f"{db} (read into a working store)" if db else "")
        raise store_failure(where or "the working store of this bill", exc) from None


def _rate_fast(
    paths: Sequence[Path], db: Path | None, tariff: Tariff, months: Sequence[int], timings: dict[str, float]
) -> Rating:
    if db is not None and not paths:
        with EventStore(db, read_only=True) as store:
            return _rated(store.connection, tariff, months, timings)
    with EventStore(":memory:", memory_limit=STREAM_MEMORY_LIMIT) as memory:
        clock = time.perf_counter()
        if db is not None:
            with EventStore(db, read_only=True) as source:
                memory.append(source.events())
        try:
            for path in paths:
                LOG.info("reading %s", path)
                # streamed, and checked for reused ids once at the end
                memory.ingest_file(path, STREAM_BATCH, validate_first=False)
            timings["read"] = time.perf_counter() - clock
            clock = time.perf_counter()
            memory.settle_duplicates()
            timings["settle"] = time.perf_counter() - clock
        except StoreError as exc:
            return Rating({}, {}, (EventError(str(exc)),))
        LOG.info("rating %d month%s", len(months), "" if len(months) == 1 else "s")
        return _rated(memory.connection, tariff, months, timings)


def _rated(
    connection: duckdb.DuckDBPyConnection, tariff: Tariff, months: Sequence[int], timings: dict[str, float]
) -> Rating:
    """Rate the connection's events and build every document now (the connection closes after this)."""
    rater = FastRater(connection, tariff)
    rating = rater.rate(months)
    timings.update(rater.timings)
    clock = time.perf_counter()
    built = _materialised(rating)
    timings["documents"] = time.perf_counter() - clock
    return built


def rate_events(events: Sequence[Event], tariff: Tariff, months: Sequence[int]) -> Rating:
    """Rate events held in memory (the simulator's online metering) with the fast rater.

    A :class:`~metering.compact.CompactLog` goes to the store in bulk: its ordinary events, then
    its compact traffic rows.
    """
    with EventStore(":memory:") as memory:
        try:
            if isinstance(events, CompactLog):
                memory.append(events.events)
                memory.view_compact(events.traffic)
            else:
                memory.append(events)
        except StoreError as exc:
            return Rating({}, {}, (EventError(str(exc)),))
        return _rated(memory.connection, tariff, months, {})


def _materialised(rating: Rating) -> Rating:
    """Build every document now (the connection closes after this)."""
    documents = {month: rating.documents[month] for month in rating.documents}
    return Rating(documents, rating.outcomes, rating.errors, rating.event_months)
