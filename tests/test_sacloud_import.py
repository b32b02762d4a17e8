"""``mgwsim import sacloud``: the service's own exports, read, billed, and diffed against its bill.

The shipped example export (``scenarios/sacloud-export``) is hand-made in the shapes of the Sakura
Cloud API (sacloud/iaas-api-go); its expectations are computed here by hand from the volumes in
the files and the tariff's prices (10 JPY a SIM-month with communication, 0.2 JPY per started
MiB, 1,000 JPY a gateway-month).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_cli import mgwsim

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ROOT / "scenarios" / "sacloud-export"
A, B, C = "8981100000000000001", "8981100000000000002", "8981100000000000003"
PASSCODES = ("PC-SECRET-A1", "PC-SECRET-B2", "PC-SECRET-C3")
FILES = [
    f"{EXPORT}/sims-2026-01-31.json@2026-01-31T23:59:59+09:00",
    f"{EXPORT}/sims-2026-02-28.json@2026-02-28T23:59:59+09:00",
    str(EXPORT / "metrics-112900000001-2026-03.json"),
    str(EXPORT / "sessionlog-112900000001.json"),
    str(EXPORT / "mobile-gateways.json"),
]
AT = ("--at", "2026-03-31T23:59:59+09:00")


def _import(out: Path, *files: str, at: tuple[str, ...] = AT) -> Any:
    return mgwsim("import", "sacloud", *files, *at, "--account", "acct-1", "--out", out, columns=200)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("sacloud") / "events.jsonl"
    done = _import(out, *FILES)
    assert done.returncode == 0, done.stderr
    return out, done


def _lines(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    (invoice,) = document["invoices"]
    return {(line["item"], line["subject"]): line for line in invoice["lines"]}


def test_the_export_bills_as_computed_by_hand(imported: tuple[Path, Any]) -> None:
    log, _ = imported
    done = mgwsim("bill", log, "--month", "2026-01..2026-03", "--format", "json")
    assert done.returncode == 0, done.stderr
    january, february, march = (_lines(document) for document in json.loads(done.stdout))
    # January: A sent 3 MiB and received 1 MiB (4 units, 0.8 JPY -> 1), B 2,000 bytes (1 unit, 0.2 -> 0)
    assert january[("data_fee", A)]["quantity"] == 4 and january[("data_fee", A)]["amount"] == "1"
    assert january[("data_fee", B)]["quantity"] == 1 and january[("data_fee", B)]["amount"] == "0"
    assert {subject for item, subject in january if item == "sim_basic_fee"} == {A, B}
    # February: A 5.5 MiB (6 units), B nothing (no basic fee: no communication), C 2 MiB (2 units)
    assert february[("data_fee", A)]["quantity"] == 6 and february[("data_fee", C)]["quantity"] == 2
    assert {subject for item, subject in february if item == "sim_basic_fee"} == {A, C}
    # March, no SIM list: A's metrics, 100 + 50 bps for 31 days = 50,220,000 bytes, 48 started MiB
    data = march[("data_fee", A)]
    assert data["quantity"] == 48 and data["amount"] == "10"
    assert data["evidence"] == [f"sacloud:{A}:2026-03:estimated-from-metrics"]
    assert january[("data_fee", A)]["evidence"] == [f"sacloud:{A}:2026-01:snapshot"]
    for month in (january, february, march):  # the gateway created 2025-12-01, every month
        assert month[("gateway_fee", "113000000001")]["amount"] == "1000"


def test_the_passcode_never_leaves_the_sim_documents(imported: tuple[Path, Any], tmp_path: Path) -> None:
    log, done = imported
    text = log.read_text() + done.stdout + done.stderr
    assert not any(code in text for code in PASSCODES)
    broken = tmp_path / "sims.json"
    document = json.loads((EXPORT / "sims-2026-01-31.json").read_text())
    document["CommonServiceItems"][1]["Status"]["sim"]["registered_date"] = "yesterday"  # beside B's PassCode
    broken.write_text(json.dumps(document))
    failed = _import(tmp_path / "out.jsonl", str(broken))
    assert failed.returncode == 2
    assert "$.CommonServiceItems[1].Status.sim.registered_date" in failed.stderr
    assert not any(code in failed.stderr + failed.stdout for code in PASSCODES)


def test_session_logs_and_gateways_become_diagnostics(imported: tuple[Path, Any]) -> None:
    log, _ = imported
    events = [json.loads(line) for line in log.read_text().splitlines()]
    sessions = [event for event in events if event["type"].startswith("session.")]
    assert [(event["type"], event["ts"]) for event in sessions] == [
        ("session.created", "2026-01-05T09:00:00+09:00"),
        ("session.deleted", "2026-01-05T18:30:00+09:00"),
        ("session.created", "2026-01-20T08:00:00+09:00"),
    ]
    assert all(event["sim"] == A and event["imei"] == "352000000000001" for event in sessions)
    (internet,) = [event for event in events if event["type"] == "gateway.internet"]
    assert internet["state"] == "on" and internet["ts"] == "2026-03-31T23:59:59+09:00"


def test_export_import_bill_diff_against_the_services_bill(imported: tuple[Path, Any], tmp_path: Path) -> None:
    log, _ = imported
    billed = tmp_path / "mgwsim.json"
    billed.write_text(mgwsim("bill", log, "--month", "2026-01..2026-03", "--format", "json").stdout)
    done = mgwsim("diff", EXPORT / "charges.csv", billed, "--explain", log, "--format", "json")
    assert done.returncode == 1, done.stderr
    (difference,) = json.loads(done.stdout)["differences"]
    assert (difference["month"], difference["item"], difference["subject"]) == ("2026-03", "data_fee", A)
    assert difference["left"] == {"quantity": 45, "amount": "9"} and difference["right"] == {
        "quantity": 48,
        "amount": "10",
    }
    assert "estimated-from-metrics" in difference["explanation"]


def test_a_file_without_a_time_takes_its_modification_time_and_says_so(tmp_path: Path) -> None:
    copy = tmp_path / "sims.json"
    shutil.copy(EXPORT / "sims-2026-01-31.json", copy)
    stamp = 1_769_871_599  # 2026-01-31T23:59:59+09:00
    os.utime(copy, (stamp, stamp))
    done = _import(tmp_path / "out.jsonl", str(copy), at=())
    assert done.returncode == 0, done.stderr
    assert f"{copy}: fetched at 2026-01-31T23:59:59+09:00 (its modification time" in done.stderr
    assert f'"id": "sacloud:{A}:2026-01:snapshot"' in (tmp_path / "out.jsonl").read_text()


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"Servers": []}, "$: not a SIM list, session log, traffic metrics or mobile gateway response"),
        ({"CommonServiceItems": {}}, "$.CommonServiceItems: expected a list"),
        ({"CommonServiceItems": [{"Status": {"sim": {"iccid": "12"}}}]}, "$.CommonServiceItems[0].Status.sim.iccid"),
        (
            {"CommonServiceItems": [{"Status": {"sim": {"iccid": A, "registered_date": "2026-01-01T00:00:00+09:00",
             "traffic_bytes_of_current_month": {"uplink_bytes": "1.5"}}}}]},
            "traffic_bytes_of_current_month.uplink_bytes: '1.5' is not a whole number of bytes",
        ),
        ({"logs": [{"date": "2026-01-01T00:00:00+09:00", "session_status": "Created", "resource_id": "999"}]},
         "$.logs[0].resource_id: names no SIM"),
        ({"Data": {"yesterday": {"UplinkBps": 1}}}, "$.Data[\"yesterday\"]"),
    ],
)  # fmt: skip
def test_an_unknown_or_malformed_document_names_the_file_and_json_path(
    tmp_path: Path, document: dict[str, Any], named: str
) -> None:
    path = tmp_path / "metrics-8981100000000000001.json"
    path.write_text(json.dumps(document))
    out = tmp_path / "out.jsonl"
    done = _import(out, f"{EXPORT}/sims-2026-01-31.json@2026-01-31T23:59:59+09:00", str(path))
    assert done.returncode == 2
    assert f"{path}: " in done.stderr and named in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"Servers": []}\n{"Servers": []}\n', ":2: not JSON (Extra data)"),  # was: no line; "Extra data: line 2 …"
        ('{\n "Data":\n}\n', ":3: not JSON (Expecting value)"),
        ('{"Data": NaN}', ": not JSON (NaN is not a JSON number)"),
    ],
)
def test_a_file_that_is_not_json_names_its_line(tmp_path: Path, text: str, named: str) -> None:
    """As every other JSON input: ``file:line: not JSON (reason)``, one line, nothing written."""
    path = tmp_path / "metrics-8981100000000000001.json"
    path.write_text(text)
    out = tmp_path / "out.jsonl"
    done = _import(out, str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"mgwsim: error: {path}{named}", done.stderr
    assert not out.exists()


def test_a_page_of_a_list_is_refused_unless_every_page_is_given(tmp_path: Path) -> None:
    """A list response is paged (From, Count, Total): one page alone would bill its SIMs only, silently.

    Both pages of one fetch time are read as the list whole; one page alone, or a page given twice,
    is refused naming what is missing.
    """
    whole = json.loads((EXPORT / "sims-2026-01-31.json").read_text(encoding="utf-8"))
    items = whole["CommonServiceItems"]
    assert whole["Total"] == len(items) == 2
    pages = []
    for index, item in enumerate(items):
        page = tmp_path / f"page-{index + 1}.json"
        page.write_text(json.dumps({**whole, "From": index, "Count": 1, "CommonServiceItems": [item]}))
        pages.append(f"{page}@2026-01-31T23:59:59+09:00")
    paged, listed = tmp_path / "paged.jsonl", tmp_path / "listed.jsonl"
    assert _import(paged, *pages).returncode == 0
    assert _import(listed, f"{EXPORT}/sims-2026-01-31.json@2026-01-31T23:59:59+09:00").returncode == 0
    assert paged.read_bytes() == listed.read_bytes()
    for given, pair in (([pages[0]], ("1 to 1", "2 to 2")), ([pages[1], pages[1]], ("2 to 2", "1 to 1"))):
        done = _import(tmp_path / "out.jsonl", *given)
        assert done.returncode == 2 and not (tmp_path / "out.jsonl").exists()
        assert done.stderr.strip() == (
            f"mgwsim: error: {given[0].split('@')[0]}: $.CommonServiceItems: items {pair[0]} of 2, a page of the "
            f"list; the pages fetched at 2026-01-31T23:59:59+09:00 miss items {pair[1]}: give every page (or the "
            "list whole)"
        ), done.stderr
