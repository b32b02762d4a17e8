"""Event validation and the log readers: bad input is named by file and line, secrets rejected."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from conftest import write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import mgwsim

from metering import atomic
from metering.eventlog import EventLogError, read_event_log, write_event_log
from metering.events import Event, EventError, event_from_mapping
from metering.timeutil import (
    MAX_INSTANT,
    month_indexes,
    month_of_instant,
    month_sql,
    months_of_instants,
    parse_instant,
    parse_month,
)

SIM = "8981300000000000001"


def traffic(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "ts": "2026-01-10T09:00:00+09:00",
        "type": "sim.traffic",
        "account": "acct-1",
        "sim": SIM,
        "up_bytes": 10,
        "down_bytes": 20,
        "route": "closed",
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


def test_jst_month_edge() -> None:
    assert month_of_instant(parse_instant("2026-01-31T15:30:00Z")) == parse_month("2026-02")
    assert month_of_instant(parse_instant("2026-01-31T14:59:59.999999Z")) == parse_month("2026-01")
    assert month_of_instant(parse_instant("2026-02-01T00:00:00+09:00")) == parse_month("2026-02")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ts": "2026-01-10T09:00:00"}, "no UTC offset"),
        ({"ts": "yesterday"}, "not RFC 3339"),
        ({"type": "sim.teleported"}, "unknown event type"),
        ({"up_bytes": -1}, "must be >= 0"),
        ({"up_bytes": "10"}, "must be an integer"),
        ({"up_bytes": True}, "must be an integer"),
        ({"up_bytes": 2**64}, "larger than 2^63-1"),
        ({"down_bytes": None}, "missing required field 'down_bytes'"),
        ({"route": "sideways"}, "must be one of closed, internet"),
        ({"sim": "12345"}, "ICCID"),
        ({"account": None}, "missing required field 'account'"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_bad_fields_are_rejected_with_a_reason(changes: dict[str, object], reason: str) -> None:
    result = event_from_mapping(traffic(**changes))
    assert isinstance(result, EventError)
    assert reason in result.reason


@pytest.mark.parametrize("field", ["pin", "PUK", "passcode", "new_pin", "pin1", "PassCode"])
def test_events_carrying_secrets_are_rejected_without_echoing_them(field: str) -> None:
    result = event_from_mapping(traffic(**{field: "93817264"}))
    assert isinstance(result, EventError)
    assert "secret" in result.reason
    assert "93817264" not in result.reason


def test_content_id_is_stable_and_independent_of_offset_spelling() -> None:
    first = event_from_mapping(traffic())
    second = event_from_mapping(traffic(ts="2026-01-10T00:00:00Z"))
    assert isinstance(first, Event) and isinstance(second, Event)
    assert first.id == second.id and first.id.startswith("h-")
    third = event_from_mapping(traffic(up_bytes=11))
    assert isinstance(third, Event) and third.id != first.id


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "log.jsonl", [traffic(), traffic(up_bytes=-5)])
    with pytest.raises(EventLogError, match=r"log\.jsonl:2: sim\.traffic: field 'up_bytes' must be >= 0"):
        list(read_event_log(path))


def test_invalid_json_and_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"ts": 1\n')
    with pytest.raises(EventLogError, match=r"log\.jsonl:1: not valid JSON"):
        list(read_event_log(path))
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(EventLogError, match=r"log\.jsonl:1:"):
        list(read_event_log(path))


def test_a_control_character_in_a_string_is_named_with_its_column(tmp_path: Path) -> None:
    """json says "Invalid control character at"; the message once read "… at at column 39"."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"ts": "2026-01-10T09:00:00+09:00", "a\x01": 1}\n')
    with pytest.raises(EventLogError) as raised:
        list(read_event_log(path))
    assert str(raised.value) == f"{path}:1: not valid JSON (Invalid control character at column 39)"


def test_a_pandas_index_column_is_named_as_one(tmp_path: Path) -> None:
    """A Parquet log written by pandas with its index: refused (not an event field), with the way out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    event = traffic()
    table = pa.table({**{name: [value] for name, value in event.items()}, "__index_level_0__": [7]})
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    with pytest.raises(EventLogError) as raised:
        list(read_event_log(path))
    hint = "(a pandas index: write the log with index=False)"
    assert str(raised.value) == f"{path}:1: sim.traffic: unknown field '__index_level_0__' {hint}"


@pytest.mark.parametrize("column", ["ts", "expires"])
def test_a_parquet_time_column_of_numbers_is_refused(tmp_path: Path, column: str) -> None:
    """Seconds or milliseconds since 1970 from another system were read as microseconds: events of
    1970, and a month's invoice empty, exit 0. Both raters now refuse the file, naming the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    grant = {"ts": "2026-01-10T09:00:00+09:00", "type": "points.granted", "account": "acct-1", "id": "g1",
             "points": 100, "expires": "2026-12-31T23:59:59+09:00"}  # fmt: skip
    table = pa.table({name: [value] for name, value in grant.items()})
    path = tmp_path / "log.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array([1_767_225_600])), path)
    reason = f"{path}: column {column!r} is int64, not a time: give a timestamp with a time zone, or RFC 3339 text"
    with pytest.raises(EventLogError) as raised:
        list(read_event_log(path))
    assert str(raised.value) == reason + " with an offset"
    for rater in ("fast", "reference"):
        done = mgwsim("bill", path, "--month", "2026-01", "--rater", rater, columns=400)
        assert (done.returncode, done.stdout, done.stderr.strip()) == (2, "", f"mgwsim: error: {reason} with an offset")


def test_truncated_gzip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wt") as stream:
        for index in range(2000):
            stream.write('{"ts": "2026-01-10T09:00:00+09:00", "type": "sms.sent", "account": "a", "kind": "a2p", ')
            stream.write(f'"id": "s{index}"}}\n')
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(EventLogError, match=r"log\.jsonl\.gz:\d+: compressed stream is damaged or truncated"):
        list(read_event_log(path))


def test_parquet_and_jsonl_round_trip_to_the_same_events(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "log.jsonl", [traffic(), traffic(up_bytes=7, session="s-1", gateway="gw-1")])
    events = list(read_event_log(source))
    write_event_log(events, tmp_path / "copy.parquet")
    write_event_log(events, tmp_path / "copy.jsonl.gz")
    assert list(read_event_log(tmp_path / "copy.parquet")) == events
    assert list(read_event_log(tmp_path / "copy.jsonl.gz")) == events


def _many_events(count: int) -> list[Event]:
    events: list[Event] = []
    for index in range(count):
        event = event_from_mapping(traffic(id=f"t{index}", up_bytes=index * 7919 % 100_003, down_bytes=index))
        assert isinstance(event, Event), event
        events.append(event)
    return events


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_a_log_is_sent_to_the_disk_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """Not all at the final fsync: write-back of what was written is started every WRITE_BEHIND_BYTES."""
    monkeypatch.setattr(atomic, "WRITE_BEHIND_BYTES", 64 << 10)
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    events = _many_events(40_000)
    path = tmp_path / f"log{suffix}"
    write_event_log(events, path)
    assert list(read_event_log(path)) == events
    size = path.stat().st_size
    assert advised, "nothing was sent to the disk before the end"
    assert {advice for _, _, advice in advised} == {os.POSIX_FADV_DONTNEED}
    ends = [offset + length for offset, length, _ in advised]
    assert ends == sorted(ends) and all(end <= size for end in ends)
    assert [offset for offset, _, _ in advised] == sorted(offset for offset, _, _ in advised)
    assert ends[-1] > size - (1 << 20) - (64 << 10), "the write-back fell behind the writer"


def test_a_compressed_log_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    """No temporary file name and no clock in the gzip header: the same events give the same file."""
    events = _many_events(100)
    first, second = tmp_path / "a" / "log.jsonl.gz", tmp_path / "b" / "log.jsonl.gz"
    write_event_log(events, first)
    write_event_log(events, second)
    assert first.read_bytes() == second.read_bytes()
    assert list(read_event_log(second)) == events


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="unknown event log format"):
        read_event_log(tmp_path / "log.csv")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_INSTANT))
def test_the_jst_month_is_the_same_fact_in_python_and_in_sql(instant: int) -> None:
    """One JST month, three forms: Python's, DuckDB's (the fast rater) and numpy's (engines, fast rater)."""
    import duckdb
    import numpy as np

    ((found,),) = duckdb.execute(f"SELECT {month_sql(str(instant))}").fetchall()
    assert found == month_of_instant(instant)
    assert int(months_of_instants(np.array([instant]))[0]) == found
    assert int(month_indexes(np.array([instant // 1_000_000 + 9 * 3600]))[0]) == found
