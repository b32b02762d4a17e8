"""The fast rater: columnar aggregation in DuckDB and vectorised rules in numpy.

The bulk of an event log is usage (``sim.traffic``, ``mono.message``, ``sms.sent``). DuckDB sums
it per account, subject and JST month in one pass, keeping the evidence ids (first event, first
and last communication, by ``(ts, seq)``). Lifecycle events (registrations, gateways, options,
points) are few; they are replayed with the reference code into histories.

SIMs with one registration period whose traffic lies inside it (the overwhelming majority) are
rated for SMC-38, SMC-39 and metered SMC-40 by vectorised numpy rules over SIM x month arrays.
Every other subject — re-registered SIMs, traffic outside a registration (an error), data packs,
gateways, sub-options, device IDs, SMS, points — goes through the reference rule units, fed with
the monthly aggregates (or, for complex SIMs and devices, with their raw events). The invoices are
identical to :func:`metering.reference.rate_reference`; property tests demand it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from metering.events import EVENT_COLUMNS, Event, EventError
from metering.history import AccountHistory, Usage, processing_order, replay
from metering.invoice import (
    InvoiceDocument,
    Line,
    PointsBlock,
    build_invoice,
    make_line,
    sort_invoices,
)
from metering.money import round_money
from metering.rating import Rating
from metering.rules import Charge, Outcome
from metering.rules.data_fee import data_fee, metered_note
from metering.rules.gateway_fee import gateway_fee
from metering.rules.line_maintenance_fee import line_maintenance_fee, maintenance_note
from metering.rules.platform_basic_fee import platform_basic_fee
from metering.rules.points import points_charges, points_ledger
from metering.rules.registrations import registration_note
from metering.rules.sim_basic_fee import WORDING as SIM_BASIC_WORDING
from metering.rules.sim_basic_fee import sim_basic_fee
from metering.rules.sms_fee import sms_fee
from metering.rules.suboption_fee import suboption_fee
from metering.store import EventStore, StoreError
from metering.tariff import Tariff
from metering.timeutil import month_start

BULK_TYPES: Final = ("sim.traffic", "mono.message", "sms.sent")
NEVER: Final = 2**62
MONTH_SQL: Final = "(year(make_timestamp(ts + 32400000000)) * 12 + month(make_timestamp(ts + 32400000000)) - 1)"
ORDER_KEY: Final = "(ts::HUGEINT * 1099511627776 + seq)"
EVENT_FIELDS: Final = ("ts", "type", "account", "id", *EVENT_COLUMNS, "extra", "source", "line")


def _events(connection: duckdb.DuckDBPyConnection, where: str, table: pa.Table | None = None) -> list[Event]:
    """Events matching a SQL condition, in ingest order."""
    if table is not None:
        connection.register("chosen", table)
    rows = connection.execute(f"SELECT {', '.join(EVENT_FIELDS)} FROM events WHERE {where} ORDER BY seq").fetchall()
    if table is not None:
        connection.unregister("chosen")
    found = []
    for row in rows:
        values: dict[str, Any] = dict(zip(EVENT_FIELDS, row, strict=True))
        values["extra"] = values["extra"] or ""
        values["source"] = values["source"] or ""
        found.append(Event(**values))
    return found


@dataclass
class Aggregates:
    """Usage summed per account, subject and month (numpy columns)."""

    account: npt.NDArray[np.object_]
    subject: npt.NDArray[np.object_]
    month: npt.NDArray[np.int64]
    amount: npt.NDArray[np.int64]
    events: npt.NDArray[np.int64]
    first_id: npt.NDArray[np.object_]
    first_ts: npt.NDArray[np.int64]
    first_seq: npt.NDArray[np.int64]
    used_id: npt.NDArray[np.object_]
    last_used_id: npt.NDArray[np.object_]
    min_ts: npt.NDArray[np.int64]
    max_ts: npt.NDArray[np.int64]


def _aggregate(connection: duckdb.DuckDBPyConnection, event_type: str, subject: str, amount: str) -> Aggregates:
    table = connection.sql(
        f"""
        SELECT account, {subject} AS subject, {MONTH_SQL} AS month, sum({amount})::BIGINT AS amount,
               count(*) AS events,
               arg_min(id, {ORDER_KEY}) AS first_id, arg_min(ts, {ORDER_KEY}) AS first_ts,
               arg_min(seq, {ORDER_KEY}) AS first_seq,
               arg_min(id, {ORDER_KEY}) FILTER (WHERE {amount} > 0) AS used_id,
               arg_max(id, {ORDER_KEY}) FILTER (WHERE {amount} > 0) AS last_used_id,
               min(ts) AS min_ts, max(ts) AS max_ts
        FROM events WHERE type = '{event_type}'
        GROUP BY ALL ORDER BY account, subject, month
        """
    ).to_arrow_table()

    def column(name: str) -> Any:
        return table.column(name).to_numpy(zero_copy_only=False)

    return Aggregates(
        account=column("account"),
        subject=column("subject"),
        month=column("month").astype(np.int64),
        amount=column("amount").astype(np.int64),
        events=column("events").astype(np.int64),
        first_id=column("first_id"),
        first_ts=column("first_ts").astype(np.int64),
        first_seq=column("first_seq").astype(np.int64),
        used_id=column("used_id"),
        last_used_id=column("last_used_id"),
        min_ts=column("min_ts").astype(np.int64),
        max_ts=column("max_ts").astype(np.int64),
    )


def _subject_spans(aggregates: Aggregates) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """Per (account, subject): row range in the aggregates and the min/max instants of its usage."""
    spans: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    count = len(aggregates.month)
    if not count:
        return spans
    change = np.flatnonzero(
        (aggregates.account[1:] != aggregates.account[:-1]) | (aggregates.subject[1:] != aggregates.subject[:-1])
    )
    starts = np.concatenate(([0], change + 1))
    ends = np.concatenate((change + 1, [count]))
    low = np.minimum.reduceat(aggregates.min_ts, starts)
    high = np.maximum.reduceat(aggregates.max_ts, starts)
    for start, end, first, last in zip(starts.tolist(), ends.tolist(), low.tolist(), high.tolist(), strict=True):
        spans[(aggregates.account[start], aggregates.subject[start])] = (start, end, first, last)
    return spans


def _simple(periods: list[Any] | None, first: int, last: int) -> bool:
    """A subject with exactly one registration period that contains all its usage."""
    if not periods or len(periods) != 1:
        return False
    period = periods[0]
    return bool(period.start <= first and (period.end is None or last < period.end))


@dataclass
class SimpleSims:
    """SIMs rated by the vectorised rules: one registration period, all traffic inside it."""

    account: list[str]
    sim: list[str]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    start_month: npt.NDArray[np.int64]
    end_month: npt.NDArray[np.int64]
    start_id: list[str]


@dataclass(frozen=True)
class VectorLines:
    """Charged lines of the vectorised rules for one month (column arrays)."""

    item: str
    rule: str
    sims: npt.NDArray[np.int64]
    quantity: npt.NDArray[np.int64]
    unit_price: Decimal
    extra: dict[str, Any]


def _amounts(quantity: npt.NDArray[np.int64], unit_price: Decimal, tariff: Tariff) -> list[Decimal]:
    """Rounded line amounts for an array of quantities (exact: one Decimal per distinct quantity)."""
    values, inverse = np.unique(quantity, return_inverse=True)
    rounded = [round_money(unit_price * int(value), tariff.amount_decimals, tariff.line_rounding) for value in values]
    return [rounded[index] for index in inverse.tolist()]


class FastRater:
    """Rates a DuckDB ``events`` table (a store) with the columnar rules."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, tariff: Tariff) -> None:
        """Prepare to rate the events of ``connection`` under ``tariff``."""
        self.connection = connection
        self.tariff = tariff

    def histories(self) -> tuple[dict[str, AccountHistory], list[EventError], Aggregates, set[tuple[str, str]]]:
        """Replay lifecycle events, aggregate usage, and split simple from complex subjects."""
        tariff = self.tariff
        bulk = ", ".join(f"'{name}'" for name in BULK_TYPES)
        lifecycle = _events(self.connection, f"type NOT IN ({bulk})")
        by_account: dict[str, list[Event]] = {}
        for event in processing_order(lifecycle):
            by_account.setdefault(event.account, []).append(event)
        traffic = _aggregate(self.connection, "sim.traffic", "sim", "up_bytes + down_bytes")
        messages = _aggregate(self.connection, "mono.message", "sim", "count")
        sms = _aggregate(self.connection, "sms.sent", "kind", "count")
        accounts = set(by_account) | set(traffic.account.tolist()) | set(messages.account.tolist())
        accounts |= set(sms.account.tolist())
        # First pass: the lifecycle only, to learn the registration periods.
        lifecycle_only = {account: replay(account, by_account.get(account, []), tariff)[0] for account in accounts}
        traffic_spans = _subject_spans(traffic)
        message_spans = _subject_spans(messages)
        complex_sims = {
            key
            for key, span in traffic_spans.items()
            if not _simple(lifecycle_only[key[0]].sims.get(key[1]), *span[2:])
        }
        complex_devices = {
            key
            for key, span in message_spans.items()
            if not _simple(lifecycle_only[key[0]].devices.get(key[1]), *span[2:])
        }
        raw: list[Event] = []
        for keys, event_type in ((complex_sims, "sim.traffic"), (complex_devices, "mono.message")):
            if keys:
                table = pa.table({"a": [k[0] for k in keys], "s": [k[1] for k in keys]})
                raw.extend(
                    _events(
                        self.connection,
                        f"type = '{event_type}' AND (account, sim) IN (SELECT (a, s) FROM chosen)",
                        table,
                    )
                )
        consuming = {kind: per for kind, per in tariff.points_consumption.items() if per}
        raw_by_account: dict[str, list[Event]] = {}
        for event in raw:
            raw_by_account.setdefault(event.account, []).append(event)
        histories: dict[str, AccountHistory] = {}
        errors: list[EventError] = []
        usage_months: dict[str, set[int]] = {}
        for aggregate in (traffic, messages, sms):
            for account, month in set(zip(aggregate.account.tolist(), aggregate.month.tolist(), strict=True)):
                usage_months.setdefault(account, set()).add(month)
        for account in sorted(accounts):
            events = by_account.get(account, [])
            if account in raw_by_account:
                events = processing_order(events + raw_by_account[account])
            # consumption is aggregated below, so the raw messages replayed here must not count twice
            history, found = replay(account, events, replace(tariff, points_consumption={}))
            histories[account] = history
            errors.extend(found)
            history.event_months.update(usage_months.get(account, ()))
        self._attach_usage(histories, traffic, messages, sms, complex_sims, complex_devices, consuming)
        simple_sims = {
            (account, sim)
            for account, history in histories.items()
            for sim, periods in history.sims.items()
            if len(periods) == 1 and (account, sim) not in complex_sims
        }
        return histories, errors, traffic, simple_sims

    @staticmethod
    def _attach_usage(
        histories: dict[str, AccountHistory],
        traffic: Aggregates,
        messages: Aggregates,
        sms: Aggregates,
        complex_sims: set[tuple[str, str]],
        complex_devices: set[tuple[str, str]],
        consuming: dict[str, int],
    ) -> None:
        """Give the histories monthly usage records built from the aggregates."""
        for index in range(len(messages.month)):
            account, sim = messages.account[index], messages.subject[index]
            if (account, sim) not in complex_devices:
                histories[account].messages.setdefault(sim, []).append(
                    Usage(int(messages.first_ts[index]), int(messages.amount[index]), messages.first_id[index], 0)
                )
        for index in range(len(sms.month)):
            histories[sms.account[index]].sms.setdefault(sms.subject[index], []).append(
                Usage(int(sms.first_ts[index]), int(sms.amount[index]), sms.first_id[index], 0)
            )
        per_account: dict[str, list[tuple[int, int, Usage]]] = {}
        for aggregate, kind in ((messages, "mono.message"), (sms, "sms.sent")):
            per = consuming.get(kind, 0)
            if not per:
                continue
            for index in range(len(aggregate.month)):
                usage = Usage(
                    int(aggregate.first_ts[index]), int(aggregate.amount[index]) * per, aggregate.first_id[index], 0
                )
                entry = (int(aggregate.first_ts[index]), int(aggregate.first_seq[index]), usage)
                per_account.setdefault(aggregate.account[index], []).append(entry)
        for account, entries in per_account.items():
            histories[account].consumption = [usage for _, _, usage in sorted(entries, key=lambda e: (e[0], e[1]))]
        for index in range(len(traffic.month)):
            account, sim = traffic.account[index], traffic.subject[index]
            if (account, sim) in complex_sims:
                continue
            # data packs read per-SIM monthly volumes from the history
            histories[account].traffic.setdefault(sim, []).append(
                Usage(int(traffic.first_ts[index]), int(traffic.amount[index]), traffic.first_id[index], 0)
            )

    def rate(self, months: Sequence[int]) -> Rating:
        """Rate ``months``: the invoices, with no outcomes (explanations use the reference rater)."""
        tariff = self.tariff
        histories, errors, traffic, simple_keys = self.histories()
        if errors:
            return Rating({}, {}, tuple(sorted(errors, key=lambda error: (error.source, error.line))))
        simple = self._simple_sims(histories, simple_keys)
        last = max(months, default=0)
        documents: dict[int, InvoiceDocument] = {}
        vectorised = self._vector_rules(simple, traffic, months)
        ledgers = {account: points_ledger(history, last, tariff) for account, history in histories.items()}
        for month in months:
            lines_by_account: dict[str, list[Line]] = {}
            for block in vectorised[month]:
                for line_account, line in self._materialise(block, simple, month):
                    lines_by_account.setdefault(line_account, []).append(line)
            invoices = []
            for account, history in histories.items():
                close = ledgers[account].get(month)
                lines = lines_by_account.get(account, [])
                lines.extend(self._reference_lines(history, simple_keys, month, close))
                if lines or (close is not None and close.active) or month in history.event_months:
                    invoices.append(build_invoice(account, lines, PointsBlock.from_close(close), tariff))
            documents[month] = InvoiceDocument(month, tariff.label, sort_invoices(invoices))
        return Rating(documents, {}, ())

    def _reference_lines(
        self, history: AccountHistory, simple_keys: set[tuple[str, str]], month: int, close: Any
    ) -> list[Line]:
        tariff = self.tariff
        complex_history = replace(
            history, sims={sim: p for sim, p in history.sims.items() if (history.account, sim) not in simple_keys}
        )
        outcomes: list[Outcome] = []
        outcomes += sim_basic_fee(complex_history, month, tariff)
        outcomes += line_maintenance_fee(complex_history, month, tariff)
        outcomes += data_fee(complex_history if tariff.data_plan == "metered" else history, month, tariff)
        outcomes += gateway_fee(history, month, tariff)
        outcomes += suboption_fee(history, month, tariff)
        outcomes += platform_basic_fee(history, month, tariff)
        outcomes += sms_fee(history, month, tariff)
        if close is not None:
            outcomes += points_charges(close, month, tariff)
        return [make_line(outcome, tariff) for outcome in outcomes if isinstance(outcome, Charge)]

    @staticmethod
    def _simple_sims(histories: dict[str, AccountHistory], keys: set[tuple[str, str]]) -> SimpleSims:
        ordered = sorted(keys)
        periods = [histories[account].sims[sim][0] for account, sim in ordered]
        return SimpleSims(
            account=[account for account, _ in ordered],
            sim=[sim for _, sim in ordered],
            start=np.array([p.start for p in periods], dtype=np.int64),
            end=np.array([NEVER if p.end is None else p.end for p in periods], dtype=np.int64),
            start_month=np.array([p.start_month for p in periods], dtype=np.int64),
            end_month=np.array([NEVER if p.end_month is None else p.end_month for p in periods], dtype=np.int64),
            start_id=[p.start_id for p in periods],
        )

    def _vector_rules(
        self, simple: SimpleSims, traffic: Aggregates, months: Sequence[int]
    ) -> dict[int, list[VectorLines]]:
        """SMC-38, SMC-39 and metered SMC-40 for the simple SIMs, month by month, as arrays."""
        tariff = self.tariff
        switches = tariff.interpretations
        count = len(simple.sim)
        index_of = {key: position for position, key in enumerate(zip(simple.account, simple.sim, strict=True))}
        rows = np.array(
            [index_of.get(key, -1) for key in zip(traffic.account.tolist(), traffic.subject.tolist(), strict=True)],
            dtype=np.int64,
        )
        keep = rows >= 0
        rows, month_of_row = rows[keep], traffic.month[keep]
        volume_of_row, events_of_row = traffic.amount[keep], traffic.events[keep]
        used_of_row, last_used_of_row = traffic.used_id[keep], traffic.last_used_id[keep]
        # sorted keys of (sim, month) with communication, for "last communication up to month M"
        span = 1 << 20
        communicated = volume_of_row > 0
        comm_keys = rows[communicated] * span + month_of_row[communicated]
        comm_order = np.argsort(comm_keys, kind="stable")
        comm_keys = comm_keys[comm_order]
        comm_last_ids = last_used_of_row[communicated][comm_order]
        transitional = tariff.transitional_start
        counted_from = simple.start_month.copy()
        before = (simple.start < month_start(transitional)) & (simple.end >= month_start(transitional))
        counted_from[before] = np.maximum(counted_from[before], transitional)
        length = tariff.idle_months
        sims = np.arange(count, dtype=np.int64)
        result: dict[int, list[VectorLines]] = {}
        for month in months:
            in_month = month_of_row == month
            volume = np.zeros(count, dtype=np.int64)
            volume[rows[in_month]] = volume_of_row[in_month]
            events = np.zeros(count, dtype=np.int64)
            events[rows[in_month]] = events_of_row[in_month]
            used_id = np.full(count, None, dtype=object)
            used_id[rows[in_month]] = used_of_row[in_month]
            covers = (simple.start_month <= month) & (simple.end_month >= month)
            used = volume > 0
            edge = (simple.start_month == month) | (simple.end_month == month)
            basic = covers & (used | (edge & (not switches.exempt_first_and_last_month)))
            blocks = [
                VectorLines(
                    "sim_basic_fee",
                    "SMC-38",
                    sims[basic],
                    np.ones(int(basic.sum()), dtype=np.int64),
                    tariff.sim_basic_fee,
                    {"used_id": used_id[basic]},
                )
            ]
            # SMC-39: the anchor of the idle run is max(counted_from, last communication + 1)
            position = np.searchsorted(comm_keys, sims * span + month, side="right") - 1
            valid = position >= 0
            safe = np.where(valid, position, 0)
            same = valid & (comm_keys[safe] // span == sims) if len(comm_keys) else np.zeros(count, dtype=bool)
            last_month = np.where(same, comm_keys[safe] % span if len(comm_keys) else 0, -(10**9))
            after_use = same & (last_month + 1 >= counted_from)
            anchor = np.where(after_use, last_month + 1, counted_from)
            idle = np.maximum(0, month - anchor + 1)
            through_end = simple.end >= month_start(month + 1)
            fee = covers & (idle >= length) & (idle % length == 0)
            if switches.deleted_in_final_month == "no_fee":
                fee &= through_end
            last_ids = np.full(count, None, dtype=object)
            if len(comm_keys):
                last_ids[same] = comm_last_ids[safe[same]]
            blocks.append(
                VectorLines(
                    "line_maintenance_fee",
                    "SMC-39",
                    sims[fee],
                    np.ones(int(fee.sum()), dtype=np.int64),
                    tariff.line_maintenance_fee,
                    {
                        "last_id": np.where(after_use, last_ids, np.full(count, None, dtype=object))[fee],
                        "idle": idle[fee],
                        "transitional": ((anchor == transitional) & (simple.start < month_start(transitional)))[fee],
                    },
                )
            )
            if tariff.data_plan == "metered":
                unit = tariff.data_unit_bytes
                if tariff.data_unit_rounding == "down":
                    units = volume // unit
                elif tariff.data_unit_rounding == "up":
                    units = -(-volume // unit)
                else:
                    units = np.array(
                        [round_money(Decimal(int(v)) / unit, 0, tariff.data_unit_rounding) for v in volume.tolist()],
                        dtype=np.int64,
                    )
                charged = covers & (units > 0)
                first_ids = np.full(count, None, dtype=object)
                first_ids[rows[in_month]] = traffic.first_id[keep][in_month]
                blocks.append(
                    VectorLines(
                        "data_fee",
                        "SMC-40",
                        sims[charged],
                        units[charged],
                        tariff.data_unit_price,
                        {"first_id": first_ids[charged], "volume": volume[charged], "events": events[charged]},
                    )
                )
            result[month] = blocks
        return result

    def _materialise(self, block: VectorLines, simple: SimpleSims, month: int) -> list[tuple[str, Line]]:
        """Turn one block of vectorised charges into invoice lines (notes from the shared rule code)."""
        tariff = self.tariff
        amounts = _amounts(block.quantity, block.unit_price, tariff)
        lines: list[tuple[str, Line]] = []
        sims = block.sims.tolist()
        quantities = block.quantity.tolist()
        extra = {key: value.tolist() for key, value in block.extra.items()}
        for position, sim_index in enumerate(sims):
            start_id = simple.start_id[sim_index]
            if block.item == "sim_basic_fee":
                used = extra["used_id"][position]
                evidence: tuple[str, ...] = (start_id, used) if used else (start_id,)
                note = registration_note(SIM_BASIC_WORDING, month, 1, bool(used))
            elif block.item == "line_maintenance_fee":
                last = extra["last_id"][position]
                evidence = (start_id, last) if last else (start_id,)
                note = maintenance_note(
                    month,
                    tariff.idle_months,
                    extra["idle"][position],
                    last is not None,
                    extra["transitional"][position],
                )
            else:
                first = extra["first_id"][position]
                evidence = (first,) if first else ()
                note = metered_note(
                    month, extra["volume"][position], extra["events"][position], quantities[position], tariff
                )
            line = Line(
                block.item,
                block.rule,
                simple.sim[sim_index],
                quantities[position],
                block.unit_price,
                amounts[position],
                evidence,
                note,
            )
            lines.append((simple.account[sim_index], line))
        return lines


def rate_connection(connection: duckdb.DuckDBPyConnection, tariff: Tariff, months: Sequence[int]) -> Rating:
    """Rate the ``events`` table of an open DuckDB connection."""
    return FastRater(connection, tariff).rate(months)


def rate_fast(paths: Sequence[Path], db: Path | None, tariff: Tariff, months: Sequence[int]) -> Rating:
    """Rate event logs and/or a store with the fast rater.

    A store alone is rated in place; files (with or without a store) are first ingested into an
    in-memory store, which also deduplicates them.
    """
    if db is not None and not paths:
        with EventStore(db, read_only=True) as store:
            return rate_connection(store.connection, tariff, months)
    with EventStore(":memory:") as memory:
        if db is not None:
            with EventStore(db, read_only=True) as source:
                memory.append(source.events())
        try:
            for path in paths:
                memory.ingest_file(path)
        except StoreError as exc:
            return Rating({}, {}, (EventError(str(exc)),))
        return rate_connection(memory.connection, tariff, months)
