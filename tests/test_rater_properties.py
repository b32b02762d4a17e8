"""Property tests: random account histories, the two raters agree, and the invariants hold."""

from __future__ import annotations

import pickle
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.eventlog import write_event_log
from metering.events import Event, EventError, event_from_mapping
from metering.fast import rate_fast
from metering.invoice import Invoice, Line, pack_lines
from metering.reference import rate_reference
from metering.rules.points import PointsBlock
from metering.tariff import Tariff, load_tariff
from metering.timeutil import format_instant, month_start, parse_instant, parse_month

FIRST = parse_month("2022-06")
LAST = parse_month("2026-06")
MONTHS = list(range(FIRST, LAST + 1))
START, END = month_start(FIRST), month_start(LAST + 1) + 86_400_000_000
TARIFFS = {
    "default": load_tariff(),
    "per-registration": load_tariff(Path(__file__).parent.parent / "scenarios/disputes/tariffs/per-registration.toml"),
    "data-pack": load_tariff(Path(__file__).parent.parent / "scenarios/disputes/tariffs/data-pack.toml"),
}


class Clock:
    """Hands out distinct instants, so file order never decides anything."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[int] = set()

    def between(self, low: int, high: int, count: int) -> list[int]:
        found: list[int] = []
        while len(found) < count and high - low > count * 2:
            instant = self.rng.randrange(low, high) // 1_000_000 * 1_000_000
            if instant not in self.used and low <= instant < high:
                self.used.add(instant)
                found.append(instant)
        return sorted(found)


def periods(clock: Clock, rng: random.Random, toggles: int) -> list[tuple[int, int | None]]:
    instants = clock.between(START, END, toggles)
    spans = []
    for index in range(0, len(instants), 2):
        spans.append((instants[index], instants[index + 1] if index + 1 < len(instants) else None))
    return spans


VOLUMES = [0, 1, 1000, 2**20, 5 * 2**20 + 3, 60 * 2**20, 2**62, 2**63 - 1]
"""Bytes of one traffic event: nothing, a little, whole and broken MiB, and the 64-bit edge."""
COUNTS = [1, 500, 7000, 30000, 2**63 - 1]
"""Messages of one mono.message event, up to the 64-bit edge."""


def month_of(ts: int) -> tuple[int, int]:
    month = FIRST + (ts - START) // (31 * 86_400_000_000)
    while month_start(month + 1) <= ts:
        month += 1
    while month_start(month) > ts:
        month -= 1
    return month_start(month), month_start(month + 1)


def make_history(seed: int, accounts: int) -> list[dict[str, Any]]:
    """A random history: SIMs, re-registrations, traffic, device IDs, messages with and without them, …

    It draws what logs from outside bring: messages of SIMs without a device ID or outside any
    registration, SIMs whose only communication is messages, a delete + re-register in the month
    of a communication, and volumes and counts at the 64-bit edge.
    """
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []

    def add(ts: int, event_type: str, account: str, **fields: Any) -> None:
        records.append(
            {"ts": format_instant(ts), "type": event_type, "account": account, "id": f"e{len(records)}", **fields}
        )

    for number in range(accounts):
        account = f"acct-{number}"
        clock = Clock(rng)
        for sim_number in range(rng.randint(1, 6)):
            prefix = rng.choice(["8981300", "8981200"])
            sim = f"{prefix}{number:04d}{sim_number:08d}"
            spans = periods(clock, rng, rng.choice([1, 1, 1, 2, 3, 4, 5]))
            messages_only = rng.random() < 0.2
            if rng.random() < 0.25 and spans and spans[-1][1] is None:
                # communication, deletion and re-registration in one month (I-3)
                low, high = month_of(spans[-1][0])
                moments = clock.between(max(low, spans[-1][0]), high, 3)
                if len(moments) == 3:
                    used, deleted, again = moments
                    spans[-1] = (spans[-1][0], deleted)
                    spans.append((again, None))
                    kind = "mono.message" if messages_only else "sim.traffic"
                    fields = {"count": 3} if messages_only else {"up_bytes": 5, "down_bytes": 0, "route": "closed"}
                    add(used, kind, account, sim=sim, **fields)
            for start, end in spans:
                add(start, "sim.registered", account, sim=sim)
                for instant in clock.between(start, end or END, 0 if messages_only else rng.randint(0, 6)):
                    volume = rng.choice(VOLUMES)
                    add(
                        instant,
                        "sim.traffic",
                        account,
                        sim=sim,
                        up_bytes=volume,
                        down_bytes=rng.randint(0, 3000),
                        route=rng.choice(["closed", "internet"]),
                    )
                if end is not None:
                    add(end, "sim.deleted", account, sim=sim)
            if rng.random() < 0.5:
                for start, end in periods(clock, rng, rng.choice([1, 2, 3])):
                    add(start, "mono.device.registered", account, sim=sim)
                    for instant in clock.between(start, end or END, rng.randint(0, 4)):
                        add(instant, "mono.message", account, sim=sim, count=rng.choice(COUNTS))
                    if end is not None:
                        add(end, "mono.device.deleted", account, sim=sim)
            if messages_only or rng.random() < 0.3:  # no device ID at that moment, or none at all
                for instant in clock.between(START, END, rng.randint(1, 4)):
                    add(instant, "mono.message", account, sim=sim, count=rng.choice(COUNTS))
        for gateway_number in range(rng.randint(0, 2)):
            for start, end in periods(clock, rng, rng.choice([1, 2, 3])):
                add(start, "gateway.created", account, gateway=f"gw-{gateway_number}")
                if end is not None:
                    add(end, "gateway.deleted", account, gateway=f"gw-{gateway_number}")
        for start, end in periods(clock, rng, rng.choice([0, 1, 2])):
            add(start, "option.enabled", account, option="terminal_lock", target="gw-0")
            if end is not None:
                add(end, "option.disabled", account, option="terminal_lock", target="gw-0")
        for instant in clock.between(START, END, rng.randint(0, 3)):
            add(instant, "sms.sent", account, kind=rng.choice(["2fa", "a2p"]), count=rng.randint(1, 5))
        for instant in clock.between(START, END, rng.randint(0, 3)):
            add(instant, "points.purchased", account, points=20000 * rng.randint(1, 3))
        for instant in clock.between(START, END, rng.randint(0, 2)):
            expires = instant + rng.choice([1, 20, 40, 400]) * 86_400_000_000
            add(instant, "points.granted", account, points=rng.randint(1, 9000), expires=format_instant(expires))
        if rng.random() < 0.15:
            (instant,) = clock.between(START, END, 1) or [END - 1]
            add(instant, "account.deleted", account)
    return records


def events_of(records: list[dict[str, Any]]) -> list[Event]:
    events = []
    for number, record in enumerate(records, start=1):
        event = event_from_mapping(record, "generated.jsonl", number)
        assert not isinstance(event, EventError), event
        events.append(event)
    return events


histories = st.tuples(st.integers(0, 2**32), st.integers(1, 3), st.sampled_from(sorted(TARIFFS)))
slow = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(histories)
def test_fast_and_reference_raters_give_identical_invoices(tmp_path_factory: Any, case: tuple[int, int, str]) -> None:
    seed, accounts, tariff_name = case
    tariff = TARIFFS[tariff_name]
    events = events_of(make_history(seed, accounts))
    directory = tmp_path_factory.mktemp("log")
    path = directory / "generated.jsonl"
    write_event_log(events, path)
    again = directory / "again.parquet"  # a re-delivery of part of the log, in the other format
    write_event_log(random.Random(seed).sample(events, k=len(events) // 3), again)
    reference = rate_reference(events, tariff, MONTHS)
    fast = rate_fast([path, again], None, tariff, MONTHS)
    assert not reference.errors and not fast.errors
    for month in MONTHS:
        assert fast.documents[month].dumps() == reference.documents[month].dumps()
    assert fast.event_months == reference.event_months  # what bill says of a month with no invoices


def test_a_platform_message_and_traffic_of_one_month_are_cited_in_processing_order(tmp_path: Path) -> None:
    """The first and last communication of a month: a message before (or after) the SIM's traffic wins.

    The fast rater takes traffic evidence from its monthly sums and the messages from the log:
    the earlier of the two must be cited for February's SIM basic fee, and the later for the
    line maintenance fee of February 2027 (SMC-39: 12 idle months after the last communication),
    as the reference's replay cites them.
    """
    messages_around = ("8981300000000000001", ["m-early", "t-zero", "t-used", "m-late"])
    traffic_around = ("8981300000000000002", ["t-first", "m-middle", "t-last"])
    days = {"m-early": 3, "t-zero": 4, "t-used": 10, "m-late": 25, "t-first": 2, "m-middle": 8, "t-last": 20}
    records: list[dict[str, Any]] = []
    for sim, ids in (messages_around, traffic_around):
        records.append(
            {"ts": "2026-01-05T09:00:00+09:00", "type": "sim.registered", "account": "a", "id": f"r{sim}", "sim": sim}
        )
        for name in ids:
            record: dict[str, Any] = {
                "ts": f"2026-02-{days[name]:02d}T09:00:00+09:00",
                "account": "a",
                "id": f"{name}-{sim[-1]}",
                "sim": sim,
            }
            if name.startswith("m-"):
                record.update(type="mono.message", count=1)
            else:
                volume = 0 if name == "t-zero" else 1000
                record.update(type="sim.traffic", up_bytes=volume, down_bytes=0, route="closed")
            records.append(record)
    events = events_of(records)
    path = tmp_path / "log.jsonl"
    write_event_log(events, path)
    months = list(range(parse_month("2026-01"), parse_month("2027-02") + 1))  # to 12 idle months after February
    for tariff in TARIFFS.values():
        reference = rate_reference(events, tariff, months)
        fast = rate_fast([path], None, tariff, months)
        assert not reference.errors and not fast.errors
        for month in months:
            assert fast.documents[month].dumps() == reference.documents[month].dumps()
    cited = " ".join(rate_fast([path], None, load_tariff(), months).documents[m].dumps() for m in months)
    for wins in ("m-early-1", "m-late-1", "t-first-2", "t-last-2"):
        assert wins in cited
    assert "m-middle-2" not in cited


def totals(tariff: Tariff, events: list[Event]) -> dict[int, str]:
    rating = rate_reference(events, tariff, MONTHS)
    assert not rating.errors
    return {month: document.dumps() for month, document in rating.documents.items()}


@slow
@given(histories, st.randoms(use_true_random=False))
def test_shuffling_and_reingesting_change_nothing(case: tuple[int, int, str], rng: random.Random) -> None:
    seed, accounts, tariff_name = case
    tariff = TARIFFS[tariff_name]
    events = events_of(make_history(seed, accounts))
    expected = totals(tariff, events)
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert totals(tariff, shuffled) == expected
    assert totals(tariff, events + rng.sample(events, k=len(events) // 2)) == expected


@slow
@given(histories)
def test_points_and_month_invariants(case: tuple[int, int, str]) -> None:
    seed, accounts, tariff_name = case
    tariff = TARIFFS[tariff_name]
    events = events_of(make_history(seed, accounts))
    whole = rate_reference(events, tariff, MONTHS)
    for month in MONTHS:
        alone = rate_reference(events, tariff, [month])
        assert alone.documents[month] == whole.documents[month], "billing month by month equals a range"
    deleted = {
        (record["account"], month_of(parse_instant(record["ts"]))[0])
        for record in make_history(seed, accounts)
        if record["type"] == "account.deleted"
    }
    given_points: dict[str, int] = {}
    taken: dict[str, int] = {}
    for month in MONTHS:
        for invoice in whole.documents[month].invoices:
            block = invoice.points
            assert block.closing >= 0
            assert block.closing == (
                block.opening
                + block.granted
                + block.purchased
                + block.shortfall_purchased
                - block.consumed
                - block.expired
            )
            if block.shortfall_purchased and (invoice.account, month_start(month)) in deleted:
                assert block.closing == 0 or block.purchased or block.granted, "I-6: they lapse with the account"
            elif block.shortfall_purchased:
                deficit = block.shortfall_purchased - block.closing
                assert deficit > 0
                assert block.shortfall_purchased % tariff.points_block == 0
                assert block.shortfall_purchased == max(
                    tariff.points_block, -(-deficit // tariff.points_block) * tariff.points_block
                )
            account = invoice.account
            given_points[account] = (
                given_points.get(account, 0) + block.granted + block.purchased + block.shortfall_purchased
            )
            taken[account] = taken.get(account, 0) + block.consumed + block.expired
            assert given_points[account] == taken[account] + block.closing, "granted = consumed + expired + balance"


texts = st.one_of(st.text(max_size=12), st.sampled_from(["", "\x1f", "\x1e", "a\x1fb", "\x1e\x1f"]))
lines = st.builds(
    Line,
    texts,
    texts,
    texts,
    st.integers(-(10**12), 10**12),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.lists(texts, max_size=3).map(tuple),
    texts,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=8))
def test_invoices_cross_a_process_boundary_unchanged(drawn: list[Line]) -> None:
    """A Ray shard's invoices are pickled with their lines packed as text: they come back equal."""
    invoice = Invoice("acct-1", "JPY", tuple(drawn), Decimal("1.5"), Decimal(0), Decimal("1.5"), PointsBlock(1, 2))
    again = pickle.loads(pickle.dumps(invoice))
    assert again == invoice
    assert [str(line.amount) for line in again.lines] == [str(line.amount) for line in drawn]  # same exponent too


def test_plain_lines_are_packed_as_a_few_texts() -> None:
    plain = tuple(
        Line("sim_basic_fee", "SMC-38", f"898130000000000{i:04d}", 1, Decimal(150), Decimal(150), (f"e{i}",), "n")
        for i in range(1000)
    )
    count, columns = pack_lines(plain)
    assert count == 1000 and len(columns) == 8 and all(isinstance(column, str) for column in columns)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(texts, st.just("\x00lines 1")), st.lists(lines, max_size=5)), max_size=4),
    st.sampled_from(["default@2026-11", 't"\\\u3042']),
)
def test_an_invoice_document_is_laid_out_as_the_json_encoder_lays_it_out(
    drawn: list[tuple[str, list[Line]]], tariff: str
) -> None:
    """The fast layout of a document's lines is byte for byte json.dumps(to_json(), indent=1): any text, any count."""
    import json

    from metering.invoice import InvoiceDocument

    invoices = tuple(
        Invoice(account, "JPY", tuple(found), Decimal("1.5"), Decimal(0), Decimal("1.5"), PointsBlock(1, 2))
        for account, found in drawn
    )
    document = InvoiceDocument(24_314, tariff, invoices)
    assert document.dumps() == json.dumps(document.to_json(), ensure_ascii=False, indent=1)
