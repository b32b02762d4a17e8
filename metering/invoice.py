"""The invoice (``mgwsim.invoice/1``): lines, totals, tax and the points block.

Invoices are immutable records built from rule outcomes by :func:`build_invoice`. Money is
``Decimal`` and is written as decimal strings; quantities are integers. Line order is fixed
(item order of EVENTS.md, then subject), so equal invoices serialise to equal bytes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, Final, NamedTuple

from metering.money import MONEY_CONTEXT, format_money, priced, round_money, total
from metering.rules import ITEMS, Charge
from metering.rules.points import PointsBlock, PointsClose
from metering.tariff import Tariff
from metering.timeutil import format_month

SCHEMA: Final = "mgwsim.invoice/1"
TIMEZONE: Final = "Asia/Tokyo"


class Line(NamedTuple):
    """One invoice line: a charge with its rounded amount.

    A named tuple rather than a dataclass: a month of a large fleet has millions of lines, and a
    tuple is built (and pickled between Ray workers) several times faster.
    """

    item: str
    rule: str
    subject: str
    quantity: int
    unit_price: Decimal
    amount: Decimal
    evidence: tuple[str, ...]
    note: str

    def to_json(self) -> dict[str, Any]:
        """The line as EVENTS.md writes it."""
        return {
            "item": self.item,
            "rule": self.rule,
            "subject": self.subject,
            "quantity": self.quantity,
            "unit_price": format_money(self.unit_price),
            "amount": format_money(self.amount),
            "evidence": list(self.evidence),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Invoice:
    """One account's invoice for one month."""

    account: str
    currency: str
    lines: tuple[Line, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    points: PointsBlock

    def to_json(self, lines: Any = None) -> dict[str, Any]:
        """The invoice as EVENTS.md writes it (``lines``: what to put in place of its lines, if given)."""
        return {
            "account": self.account,
            "currency": self.currency,
            "lines": [line.to_json() for line in self.lines] if lines is None else lines,
            "subtotal": format_money(self.subtotal),
            "tax": format_money(self.tax),
            "total": format_money(self.total),
            "points": self.points.to_json(),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the lines as a few joined columns of text (see :func:`pack_lines`)."""
        return (
            _unpickle_invoice,
            (self.account, self.currency, pack_lines(self.lines), self.subtotal, self.tax, self.total, self.points),
        )


FIELD_SEPARATOR: Final = "\x1f"
"""Joins a column's values in a packed invoice (ASCII unit separator)."""
EVIDENCE_SEPARATOR: Final = "\x1e"
"""Joins the evidence ids of one line in a packed invoice (ASCII record separator)."""
PackedLines = tuple[int, tuple[str, ...]] | tuple[Line, ...]


def pack_lines(lines: Sequence[Line]) -> PackedLines:
    """Lines as ``(count, columns)``: each column's values joined into one text.

    A shard of a Ray run sends its invoices to the driver: a month of a large account has hundreds
    of thousands of lines, and pickling each line's strings and decimals one by one costs seconds
    on both sides, where a few long texts are copied at once. Lines whose text contains a
    separator are sent as they are.
    """
    count = len(lines)
    if not count:
        return lines if isinstance(lines, tuple) else tuple(lines)
    columns = (
        FIELD_SEPARATOR.join([line.item for line in lines]),
        FIELD_SEPARATOR.join([line.rule for line in lines]),
        FIELD_SEPARATOR.join([line.subject for line in lines]),
        FIELD_SEPARATOR.join([str(line.quantity) for line in lines]),
        FIELD_SEPARATOR.join([str(line.unit_price) for line in lines]),
        FIELD_SEPARATOR.join([str(line.amount) for line in lines]),
        FIELD_SEPARATOR.join([EVIDENCE_SEPARATOR.join(line.evidence) for line in lines]),
        FIELD_SEPARATOR.join([line.note for line in lines]),
    )
    joins = sum(len(line.evidence) - 1 for line in lines if line.evidence)
    if (
        any(column.count(FIELD_SEPARATOR) != count - 1 for column in columns)
        or columns[6].count(EVIDENCE_SEPARATOR) != joins
        or any(line.evidence == ("",) for line in lines)  # would come back as no evidence
    ):
        return tuple(lines)  # a separator inside some text: as they are
    return count, columns


def unpack_lines(packed: PackedLines) -> tuple[Line, ...]:
    """The lines :func:`pack_lines` packed."""
    if not packed or isinstance(packed[0], Line):
        return packed
    _, (items, rules, subjects, quantities, unit_prices, amounts, evidence, notes) = packed
    return tuple(
        map(
            Line,
            items.split(FIELD_SEPARATOR),
            rules.split(FIELD_SEPARATOR),
            subjects.split(FIELD_SEPARATOR),
            map(int, quantities.split(FIELD_SEPARATOR)),
            map(Decimal, unit_prices.split(FIELD_SEPARATOR)),
            map(Decimal, amounts.split(FIELD_SEPARATOR)),
            [tuple(ids.split(EVIDENCE_SEPARATOR)) if ids else () for ids in evidence.split(FIELD_SEPARATOR)],
            notes.split(FIELD_SEPARATOR),
        )
    )


def _unpickle_invoice(
    account: str,
    currency: str,
    lines: PackedLines,
    subtotal: Decimal,
    tax: Decimal,
    total: Decimal,
    points: PointsBlock,
) -> Invoice:
    return Invoice(account, currency, unpack_lines(lines), subtotal, tax, total, points)


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    """All invoices of one month: what ``mgwsim bill --format json`` prints."""

    month: int
    tariff: str
    invoices: tuple[Invoice, ...]

    def to_json(self) -> dict[str, Any]:
        """The document as EVENTS.md writes it."""
        return {
            "schema": SCHEMA,
            "month": format_month(self.month),
            "timezone": TIMEZONE,
            "tariff": self.tariff,
            "invoices": [invoice.to_json() for invoice in self.invoices],
        }

    def dumps(self) -> str:
        """Canonical JSON text of the document (stable bytes for equal documents).

        Exactly ``json.dumps(self.to_json(), ensure_ascii=False, indent=1)`` (a property test holds
        the two to the same text), but the lines — millions in a month of a large fleet — are laid
        out by :func:`_lines_text` with the C string encoder, rather than by the indenting encoder,
        which is pure Python and takes seconds per million lines.
        """
        document = {
            "schema": SCHEMA,
            "month": format_month(self.month),
            "timezone": TIMEZONE,
            "tariff": self.tariff,
            "invoices": [invoice.to_json(f"{_PLACEHOLDER}{number}") for number, invoice in enumerate(self.invoices)],
        }
        texts = [_lines_text(invoice.lines) for invoice in self.invoices]
        text = json.dumps(document, ensure_ascii=False, indent=1)
        markers = [json.dumps(f"{_PLACEHOLDER}{number}") for number in range(len(texts))]
        if any(text.count(marker) != 1 for marker in markers):  # a value that looks like a marker: no shortcut
            return json.dumps(self.to_json(), ensure_ascii=False, indent=1)
        for marker, lines in zip(markers, texts, strict=True):
            text = text.replace(marker, lines, 1)
        return text


_PLACEHOLDER: Final = "\x00lines "
"""Stands for an invoice's lines in the document's text until they are laid out (no value holds a NUL)."""
_STRING: Final = encode_basestring
"""A JSON string as ``json.dumps(..., ensure_ascii=False)`` writes it (the C encoder, called directly)."""


def _lines_text(lines: tuple[Line, ...]) -> str:
    """An invoice's ``lines`` array as ``json.dumps(..., indent=1)`` lays it out at its depth (3)."""
    if not lines:
        return "[]"
    string = _STRING
    repeated = functools.lru_cache(maxsize=1024)(string)  # items, rules, notes: a few texts, many times
    money = functools.lru_cache(maxsize=1024)(lambda amount: string(format_money(amount)))
    parts = []
    for line in lines:
        if line.evidence:
            evidence = "[\n      " + ",\n      ".join(map(string, line.evidence)) + "\n     ]"
        else:
            evidence = "[]"
        parts.append(
            "    {\n"
            f'     "item": {repeated(line.item)},\n'
            f'     "rule": {repeated(line.rule)},\n'
            f'     "subject": {string(line.subject)},\n'
            f'     "quantity": {line.quantity if type(line.quantity) is int else json.dumps(line.quantity)},\n'
            f'     "unit_price": {money(line.unit_price)},\n'
            f'     "amount": {money(line.amount)},\n'
            f'     "evidence": {evidence},\n'
            f'     "note": {repeated(line.note)}\n'
            "    }"
        )
    return "[\n" + ",\n".join(parts) + "\n   ]"


def line_sort_key(line: Line) -> tuple[int, str, Decimal, str]:
    """Lines are listed by item (EVENTS.md order), subject, unit price, note."""
    return (ITEMS.index(line.item), line.subject, line.unit_price, line.note)


def make_line(charge: Charge, tariff: Tariff) -> Line:
    """Price one charge: ``amount = quantity x unit price``, rounded per the tariff."""
    amount = priced(charge.unit_price, charge.quantity, tariff.amount_decimals, tariff.line_rounding)
    return Line(
        charge.item,
        charge.rule,
        charge.subject,
        charge.quantity,
        charge.unit_price,
        amount,
        charge.evidence,
        charge.note,
    )


def points_block(close: PointsClose | None) -> PointsBlock:
    """The invoice's points block for a month's close (all zero when there is none)."""
    return PointsBlock() if close is None else close.block


def build_invoice(account: str, lines: Iterable[Line], points: PointsBlock, tariff: Tariff) -> Invoice:
    """Total the lines of one account: subtotal, tax (rounded once per invoice), total."""
    ordered = tuple(sorted(lines, key=line_sort_key))
    subtotal = total(line.amount for line in ordered)
    tax = round_money(MONEY_CONTEXT.multiply(subtotal, tariff.tax_rate), tariff.amount_decimals, tariff.tax_rounding)
    return Invoice(account, tariff.currency, ordered, subtotal, tax, MONEY_CONTEXT.add(subtotal, tax), points)


def sort_invoices(invoices: Sequence[Invoice]) -> tuple[Invoice, ...]:
    """Invoices are listed by account."""
    return tuple(sorted(invoices, key=lambda invoice: invoice.account))
