"""Money: ``Decimal`` amounts and the rounding modes a tariff may name."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
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


def round_money(amount: Decimal, decimals: int, mode: str) -> Decimal:
    """Round an amount to ``decimals`` places with a tariff rounding mode.

    Args:
        amount: The exact amount.
        decimals: Places after the decimal point (0 for yen).
        mode: One of ``down``, ``up``, ``half_up``, ``half_even``.
    """
    quantum = Decimal(1).scaleb(-decimals)
    return amount.quantize(quantum, rounding=ROUNDING_MODES[mode])


def divide_round(numerator: int, denominator: int, mode: str) -> int:
    """Divide two non-negative integers and round to an integer with a tariff rounding mode."""
    if mode == "down":
        return numerator // denominator
    if mode == "up":
        return -(-numerator // denominator)
    quotient = Decimal(numerator) / Decimal(denominator)
    return int(quotient.quantize(Decimal(1), rounding=ROUNDING_MODES[mode]))


def format_money(amount: Decimal) -> str:
    """Format an amount as the invoice's decimal string (no exponent, no float)."""
    text = format(amount, "f")
    return "0" if text in ("-0", "") else text


__all__ = [
    "ROUNDING_MODES",
    "ZERO",
    "RoundingMode",
    "divide_round",
    "format_money",
    "round_money",
]
