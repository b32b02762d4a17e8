"""mgwsim diff: two sets of charges compared line by line, as a support engineer or a CI job runs it."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from test_cli import mgwsim

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "scenarios/golden/quickstart"


def as_csv(folder: Path, path: Path) -> None:
    """The invoices of ``folder`` as another billing system's charges CSV (an extra column, another order)."""
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["amount", "subject", "item", "account", "month", "quantity", "rule"])
        for document in sorted(folder.glob("*.json")):
            data = json.loads(document.read_text())
            for invoice in data["invoices"]:
                for line in invoice["lines"]:
                    row = [line["amount"], line["subject"], line["item"], invoice["account"], data["month"]]
                    writer.writerow([*row, line["quantity"], line["rule"]])


def test_the_same_invoices_are_equal_also_as_a_csv(tmp_path: Path) -> None:
    same = mgwsim("diff", GOLDEN, GOLDEN, columns=200)
    assert same.returncode == 0 and "charge the same" in same.stdout
    charges = tmp_path / "other-system.csv"
    as_csv(GOLDEN, charges)
    assert mgwsim("diff", GOLDEN, charges).returncode == 0
    assert mgwsim("diff", charges, GOLDEN / "2026-01.json", "--month", "2026-01").returncode == 0


def test_a_charges_csv_header_is_matched_whatever_its_case_and_spacing(tmp_path: Path) -> None:
    """``Month, Account, Item…`` as a spreadsheet titles them: was "the header lacks month…"."""
    charges = tmp_path / "charges.csv"
    as_csv(GOLDEN, charges)
    lines = charges.read_text(encoding="utf-8").splitlines()
    titled = tmp_path / "titled.csv"
    titled.write_text("\n".join([" Amount,Subject , ITEM,Account,Month,Quantity,Rule", *lines[1:]]) + "\n")
    assert mgwsim("diff", GOLDEN, titled).returncode == 0
    twice = tmp_path / "twice.csv"
    twice.write_text("month,Month,account,item,subject,quantity,amount\n", encoding="utf-8")
    done = mgwsim("diff", GOLDEN, twice, columns=200)
    assert (done.returncode, done.stderr.strip()) == (2, f"mgwsim: error: {twice}:1: column month twice")


def test_a_charges_csv_in_shift_jis_is_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    """Japanese Excel saves a plain "CSV" in Shift_JIS; binary bytes that merely decode as it get no such hint."""
    text = "month,account,item,subject,quantity,amount\n2026-01,acct-1,data_fee,データ通信,1,10\n"
    charges, garbage = tmp_path / "charges.csv", tmp_path / "garbage.csv"
    charges.write_bytes(text.encode("cp932"))
    garbage.write_bytes(b"\xff\xfe\x00\x01month")
    done = mgwsim("diff", charges, GOLDEN, columns=300)
    start = len(text.encode("cp932").split(b"\x83")[0])  # the first byte of the katakana
    expected = f"mgwsim: error: {charges}: not UTF-8 text (byte {start}); it reads as Shift_JIS: save it as UTF-8"
    assert (done.returncode, done.stderr.strip()) == (2, expected)
    done = mgwsim("diff", garbage, GOLDEN, columns=300)
    assert (done.returncode, done.stderr.strip()) == (2, f"mgwsim: error: {garbage}: not UTF-8 text (byte 0)")


def test_a_changed_and_a_missing_line_are_reported_with_the_totals(tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    changed.mkdir()
    for document in GOLDEN.glob("*.json"):
        (changed / document.name).write_text(document.read_text())
    data = json.loads((changed / "2026-02.json").read_text())
    lines = data["invoices"][0]["lines"]
    first, second = lines[0], lines[1]
    first["amount"] = "999"
    lines.remove(second)
    (changed / "2026-02.json").write_text(json.dumps(data))
    junit = tmp_path / "diff.xml"
    found = mgwsim("diff", GOLDEN, changed, "--format", "json", "--junit", junit)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    kinds = {(entry["subject"], entry["kind"]) for entry in report["differences"]}
    assert first["subject"] != second["subject"]
    assert kinds == {(first["subject"], "differs"), (second["subject"], "only left")}
    total = next(entry for entry in report["totals"] if entry["month"] == "2026-02")
    original = json.loads((GOLDEN / "2026-02.json").read_text())["invoices"][0]
    assert total["left"] == str(sum(int(line["amount"]) for line in original["lines"]))
    suite = ElementTree.parse(junit).getroot()  # the standard library's parser, not ours
    assert suite.get("tests") == str(len(report["totals"])) and suite.get("failures") == "1"
    failed = [case.get("name") for case in suite if case.find("failure") is not None]
    assert failed == [f"2026-02/{original['account']}"]
    assert mgwsim("diff", GOLDEN, changed, "--month", "2026-01").returncode == 0, "other months are equal"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("month,account,item,subject,quantity\n", "other.csv:1: the header lacks amount"),
        ("month,account,item,subject,quantity,amount\n2026-13,a,i,s,1,2\n", "other.csv:2: month '2026-13'"),
        ("month,account,item,subject,quantity,amount\n2026-01,a,i,s,1,1.5e\n", "other.csv:2: amount '1.5e'"),
        ("month,account,item,subject,quantity,amount\n\n2026-01,a,i,s,one,1\n", "other.csv:3: quantity 'one'"),
        ("month,account,item,subject,quantity,amount\n2026-01,a,i\n", "other.csv:2: 3 columns"),
    ],
)
def test_a_bad_charges_csv_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "other.csv"
    path.write_text(text)
    done = mgwsim("diff", path, GOLDEN, columns=200)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_not_an_invoice_document_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"schema": "something else"}')
    done = mgwsim("diff", path, GOLDEN, columns=200)
    assert done.returncode == 2 and "not an mgwsim invoice document" in done.stderr


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz", "events.parquet"])
def test_an_event_log_given_as_a_side_is_told_to_be_billed_first(tmp_path: Path, name: str) -> None:
    """Was "not JSON (Extra data)" at line 2 of a JSONL log, "not UTF-8 text" for Parquet."""
    log = tmp_path / name
    assert mgwsim("run", "pin-lockout", "--events", log).returncode == 0
    done = mgwsim("diff", log, GOLDEN, columns=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"mgwsim: error: {log}: an event log, not invoices: bill it first "
        f"(mgwsim bill {log} --month YYYY-MM --format json > FILE.json), or give it to --explain"
    )


def test_the_readme_example_shows_where_two_readings_of_i1_differ(tmp_path: Path) -> None:
    """The same log billed under I-1 per SIM-month and per registration: one line and the total differ."""
    log = ROOT / "scenarios/disputes/reregistration.jsonl"
    tariff = ROOT / "scenarios/disputes/tariffs/per-registration.toml"
    left, right = tmp_path / "per-sim-month.json", tmp_path / "per-registration.json"
    left.write_text(mgwsim("bill", log, "-m", "2026-01", "--format", "json").stdout)
    right.write_text(mgwsim("bill", log, "-m", "2026-01", "--format", "json", "--tariff", tariff).stdout)
    done = mgwsim("diff", left, right, "--format", "json")
    assert done.returncode == 1
    (difference,) = json.loads(done.stdout)["differences"]
    assert difference["item"] == "sim_basic_fee" and difference["kind"] == "differs"


def test_check_writes_junit_one_case_per_account_month(tmp_path: Path) -> None:
    """mgwsim check --junit: the golden files beside the rerun, a failed case where a golden line drifted."""
    golden = tmp_path / "golden"
    golden.mkdir()
    for document in GOLDEN.glob("*.json"):
        (golden / document.name).write_text(document.read_text())
    junit = tmp_path / "check.xml"
    assert mgwsim("check", ROOT / "scenarios/quickstart.toml", "--golden", golden, "--junit", junit).returncode == 0
    assert ElementTree.parse(junit).getroot().get("failures") == "0"
    data = json.loads((golden / "2026-01.json").read_text())
    data["invoices"][0]["lines"][0]["amount"] = "1"
    (golden / "2026-01.json").write_text(json.dumps(data))
    assert mgwsim("check", ROOT / "scenarios/quickstart.toml", "--golden", golden, "--junit", junit).returncode == 1
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("failures") == "1"
    assert [case.get("name") for case in suite if case.find("failure") is not None] == ["2026-01/acct-1"]


DISPUTES = ROOT / "scenarios/disputes"
REREGISTRATION = DISPUTES / "reregistration.jsonl"
ICCID = "8981300000000000021"


@pytest.fixture
def two_readings(tmp_path: Path) -> tuple[Path, Path]:
    """The re-registration dispute billed under I-1 per SIM-month (left) and per registration (right)."""
    left, right = tmp_path / "per-sim-month.json", tmp_path / "per-registration.json"
    per_sim = mgwsim("bill", REREGISTRATION, "-m", "2026-01", "--format", "json")
    per_registration = mgwsim(
        "bill", REREGISTRATION, "-m", "2026-01", "--format", "json",
        "--tariff", DISPUTES / "tariffs/per-registration.toml",
    )  # fmt: skip
    assert per_sim.returncode == per_registration.returncode == 0
    left.write_text(per_sim.stdout)
    right.write_text(per_registration.stdout)
    return left, right


def test_explain_gives_each_differing_line_its_rule_article_and_evidence(two_readings: tuple[Path, Path]) -> None:
    left, right = two_readings
    done = mgwsim("diff", left, right, "--explain", REREGISTRATION, columns=200)
    assert done.returncode == 1, done.stderr
    explained = done.stdout.split("mgwsim's side of each line", 1)[1]
    assert f"2026-01 acct-1 sim_basic_fee {ICCID} (differs):" in explained
    # by hand from the log: registered 2025-12-01 (r1), deleted and registered again twice in
    # January (r4, r6), one communication (r2): three registrations in the month, 10 JPY each
    assert f"CHARGED sim_basic_fee for {ICCID}: 3 x 10 = 30 JPY" in explained
    assert "SMC-38" in explained and "Art. 38" in explained
    for event_id, line in (("r1", 1), ("r2", 2), ("r4", 4), ("r6", 6)):
        assert f"- {event_id}: " in explained and f"{REREGISTRATION}:{line})" in explained


def test_explain_under_the_other_reading_and_as_json(two_readings: tuple[Path, Path]) -> None:
    left, right = two_readings
    done = mgwsim(
        "diff", left, right, "--explain", REREGISTRATION, "--tariff", DISPUTES / "tariffs/per-registration.toml",
        "--format", "json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (difference,) = json.loads(done.stdout)["differences"]
    assert difference["right"] == {"quantity": 1, "amount": "10"}
    assert difference["explanation"].startswith(f"  CHARGED sim_basic_fee for {ICCID}: 1 x 10 = 10 JPY")


def test_a_line_mgwsim_never_decided_is_said_so_and_tariff_needs_explain(
    two_readings: tuple[Path, Path], tmp_path: Path
) -> None:
    left, _ = two_readings
    other = tmp_path / "other.csv"
    other.write_text("month,account,item,subject,quantity,amount\n2026-01,acct-1,sms_fee,2fa,3,9\n")
    done = mgwsim("diff", left, other, "--explain", REREGISTRATION, "--format", "json")
    assert done.returncode == 1, done.stderr
    found = {entry["item"]: entry for entry in json.loads(done.stdout)["differences"]}
    assert "mgwsim decides nothing on sms_fee for 2fa of acct-1 in 2026-01" in found["sms_fee"]["explanation"]
    assert "CHARGED sim_basic_fee" in found["sim_basic_fee"]["explanation"]
    refused = mgwsim("diff", left, other, "--tariff", DISPUTES / "tariffs/per-registration.toml")
    assert refused.returncode == 2 and "--tariff: only with --explain" in refused.stderr
