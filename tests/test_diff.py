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
