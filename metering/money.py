"""Money: ``Decimal`` amounts and the rounding modes a tariff may name."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Literal

RoundingMode = Literal["down", "up", "half_up", "half_even"]
ROUNDING_MODES: dict[str, str] = {
    "down": ROUND_FLOOR,
    "up": ROUND_CEILING,
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
}
"""Tariff rounding names and the ``decimal`` modes they mean (amounts are never negative)."""

ZERO = Decimal(0)

MONEY_CONTEXT = Context(prec=200, Emax=10_000, Emin=-10_000, traps=[InvalidOperation, DivisionByZero, Overflow])
"""The arithmetic of money: 200 significant digits, so that every product of an accepted volume
(sums of 64-bit counts) and a tariff price (at most 10^12, 8 places) and every sum of such amounts
is exact; Python's default context keeps only 28 digits and would round them silently."""


def round_money(amount: Decimal, decimals: int, mode: str) -> Decimal:
    """Round an amount to ``decimals`` places with a tariff rounding mode.

    Args:
        amount: The exact amount.
        decimals: Places after the decimal point (0 for yen).
        mode: One of ``down``, ``up``, ``half_up``, ``half_even``.
    """
    quantum = Decimal(1).scaleb(-decimals)
    return amount.quantize(quantum, rounding=ROUNDING_MODES[mode], context=MONEY_CONTEXT)


def priced(unit_price: Decimal, quantity: int, decimals: int, mode: str) -> Decimal:
    """``quantity x unit_price``, computed exactly and rounded to ``decimals`` places with ``mode``."""
    return round_money(MONEY_CONTEXT.multiply(unit_price, quantity), decimals, mode)


def total(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of amounts."""
    result = ZERO
    for amount in amounts:
        result = MONEY_CONTEXT.add(result, amount)
    return result


def from_minor(minor: int, decimals: int) -> Decimal:
    """The amount of ``minor`` units of ``10**-decimals`` (e.g. sen), exactly."""
    return Decimal(minor).scaleb(-decimals, context=MONEY_CONTEXT)


def to_minor(amount: Decimal, decimals: int) -> int:
    """An amount with at most ``decimals`` places in minor units of ``10**-decimals``, exactly."""
    return int(amount.scaleb(decimals, context=MONEY_CONTEXT))


def divide_round(numerator: int, denominator: int, mode: str) -> int:
    """Divide two non-negative integers and round to an integer with a tariff rounding mode (exact)."""
    quotient, remainder = divmod(numerator, denominator)
    if mode == "down" or remainder == 0:
        return quotient
    if mode == "up":
        return quotient + 1
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and (mode == "half_up" or quotient % 2 == 1)):
        return quotient + 1
    return quotient


def format_money(amount: Decimal) -> str:
    """Format an amount as the invoice's decimal string (no exponent, no float)."""
    text = format(amount, "f")
    return "0" if text in ("-0", "") else text


__all__ = [
    "MONEY_CONTEXT",
    "ROUNDING_MODES",
    "ZERO",
    "RoundingMode",
    "divide_round",
    "format_money",
    "from_minor",
    "priced",
    "round_money",
    "to_minor",
    "total",
]
