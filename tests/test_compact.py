"""Compact daily traffic: the columns the fast engine keeps instead of one object per record.

The columnar accumulator must sum like the reference engine's dict, and a compact log must read,
write and rate exactly like the same events as a plain list.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.compact import CompactLog, CompactTraffic
from metering.eventlog import log_order, read_event_log, write_event_log
from metering.events import Event
from metering.fast import rate_events
from metering.store import EventStore, StoreError
from simulator.daily_columns import ColumnarDailyTraffic
from simulator.engine import DailyTraffic
from simulator.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parent.parent


def fake_device(index: int) -> Any:
    fleet = SimpleNamespace(account=f"acct-{index % 2}", gateway=f"gw-{index % 3}")
    return SimpleNamespace(index=index, iccid=f"89813{index:014d}", fleet=fleet)


rows = st.lists(
    st.tuples(
        st.integers(0, 3),  # device
        st.integers(20_000, 20_004),  # day
        st.integers(0, 10_000),  # up
        st.integers(0, 10_000),  # down
        st.integers(0, 500),  # stamp
        st.sampled_from(["closed", "internet"]),
        st.booleans(),  # added as a bulk row (else one by one)
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(rows)
def test_columns_sum_per_sim_and_day_like_the_reference_dict(drawn: list[tuple[Any, ...]]) -> None:
    devices = [fake_device(index) for index in range(4)]
    reference, columns = DailyTraffic(), ColumnarDailyTraffic()
    for device in devices:  # the fast engine plans one device at a time
        for index, day, up, down, stamp, route, bulk in drawn:
            if index != device.index:
                continue
            reference.add(device, day, up, down, stamp, route, device.fleet.gateway)
            if bulk:
                one = np.array([day])
                columns.add_rows(device, one, np.array([up]), np.array([down]), np.array([stamp]), route)
            else:
                columns.add(device, day, up, down, stamp, route, device.fleet.gateway)
        columns.device_done(device)
    expected = sorted(  # log order: by account, then by time
        ((f"acct-{index % 2}", stamp, index, day), (up, down, route))
        for (index, day), (up, down, stamp, route, _) in reference.days.items()
        if up + down
    )
    compact = columns.compact(devices, start_us=0).in_log_order()
    got = [
        (
            (event.account, event.ts // 1_000_000, int(str(event.sim)[-14:]), int(event.id.rsplit("/", 1)[1])),
            (event.up_bytes, event.down_bytes, event.route),
        )
        for event in compact.events()
    ]
    assert got == expected


def test_a_compact_log_writes_and_reads_back_as_the_same_events(small_load_log: CompactLog, tmp_path: Path) -> None:
    listed = list(small_load_log)
    assert len(listed) == len(small_load_log)
    assert [log_order(event) for event in listed] == sorted(log_order(event) for event in listed)
    for name in ("log.parquet", "log.jsonl"):
        path = tmp_path / name
        assert write_event_log(small_load_log, path) == len(listed)
        assert [event.content() for event in read_event_log(path)] == [event.content() for event in listed]


def test_a_parquet_log_is_the_same_file_however_its_events_were_handed_in(
    small_load_log: CompactLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups of one size: a log written whole, or in pieces as a run in shards appends it, is one file."""
    from metering import eventlog

    monkeypatch.setattr(eventlog, "ROW_GROUP_ROWS", 4_000)
    # pages and dictionaries as small as a group of a million rows fills them: where the writer
    # cuts a page or gives up a dictionary must not depend on where the pieces were cut
    small_pages = functools.partial(pq.ParquetWriter, data_page_size=8_192, dictionary_pagesize_limit=16_384)
    monkeypatch.setattr(pq, "ParquetWriter", small_pages)  # the module the writer looks it up in
    listed = list(small_load_log)
    whole = tmp_path / "whole.parquet"
    write_event_log(small_load_log, whole)
    pieces = tmp_path / "pieces.parquet"
    appender = eventlog.EventLogAppender(pieces, "parquet")
    for first in range(0, len(listed), 777):
        appender.add(listed[first : first + 777])
    appender.close()
    assert pieces.read_bytes() == whole.read_bytes()
    groups = pq.ParquetFile(whole).metadata
    sizes = [groups.row_group(number).num_rows for number in range(groups.num_row_groups)]
    assert sizes[:-1] == [4_000] * (len(sizes) - 1) and 0 < sizes[-1] <= 4_000 and sum(sizes) == len(listed)


def _shuffled(traffic: CompactTraffic, seed: int) -> CompactTraffic:
    """The same rows in another order (as another batch size counts them), in fresh columns."""
    order = np.random.default_rng(seed).permutation(len(traffic))
    rows = ("second", "sim", "up_bytes", "down_bytes", "route", "key")
    return dataclasses.replace(traffic, **{name: getattr(traffic, name)[order].copy() for name in rows})


def test_a_compact_log_has_one_order_whatever_order_its_rows_were_counted_in(small_load_log: CompactLog) -> None:
    """Traffic rows of one account and second come in SIM order, not in the order they were counted."""
    again = CompactLog(list(small_load_log.events), _shuffled(small_load_log.traffic, seed=5))
    assert [event.content() for event in again] == [event.content() for event in small_load_log]


def test_a_compact_log_rates_like_the_same_events_in_a_list(small_load: Scenario, small_load_log: CompactLog) -> None:
    scenario = small_load
    compact = rate_events(small_load_log, scenario.tariff, scenario.billing_months)
    plain = rate_events(list(small_load_log), scenario.tariff, scenario.billing_months)
    assert not compact.errors
    for month in scenario.billing_months:
        assert compact.documents[month].dumps() == plain.documents[month].dumps()


@pytest.mark.parametrize("method", ["append_compact", "view_compact"])
def test_compact_rows_are_idempotent_and_checked(small_load_log: CompactLog, method: str) -> None:
    """Rows already stored are skipped; a stored id with other content, or a bad ICCID, is refused."""
    with EventStore(":memory:") as store:
        assert store.append_compact(small_load_log.traffic) == (len(small_load_log.traffic), 0)
        if method == "append_compact":
            assert store.append_compact(small_load_log.traffic) == (0, len(small_load_log.traffic))
        changed = small_load_log.traffic
        changed = type(changed)(**{**changed.__dict__, "up_bytes": changed.up_bytes + 1})
        with pytest.raises(StoreError, match="different content"):
            getattr(store, method)(changed)
        broken = type(changed)(**{**changed.__dict__, "iccids": ("not-an-iccid", *changed.iccids[1:])})
        with pytest.raises(StoreError, match="not an ICCID"):
            getattr(store, method)(broken)


def test_compact_rows_as_a_view_are_the_rows_append_would_store(small_load_log: CompactLog) -> None:
    """The online metering's view holds, row for row, what the store would: ids, order, source and line."""
    everything = "SELECT * FROM events ORDER BY seq"
    with EventStore(":memory:") as stored, EventStore(":memory:") as viewed:
        for store in (stored, viewed):
            store.append(small_load_log.events)
        stored.append_compact(small_load_log.traffic)
        assert viewed.view_compact(small_load_log.traffic) == len(small_load_log.traffic)
        assert viewed.connection.execute(everything).fetchall() == stored.connection.execute(everything).fetchall()


def test_the_load_scenario_file_is_valid() -> None:
    assert load_scenario(ROOT / "scenarios/load-100k.toml").sim_count == 100_000


@pytest.mark.parametrize("chunk_rows", [250_000, 997])
def test_the_vectorised_jsonl_is_byte_for_byte_the_event_writer(
    small_load_log: CompactLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    """The column-built JSONL of a compact log equals event_line of every event, in the same order.

    With small chunks (dozens, built two at a time in threads, ordinary events among them), the
    chunks still come out in log order.
    """
    from metering import compact
    from metering.eventlog import event_line

    monkeypatch.setattr(compact, "JSONL_CHUNK_ROWS", chunk_rows)
    expected = "".join(event_line(event) + "\n" for event in small_load_log).encode()
    assert len(small_load_log.traffic) // chunk_rows > 10 or chunk_rows > len(small_load_log.traffic)
    assert b"".join(small_load_log.jsonl_chunks()) == expected
    path = tmp_path / "events.jsonl"
    assert write_event_log(small_load_log, path) == len(small_load_log)
    assert path.read_bytes() == expected


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**31 - 1),
            st.integers(0, 2),
            st.integers(0, 2**62),
            st.integers(0, 2**62),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0, 1_767_193_200_000_000, 32_503_647_600_000_000]),
)
def test_compact_rows_as_jsonl_match_their_events_at_any_value(rows: list[tuple[int, ...]], origin: int) -> None:
    """Any second (to year 2999), volume up to 2^62, route and SIM: the same bytes as event_line."""
    from metering.compact import CompactTraffic
    from metering.eventlog import event_line
    from metering.timeutil import MAX_INSTANT

    seconds = [min(second, (MAX_INSTANT - origin) // 1_000_000) for second, *_ in rows]
    traffic = CompactTraffic(
        origin_us=origin,
        second=np.array(seconds, dtype=np.int32),
        sim=np.array([sim for _, sim, *_ in rows], dtype=np.int32),
        up_bytes=np.array([up for _, _, up, _, _ in rows], dtype=np.int64),
        down_bytes=np.array([down for *_, down, _ in rows], dtype=np.int64),
        route=np.array([route % 2 for *_, route in rows], dtype=np.int8),
        key=np.array([number * 7 for number in range(len(rows))], dtype=np.int32),
        iccids=("8981200000010000001", "8981300000020000002", "898120000003000000033"[:20]),
        accounts=("acct-1", "a:b@c/d", "x.y_z-9"),
        gateways=("gw-1", "gw/2", "g"),
        id_infix="/d/",
    )
    assert traffic.jsonl() == "".join(event_line(event) + "\n" for event in traffic.events()).encode()


def test_a_log_put_in_log_order_crosses_a_process_boundary_in_that_order(
    small_load_log: CompactLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray worker sorts its log before handing it back: the driver that writes it sorts nothing."""
    shuffled = _shuffled(small_load_log.traffic, seed=7)
    sent = pickle.dumps(CompactLog(list(small_load_log.events), shuffled).put_in_log_order())

    def sorted_again(self: CompactTraffic) -> CompactTraffic:
        raise AssertionError("the driver sorted a log the worker had put in order")

    monkeypatch.setattr(CompactTraffic, "in_log_order", sorted_again)
    received = pickle.loads(sent)
    assert [event.content() for event in received] == [event.content() for event in small_load_log]


def test_events_cross_a_process_boundary_with_every_field(small_load_log: CompactLog) -> None:
    """Events pickle as their fields' values: all come back, the file and line (not compared by ==) too."""
    events = [
        *small_load_log.events[:50],
        Event(
            1,
            "sim.pin_failed",
            "acct-1",
            "e-1",
            sim="8981300000000000001",
            extra='{"attempt": 2}',
            source="a.jsonl",
            line=7,
        ),
        Event(2, "points.granted", "acct-1", "e-2", points=5, expires=3, delivered=False, source="b.parquet", line=9),
    ]
    received = pickle.loads(pickle.dumps(events))
    assert [dataclasses.astuple(event) for event in received] == [dataclasses.astuple(event) for event in events]
    assert all(type(event) is Event for event in received)
