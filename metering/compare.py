"""Where two sets of charges differ: mgwsim invoice documents, or a charges CSV of another system.

Both sides are read into :class:`Charges` — per (month, account, item, subject) the quantity and
the amount, summed over the lines of that key (an invoice may bill one subject at two unit
prices). :func:`compare` lists the keys found on one side only and those whose quantity or amount
differ, then the total per account and month on each side. Bad input is an error value that
names the file and line (:class:`CompareInputError`), never a half-read side.

A **charges CSV** has the header ``month,account,item,subject,quantity,amount`` (in any order;
other columns are ignored): ``month`` as ``YYYY-MM``, ``quantity`` an integer, ``amount`` a
decimal string (no float rounding: amounts are read as :class:`~decimal.Decimal`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import quoteattr

from metering.eventlog import EventLogError, log_format
from metering.money import format_money
from metering.textfile import header_names, read_text
from metering.timeutil import TimeFormatError, format_month, parse_month

CSV_COLUMNS: Final = ("month", "account", "item", "subject", "quantity", "amount")
"""The columns a charges CSV must have (others are ignored)."""
Key = tuple[int, str, str, str]
"""(JST month, account, item, subject)."""


class CompareInputError(Exception):
    """A side that cannot be read: the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class Charges:
    """One side: quantity and amount per (month, account, item, subject), and where it came from."""

    source: str
    lines: Mapping[Key, tuple[int, Decimal]]


@dataclass(frozen=True)
class Difference:
    """One key that differs: its quantity and amount on each side (``None``: not on that side)."""

    key: Key
    left: tuple[int, Decimal] | None
    right: tuple[int, Decimal] | None

    @property
    def kind(self) -> str:
        """``only left``, ``only right`` or ``differs``."""
        if self.right is None:
            return "only left"
        if self.left is None:
            return "only right"
        return "differs"

    def to_json(self) -> dict[str, Any]:
        """The difference as plain data (amounts as decimal strings)."""
        month, account, item, subject = self.key
        return {
            "month": format_month(month),
            "account": account,
            "item": item,
            "subject": subject,
            "kind": self.kind,
            "left": None if self.left is None else {"quantity": self.left[0], "amount": format_money(self.left[1])},
            "right": None if self.right is None else {"quantity": self.right[0], "amount": format_money(self.right[1])},
        }


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found."""

    left: Charges
    right: Charges
    differences: tuple[Difference, ...]
    totals: Mapping[tuple[int, str], tuple[Decimal, Decimal]]
    """Per (month, account) on either side: the sum of its line amounts, left and right."""

    @property
    def equal(self) -> bool:
        """Whether the two sides charge exactly the same."""
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        """The comparison as plain data."""
        return {
            "left": self.left.source,
            "right": self.right.source,
            "equal": self.equal,
            "differences": [difference.to_json() for difference in self.differences],
            "totals": [
                {"month": format_month(month), "account": account, "left": format_money(a), "right": format_money(b)}
                for (month, account), (a, b) in sorted(self.totals.items())
            ],
        }

    def junit(self) -> str:
        """JUnit XML: one test case per account and month, failed where its charges differ."""
        failing: dict[tuple[int, str], list[Difference]] = {}
        for difference in self.differences:
            failing.setdefault(difference.key[:2], []).append(difference)
        cases = []
        for month, account in sorted(self.totals):
            name = quoteattr(f"{format_month(month)}/{account}")
            found = failing.get((month, account), [])
            if not found:
                cases.append(f'  <testcase classname="mgwsim.diff" name={name}/>')
                continue
            left, right = self.totals[(month, account)]
            message = quoteattr(
                f"{len(found)} line(s) differ; total {format_money(left)} (left) vs {format_money(right)} (right)"
            )
            body = "\n".join(_described(difference) for difference in found)
            cases.append(
                f'  <testcase classname="mgwsim.diff" name={name}>\n'
                f"    <failure message={message}>{_escaped(body)}</failure>\n  </testcase>"
            )
        failures = sum(1 for key in self.totals if key in failing)
        header = f'<testsuite name="mgwsim diff" tests="{len(self.totals)}" failures="{failures}" errors="0">'
        return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', header, *cases, "</testsuite>"]) + "\n"


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _described(difference: Difference) -> str:
    month, account, item, subject = difference.key

    def side(value: tuple[int, Decimal] | None) -> str:
        return "-" if value is None else f"{value[0]} x = {format_money(value[1])}"

    return f"{format_month(month)} {account} {item} {subject}: {side(difference.left)} | {side(difference.right)}"


def compare(left: Charges, right: Charges, months: Iterable[int] | None = None) -> Comparison:
    """The keys on one side only or with another quantity or amount, and the totals per account-month."""
    chosen = None if months is None else set(months)
    keys = sorted(key for key in set(left.lines) | set(right.lines) if chosen is None or key[0] in chosen)
    differences = []
    totals: dict[tuple[int, str], tuple[Decimal, Decimal]] = {}
    for key in keys:
        a, b = left.lines.get(key), right.lines.get(key)
        before = totals.get(key[:2], (Decimal(0), Decimal(0)))
        totals[key[:2]] = (before[0] + (a[1] if a else 0), before[1] + (b[1] if b else 0))
        if a != b:
            differences.append(Difference(key, a, b))
    return Comparison(left, right, tuple(differences), totals)


def read_charges(path: Path) -> Charges:
    """A side: an invoice document (``.json``; a JSON array of them: a billed range), a folder of them, or a CSV.

    Raises:
        CompareInputError: Naming the file (and line) and the reason.
    """
    if path.is_dir():
        documents = sorted(path.glob("*.json"))
        if not documents:
            raise CompareInputError(f"{path}: a folder without invoice documents (*.json)")
        return Charges(str(path), _merged(_document(document) for document in documents))
    if not path.exists():
        raise CompareInputError(f"{path}: no such file")
    if _is_event_log(path):
        raise CompareInputError(
            f"{path}: an event log, not invoices: bill it first "
            f"(mgwsim bill {path} --month YYYY-MM --format json > FILE.json), or give it to --explain"
        )
    if path.suffix.lower() == ".csv":
        return Charges(str(path), _csv(path))
    return Charges(str(path), _document(path))


def _is_event_log(path: Path) -> bool:
    """Whether ``path`` is named as an event log (by the suffixes the log readers know)."""
    try:
        log_format(path)
    except EventLogError:
        return False
    return True


def _merged(parts: Iterable[Mapping[Key, tuple[int, Decimal]]]) -> dict[Key, tuple[int, Decimal]]:
    """The lines of several documents together (a key in two of them is summed)."""
    merged: dict[Key, tuple[int, Decimal]] = {}
    for part in parts:
        for key, value in part.items():
            merged[key] = _add(merged.get(key), value)
    return merged


def _add(before: tuple[int, Decimal] | None, value: tuple[int, Decimal]) -> tuple[int, Decimal]:
    return value if before is None else (before[0] + value[0], before[1] + value[1])


def charges_of(documents: Iterable[Mapping[str, Any]], source: str) -> Charges:
    """A side from invoice documents in their JSON form (``InvoiceDocument.to_json()``).

    Raises:
        CompareInputError: If one is not an mgwsim invoice document.
    """
    return Charges(source, _merged(_document_lines(document, source) for document in documents))


def read_json(path: Path) -> Any:
    """The JSON of a file of invoice documents (numbers with a fraction as :class:`~decimal.Decimal`).

    Raises:
        CompareInputError: Naming the file (and line) when it is missing, a folder, not UTF-8 or not JSON.
    """
    try:
        return json.loads(read_text(path), parse_float=Decimal)
    except json.JSONDecodeError as exc:  # (a ValueError: before the one read_text raises)
        raise CompareInputError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except ValueError as exc:
        raise CompareInputError(str(exc)) from None


def _document(path: Path) -> dict[Key, tuple[int, Decimal]]:
    data = read_json(path)
    if isinstance(data, list):  # `mgwsim bill --month A..B --format json`: the documents of a range
        return _merged(_document_lines(document, f"{path} [{index}]") for index, document in enumerate(data))
    return _document_lines(data, str(path))


def _document_lines(data: Any, path: str) -> dict[Key, tuple[int, Decimal]]:
    if not isinstance(data, dict) or data.get("schema") != "mgwsim.invoice/1":
        raise CompareInputError(f"{path}: not an mgwsim invoice document (schema mgwsim.invoice/1)")
    try:
        month = parse_month(str(data["month"]))
        found: dict[Key, tuple[int, Decimal]] = {}
        for invoice in data["invoices"]:
            for line in invoice["lines"]:
                key = (month, str(invoice["account"]), str(line["item"]), str(line["subject"]))
                quantity, amount = line["quantity"], Decimal(str(line["amount"]))
                if isinstance(quantity, bool) or not isinstance(quantity, int) or not amount.is_finite():
                    raise ValueError(f"line of {key[1]}/{key[2]}/{key[3]} has a bad quantity or amount")
                found[key] = _add(found.get(key), (quantity, amount))
    except (KeyError, TypeError, ValueError, InvalidOperation, TimeFormatError) as exc:
        raise CompareInputError(f"{path}: not an mgwsim invoice document ({exc})") from None
    return found


def _csv(path: Path) -> dict[Key, tuple[int, Decimal]]:
    try:
        rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    except csv.Error as exc:  # (before ValueError: read_text's, for a file that cannot be read)
        raise CompareInputError(f"{path}: not CSV ({exc})") from None
    except ValueError as exc:
        raise CompareInputError(str(exc)) from None
    if not rows:
        raise CompareInputError(f"{path}:1: empty; the header is {','.join(CSV_COLUMNS)}")
    try:
        header = header_names(rows[0], CSV_COLUMNS)
    except ValueError as exc:
        raise CompareInputError(f"{path}:1: {exc}") from None
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise CompareInputError(f"{path}:1: the header lacks {', '.join(missing)} (needs {','.join(CSV_COLUMNS)})")
    where = {name: header.index(name) for name in CSV_COLUMNS}
    found: dict[Key, tuple[int, Decimal]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        key, value = _csv_row(path, number, row, where)
        found[key] = _add(found.get(key), value)
    return found


def _csv_row(path: Path, number: int, row: Sequence[str], where: Mapping[str, int]) -> tuple[Key, tuple[int, Decimal]]:
    if len(row) <= max(where.values()):
        raise CompareInputError(f"{path}:{number}: {len(row)} columns, the header has more")
    cell = {name: row[index].strip() for name, index in where.items()}
    try:
        month = parse_month(cell["month"])
    except TimeFormatError:
        raise CompareInputError(f"{path}:{number}: month {cell['month'][:20]!r} is not YYYY-MM") from None
    try:
        quantity = int(cell["quantity"])
    except ValueError:
        raise CompareInputError(f"{path}:{number}: quantity {cell['quantity'][:20]!r} is not an integer") from None
    try:
        amount = Decimal(cell["amount"])
    except InvalidOperation:
        raise CompareInputError(f"{path}:{number}: amount {cell['amount'][:20]!r} is not a decimal number") from None
    if not amount.is_finite():
        raise CompareInputError(f"{path}:{number}: amount {cell['amount'][:20]!r} is not a finite number")
    for name in ("account", "item", "subject"):
        if not cell[name]:
            raise CompareInputError(f"{path}:{number}: {name} is empty")
    return (month, cell["account"], cell["item"], cell["subject"]), (quantity, amount)
