"""Logs that mgwsim did not write: the rules of the terms hold for every log the reader accepts.

Each expectation here is computed by hand from the terms (TARIFF.md, EVENTS.md), not taken from
mgwsim's output, and checked in both raters through the command line a user runs.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DISPUTES, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_one_line_error, mgwsim

from metering.events import DuplicateKeyError, decode_object

INT64_MAX = 2**63 - 1
SIM = "8981300000000000091"
RATERS = ("fast", "reference")


def event(ts: str, kind: str, event_id: str, account: str = "acct-1", **fields: Any) -> dict[str, Any]:
    return {"ts": ts, "type": kind, "account": account, "id": event_id, **fields}


def bill(*args: str | Path, rater: str = "fast") -> Any:
    """The invoice document of a month, or the list of documents of a range."""
    result = mgwsim("bill", *args, "--rater", rater)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def lines_of(document: dict[str, Any], account: str = "acct-1") -> list[tuple[str, str, int, str]]:
    (invoice,) = [invoice for invoice in document["invoices"] if invoice["account"] == account]
    return [(line["item"], line["subject"], line["quantity"], line["amount"]) for line in invoice["lines"]]


# 1. A message of a SIM without a device ID blocks nothing: points consumed, no platform basic fee.


def test_a_message_without_device_id_consumes_points_and_blocks_no_invoice(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "export.jsonl",
        [
            event("2026-01-10T10:00:00+09:00", "mono.message", "m1", sim=SIM, count=30000),
            event("2026-01-05T10:00:00+09:00", "sim.registered", "r1", account="acct-2", sim="8981300000000000092"),
        ],
    )
    for rater in RATERS:
        document = bill(path, "-m", "2026-01", rater=rater)
        (mine,) = [invoice for invoice in document["invoices"] if invoice["account"] == "acct-1"]
        # PT-3/PT-5: 30,000 points due, none held: 40,000 bought (2 x 20,000) at 0.005 yen = 200 yen
        assert lines_of(document) == [("points_shortfall", "points", 40000, "200")]
        assert mine["points"]["consumed"] == 30000 and mine["points"]["closing"] == 10000
        assert [invoice["account"] for invoice in document["invoices"]] == ["acct-1", "acct-2"]
    explained = mgwsim("explain", path, "-m", "2026-01", "--subject", SIM)
    assert explained.returncode == 0
    assert "no Mono Platform device ID was issued for it" in explained.stdout


# 2. A platform message is communication of its SIM (Art. 57(2)): basic fee, and the idle count restarts.


def test_a_sim_whose_only_activity_is_messages_has_communicated(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "messages.jsonl",
        [
            event("2025-01-10T10:00:00+09:00", "sim.registered", "r1", sim=SIM),
            event("2025-01-10T11:00:00+09:00", "mono.device.registered", "d1", sim=SIM),
            event("2025-05-10T10:00:00+09:00", "mono.message", "m1", sim=SIM),
        ],
    )
    for rater in RATERS:
        # 2025-05: basic fee 10 (Art. 38(2)) and platform basic fee 10 (Art. 57(2))
        may = bill(path, "-m", "2025-05", rater=rater)
        fees = [line for line in lines_of(may) if line[0] != "points_shortfall"]  # the message's point: PT-5
        assert fees == [("sim_basic_fee", SIM, 1, "10"), ("platform_basic_fee", SIM, 1, "10")]
        # without the message the fee would complete in 2025-12 (2025-01..2025-12); with it, in 2026-05
        year = bill(path, "-m", "2025-12..2026-05", rater=rater)
        charged = [
            document["month"]
            for document in year
            for invoice in document["invoices"]
            for line in invoice["lines"]
            if line["item"] == "line_maintenance_fee"
        ]
        assert charged == ["2026-05"]


def test_a_message_outside_any_registration_is_not_communication_of_the_sim(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "messages.jsonl",
        [
            event("2026-01-05T10:00:00+09:00", "mono.message", "m1", sim=SIM),
            event("2026-01-20T10:00:00+09:00", "sim.registered", "r1", sim=SIM),
            event("2026-02-05T10:00:00+09:00", "sim.deleted", "x1", sim=SIM),
            event("2026-02-06T10:00:00+09:00", "mono.message", "m2", sim=SIM),
        ],
    )
    tariff = tmp_path / "strict.toml"  # I-2 off would hide the test: keep the exemption, per registration
    tariff.write_text(
        '[tariff]\nbase = "default"\nname = "t"\nversion = "1"\n[interpretations]\nusage_test = "per_registration"\n'
    )
    for rater in RATERS:
        for document in bill(path, "-m", "2026-01..2026-02", "--tariff", tariff, rater=rater):
            assert all(line["item"] != "sim_basic_fee" for line in document["invoices"][0]["lines"])


# 3. I-3: the idle count after a re-registration sees the communication of every registration.


def test_idle_count_sees_communication_before_the_re_registration(tmp_path: Path) -> None:
    path = DISPUTES / "reregistration-idle.jsonl"
    for rater in RATERS:
        february, march = bill(path, "-m", "2026-02..2026-03", rater=rater)
        assert february["invoices"] == []
        assert lines_of(march) == [("line_maintenance_fee", "8981300000000000071", 1, "110")]


# 4. Volumes are summed exactly: one valid event at 2^63-1 bytes makes no store unbillable.


def huge_log(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "huge.jsonl",
        [
            event("2026-01-01T10:00:00+09:00", "sim.registered", "r1", sim=SIM),
            *(
                event(
                    f"2026-01-0{day}T10:00:00+09:00",
                    "sim.traffic",
                    f"t{day}",
                    sim=SIM,
                    up_bytes=INT64_MAX,
                    down_bytes=INT64_MAX,
                    route="closed",
                )
                for day in (2, 3)
            ),
            event("2026-01-04T10:00:00+09:00", "mono.message", "m1", sim=SIM, count=INT64_MAX),
            event("2026-01-05T10:00:00+09:00", "mono.message", "m2", sim=SIM, count=INT64_MAX),
        ],
    )


def test_volumes_near_2_to_the_63_are_billed_exactly_by_both_raters_from_file_and_store(tmp_path: Path) -> None:
    path = huge_log(tmp_path)
    volume = 4 * INT64_MAX  # 2^65 - 4 bytes in 2026-01
    units = -(-volume // 2**20)  # rounded up to whole MiB: 2^45
    data_fee = (Decimal("0.2") * units).quantize(Decimal(1), "ROUND_HALF_UP")
    assert units == 2**45 and data_fee == Decimal(7036874417766)
    due = 2 * INT64_MAX  # points consumed, one per message (PT-3)
    shortfall = -(-due // 20000) * 20000
    shortfall_fee = (Decimal(shortfall) * Decimal("0.005")).quantize(Decimal(1), "ROUND_HALF_UP")
    expected = [
        ("sim_basic_fee", SIM, 1, "10"),
        ("data_fee", SIM, units, str(data_fee)),
        ("points_shortfall", "points", shortfall, str(shortfall_fee)),
    ]
    store = tmp_path / "store.duckdb"
    assert mgwsim("ingest", path, "--db", store).returncode == 0
    printed = set()
    for rater in RATERS:
        for source in ([path], ["--db", store]):
            result = mgwsim("bill", *source, "-m", "2026-01", "--rater", rater)
            assert result.returncode == 0, result.stderr
            assert lines_of(json.loads(result.stdout)) == expected
            printed.add(result.stdout)
    assert len(printed) == 1, "both raters, file or store: the same bytes"


def test_money_is_exact_beyond_28_digits(tmp_path: Path) -> None:
    path = huge_log(tmp_path)
    tariff = tmp_path / "dear.toml"  # one byte per unit at 10^12 yen: a 32-digit line amount
    tariff.write_text(
        '[tariff]\nbase = "default"\nname = "dear"\nversion = "1"\n'
        '[data_fee]\nunit_bytes = 1\nprice_per_unit = "1000000000000"\n'
    )
    volume = 4 * INT64_MAX
    for rater in RATERS:
        document = bill(path, "-m", "2026-01", "--tariff", tariff, rater=rater)
        (invoice,) = document["invoices"]
        data = next(line for line in invoice["lines"] if line["item"] == "data_fee")
        assert data["amount"] == str(volume * 10**12)
        subtotal = sum(int(line["amount"]) for line in invoice["lines"])  # yen: whole numbers, summed as ints
        assert invoice["subtotal"] == str(subtotal)
        assert invoice["tax"] == str(subtotal // 10) and invoice["total"] == str(subtotal + subtotal // 10)


# 5. Secrets under any name are refused, never echoed, never stored.

SECRET_NAMES = [
    "entered_pin",
    "sim_puk",
    "pass_code",
    "pin-code",
    "pin_value",
    "user_passcode",
    "PIN_CODE",
    "sim.puk",
    "passCode",
    "pin1",
    "userPIN",
    "new pin",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_fields_under_any_name_are_refused_and_nothing_is_stored(tmp_path: Path, name: str) -> None:
    secret = "73915528"
    records = [
        event("2026-01-01T10:00:00+09:00", "sim.registered", "r1", sim=SIM),
        event("2026-01-02T10:00:00+09:00", "sim.pin_failed", "p1", sim=SIM, **{name: secret}),
    ]
    path = write_jsonl(tmp_path / "log.jsonl", records)
    store = tmp_path / "store.duckdb"
    for result in (mgwsim("bill", path, "-m", "2026-01"), mgwsim("ingest", path, "--db", store)):
        assert_one_line_error(result, f"{path}:2:", "secret field")
        assert secret not in result.stderr
    assert not store.exists() or secret.encode() not in store.read_bytes()
    if store.exists():
        count = mgwsim("bill", "--db", store, "-m", "2026-01")
        assert count.returncode == 0 and json.loads(count.stdout)["invoices"] == [], "nothing of the log is stored"
    parquet = tmp_path / "log.parquet"  # the columnar form carries diagnostic fields in 'extra'
    table = pa.table(
        {
            "ts": pa.array([1767229200000000, 1767315600000000], pa.timestamp("us", tz="UTC")),
            "type": ["sim.registered", "sim.pin_failed"],
            "account": ["acct-1", "acct-1"],
            "id": ["r1", "p1"],
            "sim": [SIM, SIM],
            "extra": [None, json.dumps({name: secret})],
        }
    )
    pq.write_table(table, parquet)
    result = mgwsim("bill", parquet, "-m", "2026-01")
    assert_one_line_error(result, f"{parquet}:2:", "secret field")
    assert secret not in result.stderr


@pytest.mark.parametrize("name", ["shipping", "spin_rate", "tries_left", "opinion", "password_hint_len"])
def test_names_that_merely_contain_the_letters_are_kept(tmp_path: Path, name: str) -> None:
    extra: dict[str, Any] = {name: 3}
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [
            event("2026-01-01T10:00:00+09:00", "sim.registered", "r1", sim=SIM),
            event("2026-01-02T10:00:00+09:00", "session.created", "s1", sim=SIM, **extra),
        ],
    )
    assert mgwsim("bill", path, "-m", "2026-01").returncode == 0


# 6. Input the format forbids: duplicate keys, ts not a string or out of range, odd numbers, huge strings.

REGISTERED = '"ts": "2026-01-01T10:00:00+09:00", "type": "sim.registered", "account": "acct-1", "sim": "' + SIM + '"'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"up_bytes": -5, "up_bytes": 1, ' + REGISTERED.replace("sim.registered", "sim.traffic") + "}", "twice"),
        ('{"type": "sim.deleted", ' + REGISTERED + "}", "'type' appears twice"),
        ('{"ts": 1767229200000000, "type": "sim.registered", "account": "acct-1", "sim": "' + SIM + '"}', "string"),
        ("{" + REGISTERED.replace("2026-01-01T10:00:00+09:00", "0001-01-01T00:00:00+14:00") + "}", "outside"),
        ("{" + REGISTERED.replace("2026-01-01T10:00:00+09:00", "9999-12-31T23:00:00-12:00") + "}", "outside"),
        ("{" + REGISTERED.replace("2026-01-01T10:00:00+09:00", "1969-12-31T23:59:59Z") + "}", "outside"),
        ('{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "rssi": NaN}', "NaN"),
        ('{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "x": Infinity}', "Infinity"),
        ('{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "x": 1e400}', "finite"),
        (
            '{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "x": 9223372036854775808}',
            "64",
        ),
        (
            '{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "x": -9223372036854775809}',
            "64",
        ),
        (
            '{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "x": "'
            + "y" * 65537
            + '"}',
            "65,536",
        ),
        (
            '{"ts": "2026-01-02T10:00:00+09:00", "type": "session.created", "account": "a", "n": {"a": 1, "a": 2}}',
            "twice",
        ),
    ],
)
def test_input_the_format_forbids_is_refused_with_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("{" + REGISTERED + "}\n" + line + "\n", encoding="utf-8")
    for rater in RATERS:
        result = mgwsim("bill", path, "-m", "2026-01", "--rater", rater)
        assert_one_line_error(result, f"{path}:2:", reason)


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [
            event("1970-01-01T09:00:00+09:00", "sim.registered", "r1", sim=SIM),
            event("2999-12-31T23:59:59Z", "session.created", "s1", x=INT64_MAX, y=-(2**63), z="y" * 65536),
        ],
    )
    result = mgwsim("bill", path, "-m", "1970-01")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("month", ["0000-01", "9999-12", "1969-12", "3000-01"])
def test_months_outside_the_format_are_one_line_errors(month: str) -> None:
    for command in ("bill", "explain"):
        assert_one_line_error(mgwsim(command, DISPUTES / "points.jsonl", "-m", month), month)


KEYS = st.sampled_from(["a", "b", "ts", 'x":', "é", "\\"])
SCALARS = st.one_of(st.integers(), st.text(alphabet='ab": \\', max_size=6), st.booleans(), st.none())


COLONS = st.sampled_from([":", ": ", " :", "\t:", "\n : "])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(KEYS, COLONS, st.one_of(SCALARS, st.dictionaries(KEYS, SCALARS, max_size=2))), max_size=5),
    st.sampled_from([",", ", ", " , ", ",\n"]),
)
def test_decoding_refuses_exactly_the_objects_with_a_repeated_key(
    entries: list[tuple[str, str, Any]], comma: str
) -> None:
    """The counting shortcut of decode_object against the obvious check of every key."""

    def render(value: Any) -> str:
        if isinstance(value, dict):
            return "{" + comma.join(json.dumps(k) + ":" + render(v) for k, v in value.items()) + "}"
        return json.dumps(value, ensure_ascii=False)

    text = (
        "{"
        + comma.join(json.dumps(key, ensure_ascii=False) + colon + render(value) for key, colon, value in entries)
        + "}"
    )
    repeated = len({key for key, _, _ in entries}) < len(entries)
    try:
        decoded = decode_object(text.encode())
    except DuplicateKeyError:
        assert repeated
    else:
        assert not repeated
        assert decoded == {key: value for key, _, value in entries}
