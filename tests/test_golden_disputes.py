"""Golden dispute logs: hand-written event logs with hand-computed invoices, checked by meaning.

Each ``scenarios/disputes/*.expect.toml`` names its event log (default: same stem), tariff and
months, and lists every invoice the months must have. Lines are compared on item, rule, subject,
quantity and amount (and evidence where given); notes must say something, but their wording is free.
A case may also list ``[[explain]]`` entries: what ``mgwsim explain`` must say of a subject in a
month, the text a support engineer pastes to a customer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import DISPUTES

from metering.eventlog import read_event_log
from metering.invoice import Invoice
from metering.reference import rate_reference
from metering.tariff import load_tariff
from metering.timeutil import format_month, parse_month_range

CASES = sorted(DISPUTES.glob("*.expect.toml"))


def load_case(path: Path) -> dict[str, Any]:
    case = tomllib.loads(path.read_text(encoding="utf-8"))
    case.setdefault("events", path.name.split(".")[0] + ".jsonl")
    return case


def rate_case(case: dict[str, Any], rater: str = "reference") -> dict[tuple[str, str], Invoice]:
    tariff = load_tariff(DISPUTES / case["tariff"] if "tariff" in case else None)
    events = list(read_event_log(DISPUTES / case["events"]))
    months = parse_month_range(case["months"])
    if rater == "reference":
        rating = rate_reference(events, tariff, months)
    else:
        from metering.fast import rate_fast

        rating = rate_fast([DISPUTES / case["events"]], None, tariff, months)
    assert not rating.errors, rating.errors
    only = case.get("only_accounts")
    return {
        (format_month(month), invoice.account): invoice
        for month, document in rating.documents.items()
        for invoice in document.invoices
        if only is None or invoice.account in only
    }


def check_case(case: dict[str, Any], found: dict[tuple[str, str], Invoice]) -> None:
    expected = {(entry["month"], entry["account"]): entry for entry in case["invoices"]}
    assert sorted(found) == sorted(expected), "the set of (month, account) invoices differs"
    for key, entry in expected.items():
        invoice = found[key]
        got = [
            {
                "item": line.item,
                "rule": line.rule,
                "subject": line.subject,
                "quantity": line.quantity,
                "amount": line.amount,
            }
            for line in invoice.lines
        ]
        want = [
            {
                "item": line["item"],
                "rule": line["rule"],
                "subject": line["subject"],
                "quantity": line["quantity"],
                "amount": Decimal(line["amount"]),
            }
            for line in entry["lines"]
        ]
        assert got == want, f"lines of {key}"
        for line, spec in zip(invoice.lines, entry["lines"], strict=True):
            if "evidence" in spec:
                assert list(line.evidence) == spec["evidence"], f"evidence of {spec['item']} {spec['subject']} in {key}"
            assert line.note.strip(), "every line explains itself"
            assert line.amount == (line.unit_price * line.quantity).quantize(Decimal(1), "ROUND_HALF_UP")
        assert invoice.subtotal == Decimal(entry["subtotal"]), f"subtotal of {key}"
        assert invoice.tax == Decimal(entry["tax"]), f"tax of {key}"
        assert invoice.total == Decimal(entry["total"]), f"total of {key}"
        points = entry.get("points", dict.fromkeys(invoice.points.to_json(), 0))
        assert invoice.points.to_json() == points, f"points of {key}"


@pytest.mark.parametrize("rater", ["reference", "fast"])
@pytest.mark.parametrize("path", CASES, ids=[path.name.removesuffix(".expect.toml") for path in CASES])
def test_raters_match_hand_computed_invoices(path: Path, rater: str) -> None:
    case = load_case(path)
    check_case(case, rate_case(case, rater))


EXPLAINED = [(path, entry) for path in CASES for entry in load_case(path).get("explain", [])]


@pytest.mark.parametrize(
    ("path", "entry"),
    EXPLAINED,
    ids=[f"{path.name.removesuffix('.expect.toml')}-{entry['month']}-{entry['subject']}" for path, entry in EXPLAINED],
)
def test_explain_says_what_the_case_expects(path: Path, entry: dict[str, Any]) -> None:
    case = load_case(path)
    command = [sys.executable, "-m", "simulator.cli", "explain", str(DISPUTES / case["events"])]
    command += ["--month", entry["month"], "--subject", entry["subject"]]
    if "tariff" in case:
        command += ["--tariff", str(DISPUTES / case["tariff"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for fragment in entry["contains"]:
        assert fragment in result.stdout, f"{fragment!r} not in:\n{result.stdout}"


def test_every_rule_is_covered_by_a_golden_case() -> None:
    rules: set[str] = set()
    for path in CASES:
        for entry in load_case(path)["invoices"]:
            rules.update(line["rule"] for line in entry["lines"])
    assert {"SMC-38", "SMC-39", "SMC-40", "SMC-41", "SMC-42", "MONO-57", "MONO-58", "SMS-71", "PT-4", "PT-5"} <= rules
