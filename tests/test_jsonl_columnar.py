"""The columnar JSONL path reads exactly what the row reader reads, and refuses exactly what it refuses.

Lines are drawn from valid events of every type and then damaged the ways real logs are: a value of
another JSON type, a repeated, unknown or secret key, a trailing comma, ``NaN``, an integer beyond
64 bits, timestamps of every RFC 3339 variant and impossible ones, escapes, lone surrogates, bytes
that are not UTF-8, blank and whitespace lines, CRLF, two objects on one line. For every file the
columnar path must give the same events (same ids, content, file and line) or the same first error,
word for word, as :func:`metering.eventlog.read_event_log`.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import mgwsim

from metering.eventlog import EventLogError, read_event_log, write_event_log
from metering.events import BILLED_TYPES, Event
from metering.jsonl_ingest import CHUNK_BYTES, in_one_transaction, ingest_jsonl, line_chunks, prepared_chunks
from metering.store import COLUMNS_SQL, EventStore
from metering.timeutil import (
    MAX_INSTANT,
    MIN_INSTANT,
    STRICT_INSTANT_PATTERN,
    TimeFormatError,
    instant_sql,
    parse_instant,
)

ICCID = "8981300000000000001"
BASE: dict[str, dict[str, Any]] = {
    "sim.registered": {"sim": ICCID},
    "sim.deleted": {"sim": ICCID},
    "sim.traffic": {"sim": ICCID, "up_bytes": 10, "down_bytes": 20, "route": "closed", "session": "s-1"},
    "gateway.created": {"gateway": "gw-1"},
    "gateway.deleted": {"gateway": "gw-1"},
    "option.enabled": {"option": "ip_address", "target": "gw-1"},
    "option.disabled": {"option": "ip_address", "target": "gw-1"},
    "sms.sent": {"kind": "2fa", "delivered": True},
    "mono.device.registered": {"sim": ICCID},
    "mono.message": {"sim": ICCID, "bytes": 12},
    "points.purchased": {"points": 100},
    "points.granted": {"points": 100, "expires": "2027-01-01T00:00:00+09:00"},
    "account.deleted": {},
    "session.created": {"sim": ICCID, "session": "s-1", "imei": "3500000000001"},
    "sim.pin_failed": {"sim": ICCID, "attempt": 2, "ratio": 0.5},
}
TIMESTAMPS = [
    "2026-01-10T09:00:00+09:00",
    "2026-01-10T00:00:00Z",
    "2026-01-10t00:00:00z",
    "2026-01-10 00:00:00+09:00",
    "2026-01-10T00:00:00.5+09:00",
    "2026-01-10T00:00:00.123456Z",
    "2026-01-10T00:00:00.1234567Z",
    "2026-01-10T00:00:00.123456000Z",
    "2024-02-29T23:59:59-23:59",
    "2026-02-29T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-01-10T24:00:00Z",
    "2026-01-10T23:60:00Z",
    "2026-01-10T23:59:60Z",
    "2026-01-10T00:00:00+24:00",
    "2026-01-10T00:00:00+23:60",
    "0000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "2999-12-31T23:59:59.999999Z",
    "3000-01-01T00:00:00Z",
    "2026-01-10T00:00:00",
    "2026-01-10",
    "\uff12\uff10\uff12\uff16-01-10T00:00:00Z",  # full-width digits
    "2026-01-10T00:00:00Z\n",
    "",
]
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1.0, 1e400, 2**63, 2**63 - 1, "", "x", "10", [], {}, {"a": 1}]


def _line(record: dict[str, Any], style: int) -> str:
    if style == 0:
        return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
    if style == 1:
        return json.dumps(record, separators=(",", ":"))
    return json.dumps(record, indent=None, separators=(" , ", " : "))


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One line of a log (with its newline): an event, often damaged, or something else entirely."""
    shape = draw(st.integers(0, 30))
    if shape == 0:
        return draw(st.sampled_from([b"\n", b"   \n", b"\t\r\n", b"\x0c\n", b"[1]\n", b"1\n", b'"x"\n', b"{}\n"]))
    if shape == 1:
        return draw(st.binary(max_size=40)).replace(b"\n", b"") + b"\n"
    event_type = draw(st.sampled_from(sorted(BASE)))
    record: dict[str, Any] = {
        "ts": "2026-01-10T09:00:00+09:00",
        "type": event_type,
        "account": "acct-1",
        "id": f"e-{draw(st.integers(0, 6))}",
        **BASE[event_type],
    }
    for _ in range(draw(st.integers(0, 2))):
        action = draw(st.integers(0, 8))
        keys = sorted(record)
        if action == 0:
            record[draw(st.sampled_from(keys))] = draw(st.sampled_from(ODD_VALUES))
        elif action == 1:
            record["ts"] = draw(st.sampled_from(TIMESTAMPS))
        elif action == 2:
            record.pop(draw(st.sampled_from(keys)))
        elif action == 3:
            record[draw(st.sampled_from(["pin", "extra_field", "puk_code", "count", "sim", "gateway"]))] = 1
        elif action == 4:
            record["id"] = draw(st.sampled_from(['a"b', "\u00e9", "x" * 201, "", "\\", "\ud800", "e-1\u0000"]))
        elif action == 5 and event_type == "points.granted":
            record["expires"] = draw(st.sampled_from(TIMESTAMPS))
        elif action == 6:
            record["count"] = draw(st.sampled_from([1, 0, 5, -2, 2**63]))
        elif action == 7:
            record["account"] = draw(st.sampled_from(["acct 1", "a" * 129, "acct-2", "<b>"]))
        else:
            record["up_bytes"] = draw(st.integers(-3, 2**64))
    try:
        text = _line(record, draw(st.integers(0, 2)))
    except ValueError:
        text = json.dumps(record)
    damage = draw(st.integers(0, 14))
    if damage == 0:
        text = text[:-1] + ", }"
    elif damage == 1:
        text = text[:-1] + ',"ts": "2026-01-10T09:00:00+09:00"}'
    elif damage == 2:
        text = text.replace('"account"', '"\\u0061ccount"', 1)
    elif damage == 3:
        text = text.replace("10", "NaN", 1)
    elif damage == 4:
        text = text + text
    elif damage == 5:
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif damage == 6:
        text = "  " + text + " "
    elif damage == 7:
        text = "\ufeff" + text
    elif damage == 8:
        return (text + "\r\n").encode("utf-8", "surrogatepass")
    elif damage == 9:
        text = text[:-1] + ' , "route" : "internet"}'
    elif damage == 10:
        return text.encode("utf-8", "surrogatepass")[:-1] + b"\xff}\n"
    return (text + "\n").encode("utf-8", "surrogatepass")


def _row_read(path: Path) -> tuple[list[tuple[Event, str, int]], str | None]:
    events: list[tuple[Event, str, int]] = []
    try:
        for event in read_event_log(path):
            events.append((event, event.source, event.line))
    except EventLogError as exc:
        return events, str(exc)
    return events, None


def _columnar_read(path: Path, chunk_bytes: int | None = None) -> tuple[list[tuple[Event, str, int]], str | None]:
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE events ({COLUMNS_SQL})")
    size = chunk_bytes or CHUNK_BYTES
    try:  # in a transaction, as the store reads a log (it once read a line DuckDB refuses only outside one)
        compressed = path.suffix == ".gz"
        in_one_transaction(
            connection, lambda careful: ingest_jsonl(connection, path, compressed, 0, "events", size, careful)
        )
    except EventLogError as exc:
        return [], str(exc)
    names = [column[0] for column in connection.execute("SELECT * FROM events LIMIT 0").description]
    found = []
    for row in connection.execute("SELECT * FROM events ORDER BY seq").fetchall():
        values = dict(zip(names, row, strict=True))
        values.pop("seq")
        values["extra"] = values["extra"] or ""
        event = Event(**values)
        found.append((event, event.source, event.line))
    return found, None


def _same(path: Path, chunk_bytes: int | None = None) -> None:
    rows, row_error = _row_read(path)
    columns, column_error = _columnar_read(path, chunk_bytes)
    assert column_error == row_error
    if row_error is None:
        assert columns == rows


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines(), min_size=1, max_size=12))
def test_the_columnar_path_reads_and_refuses_exactly_as_the_row_reader(tmp_path: Path, drawn: list[bytes]) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(drawn))
    _same(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines(), min_size=1, max_size=30), st.integers(1, 400))
def test_chunks_cut_anywhere_give_the_same_events_and_lines(tmp_path: Path, drawn: list[bytes], size: int) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(drawn))
    _same(path, chunk_bytes=size)


NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,12}", fullmatch=True)
IDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
"""Any Unicode text but lone surrogates: quotes, backslashes, colons, controls and non-ASCII in ids."""


@st.composite
def valid_lines(draw: st.DrawFn) -> bytes:
    """One line of a valid billed event, written any way JSON allows: escapes, key order, spacing."""
    event_type = draw(st.sampled_from([name for name in sorted(BASE) if name in BILLED_TYPES]))
    record: dict[str, Any] = {
        "ts": draw(st.sampled_from([*TIMESTAMPS[:6], TIMESTAMPS[8]])),
        "type": event_type,
        "account": draw(NAMES),
        "id": draw(IDS),
        **BASE[event_type],
    }
    if event_type == "sim.traffic":
        record.update(up_bytes=draw(st.integers(0, 2**63 - 1)), session=draw(st.one_of(st.none(), NAMES)))
        if draw(st.booleans()):
            record["gateway"] = draw(NAMES)
    keys = draw(st.permutations(sorted(record)))
    ordered = {key: record[key] for key in keys if record[key] is not None or draw(st.booleans())}
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]))
    text = json.dumps(ordered, ensure_ascii=draw(st.booleans()), separators=separators)
    return (text + draw(st.sampled_from(["\n", "\r\n"]))).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(valid_lines(), min_size=1, max_size=12))
def test_valid_logs_written_any_way_json_allows_give_the_same_events(tmp_path: Path, drawn: list[bytes]) -> None:
    """Every value arrives as the row reader decodes it (escaped or not), with its file and line."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(drawn))
    rows, row_error = _row_read(path)
    assert row_error is None
    columns, column_error = _columnar_read(path)
    assert column_error is None
    assert columns == rows


def test_a_file_without_a_final_newline_and_one_line_longer_than_a_chunk(tmp_path: Path) -> None:
    record = {"ts": "2026-01-10T09:00:00+09:00", "type": "sim.registered", "account": "a", "id": "x" * 150}
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "id": "y"}), encoding="utf-8")
    chunks = list(line_chunks(path, False, size=16))
    assert sum(chunk.lines for chunk in chunks) == 2
    _same(path, chunk_bytes=16)


@pytest.mark.parametrize("size", [7, 64, 1000])
def test_a_chunk_keeps_its_bytes_while_the_next_one_is_read(tmp_path: Path, size: int) -> None:
    """The reader thread reads chunk k + 1 while chunk k is checked: k's bytes must not move meanwhile."""
    lines = [f'{{"n": {n}, "pad": "{"x" * (n % 90)}"}}\n'.encode() for n in range(400)]
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(lines))
    chunks = line_chunks(path, False, size=size)
    seen: list[bytes] = []
    current = next(chunks)
    for following in chunks:  # both held at once, as prepared_chunks holds them
        seen.append(bytes(current.data))
        assert bytes(current.data) == b"".join(lines[current.first_line - 1 : following.first_line - 1])
        current = following
    seen.append(bytes(current.data))
    assert b"".join(seen) == path.read_bytes()
    prepared = list(prepared_chunks(path, False, size=size))
    assert sum(item.chunk.lines for item in prepared) == len(lines)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.99])
def test_a_damaged_compressed_log_is_named_at_the_row_readers_line(tmp_path: Path, cut: float) -> None:
    record = {"ts": "2026-01-10T09:00:00+09:00", "type": "sim.traffic", "account": "a", "sim": ICCID}
    text = "".join(
        json.dumps({**record, "id": f"t{n}", "up_bytes": n, "down_bytes": 1, "route": "closed"}) + "\n"
        for n in range(20_000)
    )
    packed = gzip.compress(text.encode())
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(packed[: int(len(packed) * cut)])
    _, row_error = _row_read(path)
    assert row_error is not None and "compressed stream is damaged" in row_error
    _, column_error = _columnar_read(path, chunk_bytes=65_536)
    assert column_error == row_error


def test_ingest_of_a_jsonl_log_stores_nothing_when_a_line_is_bad(tmp_path: Path) -> None:
    good = {"ts": "2026-01-10T09:00:00+09:00", "type": "sim.registered", "account": "a", "sim": ICCID}
    path = tmp_path / "log.jsonl"
    path.write_text(
        "".join(json.dumps({**good, "id": f"r{n}"}) + "\n" for n in range(1000)) + '{"type": "sim.registered"}\n',
        encoding="utf-8",
    )
    with EventStore(tmp_path / "store.duckdb") as store:
        with pytest.raises(EventLogError, match=r"log\.jsonl:1001: sim\.registered: missing required field 'ts'"):
            store.ingest_file(path)
        assert store.count() == 0


DISPUTE = Path(__file__).resolve().parent.parent / "scenarios/disputes/reregistration.jsonl"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b'{"ts": oops}\n'),  # not JSON, though it looks like an object
        (b"", b"garbage\n"),
        (b"\xef\xbb\xbf", b""),  # a byte order mark, as some editors on Windows write it: accepted by both
        (b"", b'{"ts": "2026-01-10T09:00:00+09:00", "type": "sms.sent", "account": "acct-1", "kind": "a2p",}\n'),
    ],
    ids=["not-json", "garbage", "byte-order-mark", "trailing-comma"],
)
def test_bill_and_ingest_read_a_line_duckdb_cannot_parse_as_the_row_reader(
    tmp_path: Path, before: bytes, after: bytes
) -> None:
    """``bill`` (fast and reference) and ``ingest`` as a user runs them: the same invoices, or the same line named.

    The columnar path reads a log inside a transaction. A line DuckDB's parser refuses once aborted
    that transaction, so every such log ended in "the store cannot be read (… transaction is aborted)".
    """
    log = tmp_path / "log.jsonl"
    log.write_bytes(before + DISPUTE.read_bytes() + after)
    fast = mgwsim("bill", log, "--month", "2026-01", columns=400)
    reference = mgwsim("bill", log, "--month", "2026-01", "--rater", "reference", columns=400)
    ingest = mgwsim("ingest", log, "--db", tmp_path / "store.duckdb", columns=400)
    assert (fast.returncode, fast.stdout, fast.stderr) == (reference.returncode, reference.stdout, reference.stderr)
    if reference.returncode == 0:
        assert ingest.returncode == 0, ingest.stderr
        assert ingest.stderr.strip() == f"{log}: 6 events added, 0 already stored"
    else:
        assert reference.returncode == 2 and reference.stderr.startswith(f"mgwsim: error: {log}:7: "), reference.stderr
        assert (ingest.returncode, ingest.stderr) == (2, reference.stderr)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sampled_from(TIMESTAMPS),
        st.builds(
            "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
            st.integers(0, 9999),
            st.integers(0, 13),
            st.integers(0, 32),
            st.sampled_from(["T", "t", " "]),
            st.integers(0, 25),
            st.integers(0, 61),
            st.integers(0, 61),
            st.sampled_from(["", ".5", ".000001", ".1234567"]),
            st.sampled_from(["Z", "z", "+09:00", "-23:59", "+24:00", "-00:60", ""]),
        ),
    )
)
def test_the_sql_instant_is_parse_instant_or_undecided(text: str) -> None:
    found = (
        duckdb.connect().execute(f"SELECT {instant_sql('t')} FROM (SELECT ?::VARCHAR AS t)", [text]).fetchall()[0][0]
    )
    try:
        expected: int | None = parse_instant(text)
    except TimeFormatError:
        expected = None
    strict = re.fullmatch(STRICT_INSTANT_PATTERN, text) is not None
    if not strict:
        assert found is None
    if found is not None and MIN_INSTANT <= found <= MAX_INSTANT:
        assert found == expected
    if (
        strict and expected is not None and (text.endswith("Z") or text[-2:] <= "59")
    ):  # what logs hold is decided in SQL
        assert found == expected


def test_a_grant_expiring_at_its_own_instant_is_read_alike_from_jsonl_and_parquet(tmp_path: Path) -> None:
    """EVENTS.md sets no order between a grant and its expiry; the bulk Parquet check once did."""
    record = {"ts": "2026-01-10T09:00:00+09:00", "type": "points.granted", "account": "a", "id": "g", "points": 5}
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text(json.dumps({**record, "expires": record["ts"]}) + "\n", encoding="utf-8")
    parquet = tmp_path / "log.parquet"
    write_event_log(read_event_log(jsonl), parquet)
    for path in (jsonl, parquet):
        with EventStore(":memory:") as store:
            assert store.ingest_file(path) == (1, 0)
            assert store.read_events() == list(read_event_log(jsonl))


def test_a_lone_surrogate_is_refused_by_both_paths_with_its_field_named(tmp_path: Path) -> None:
    """Once a traceback in ``bill``: the row reader took it, and the store could not hold it."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"ts": "2026-01-10T09:00:00+09:00", "type": "account.deleted", "account": "a", "id": "\\ud800"}\n')
    expected = f"{path}:1: field 'id' holds a lone surrogate (\\ud800-\\udfff): not Unicode text"
    assert _row_read(path) == ([], expected)
    assert _columnar_read(path) == ([], expected)
