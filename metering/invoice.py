"""The invoice (``mgwsim.invoice/1``): lines, totals, tax and the points block.

Invoices are immutable records built from rule outcomes by :func:`build_invoice`. Money is
``Decimal`` and is written as decimal strings; quantities are integers. Line order is fixed
(item order of EVENTS.md, then subject), so equal invoices serialise to equal bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from metering.money import ZERO, format_money, round_money
from metering.rules import ITEMS, Charge
from metering.rules.points import PointsBlock, PointsClose
from metering.tariff import Tariff
from metering.timeutil import format_month

SCHEMA: Final = "mgwsim.invoice/1"
TIMEZONE: Final = "Asia/Tokyo"


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line: a charge with its rounded amount."""

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

    def to_json(self) -> dict[str, Any]:
        """The invoice as EVENTS.md writes it."""
        return {
            "account": self.account,
            "currency": self.currency,
            "lines": [line.to_json() for line in self.lines],
            "subtotal": format_money(self.subtotal),
            "tax": format_money(self.tax),
            "total": format_money(self.total),
            "points": self.points.to_json(),
        }


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
        """Canonical JSON text of the document (stable bytes for equal documents)."""
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)


def line_sort_key(line: Line) -> tuple[int, str, Decimal, str]:
    """Lines are listed by item (EVENTS.md order), subject, unit price, note."""
    return (ITEMS.index(line.item), line.subject, line.unit_price, line.note)


def make_line(charge: Charge, tariff: Tariff) -> Line:
    """Price one charge: ``amount = quantity x unit price``, rounded per the tariff."""
    amount = round_money(charge.unit_price * charge.quantity, tariff.amount_decimals, tariff.line_rounding)
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
    subtotal = sum((line.amount for line in ordered), ZERO)
    tax = round_money(subtotal * tariff.tax_rate, tariff.amount_decimals, tariff.tax_rounding)
    return Invoice(account, tariff.currency, ordered, subtotal, tax, subtotal + tax, points)


def sort_invoices(invoices: Sequence[Invoice]) -> tuple[Invoice, ...]:
    """Invoices are listed by account."""
    return tuple(sorted(invoices, key=lambda invoice: invoice.account))
