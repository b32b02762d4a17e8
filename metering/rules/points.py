"""sakura.io points: consumption, purchases, shortfall, expiry (point terms Art. 3-12).

PT-3  At each month end the account's message count is closed; on the 1st of the next month
      the points are deducted from the balance.
PT-4  A voluntary purchase is a multiple of 20,000 points, at least 20,000, at most the maximum.
PT-5  When the balance cannot pay the deduction, the provider buys the smallest multiple of
      20,000 (at least 20,000) that brings the balance to >= 0; granted on the last day of the
      month that needed it and billed with that month's invoice.
PT-7  20,000 points cost 100 yen before tax.
PT-8  Paid points lapse at the end of the month 24 months after the grant month; free points
      at the expiry given with them.
PT-12 All points lapse when the account is deleted.
I-4   Consumption order (default: earliest expiry first, free before paid on ties).
I-5   Points expiring at the end of month M cannot pay M's deduction (default).
I-6   A shortfall purchase in the month the account is deleted is billed, and its points lapse
      with the account (default ``lapse``; ``keep`` leaves them on the deleted account).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from metering.history import AccountHistory
from metering.rules import Charge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month, month_start


@dataclass(slots=True)
class Lot:
    """Points of one grant that are still held."""

    granted: int
    expires: int
    paid: bool
    order: int
    remaining: int


@dataclass(frozen=True, slots=True)
class PointsBlock:
    """The points of one account in one month: the month's close and the deduction on the 1st after.

    It is the ``points`` block of the invoice. The identity
    ``closing = opening + granted + purchased + shortfall_purchased - consumed - expired`` always holds.
    """

    opening: int = 0
    granted: int = 0
    purchased: int = 0
    shortfall_purchased: int = 0
    consumed: int = 0
    expired: int = 0
    closing: int = 0

    def to_json(self) -> dict[str, int]:
        """The block as EVENTS.md writes it."""
        return {
            "opening": self.opening,
            "granted": self.granted,
            "purchased": self.purchased,
            "shortfall_purchased": self.shortfall_purchased,
            "consumed": self.consumed,
            "expired": self.expired,
            "closing": self.closing,
        }

    @property
    def active(self) -> bool:
        """Whether the account held or moved any points in the month."""
        return any(self.to_json().values())


@dataclass(frozen=True, slots=True)
class PointsClose:
    """A month's :class:`PointsBlock` with the events that decided it (for invoice evidence)."""

    block: PointsBlock
    purchase_ids: tuple[str, ...] = ()
    consumption_ids: tuple[str, ...] = field(default=())
    shortfall_lapsed: bool = False
    """Whether the shortfall purchase's points lapsed with the account deleted in the month (I-6)."""


def _consumption_key(order: str) -> Callable[[Lot], tuple[int | bool, ...]]:
    if order == "grant_order":
        return lambda lot: (lot.granted, lot.order)
    if order == "earliest_expiry_paid_first":
        return lambda lot: (lot.expires, not lot.paid, lot.order)
    return lambda lot: (lot.expires, lot.paid, lot.order)


def points_ledger(history: AccountHistory, last_month: int, tariff: Tariff) -> dict[int, PointsClose]:
    """Close every month of the account's points up to ``last_month``.

    Returns:
        The :class:`PointsClose` of each month from the account's first event month.
    """
    if not history.event_months:
        return {}
    block, validity = tariff.points_block, tariff.points_paid_validity_months
    usable_at_deduction = tariff.interpretations.expiring_at_deduction == "available"
    lapse_with_account = tariff.interpretations.shortfall_on_deleted_account == "lapse"
    order_key = _consumption_key(tariff.interpretations.consumption_order)
    lots: list[Lot] = []
    closes: dict[int, PointsClose] = {}
    for month in range(min(history.event_months), last_month + 1):
        start, end = month_start(month), month_start(month + 1)
        opening = sum(lot.remaining for lot in lots)
        expired = granted = purchased = 0
        purchase_ids: list[str] = []
        happenings: list[tuple[int, int, str, int]] = []
        for index, grant in enumerate(history.grants):
            if start <= grant.ts < end:
                happenings.append((grant.ts, 0, "grant", index))
        deleted = False
        for ts, _ in history.deletions:
            if start <= ts < end:
                happenings.append((ts, 1, "delete", 0))
                deleted = True
        for ts, _, what, index in sorted(happenings):
            # lots that lapse before this moment
            for lot in lots:
                if lot.remaining and lot.expires <= ts:
                    expired += lot.remaining
                    lot.remaining = 0
            if what == "grant":
                grant = history.grants[index]
                lots.append(Lot(grant.ts, grant.expires, grant.paid, len(lots), grant.points))
                if grant.paid:
                    purchased += grant.points
                    purchase_ids.append(grant.event_id)
                else:
                    granted += grant.points
            else:  # PT-12: the account is deleted, every point lapses
                for lot in lots:
                    expired += lot.remaining
                    lot.remaining = 0
        # the close of the month and the deduction on the 1st of the next one
        for lot in lots:
            if lot.remaining and (lot.expires < end or (lot.expires == end and not usable_at_deduction)):
                expired += lot.remaining
                lot.remaining = 0
        used = [usage for usage in history.consumption if usage.month == month]
        consumed = sum(usage.amount for usage in used)
        due = consumed
        for lot in sorted((lot for lot in lots if lot.remaining), key=order_key):
            taken = min(lot.remaining, due)
            lot.remaining -= taken
            due -= taken
            if not due:
                break
        shortfall = 0
        lapsed = False
        if due:
            shortfall = max(block, -(-due // block) * block)
            if deleted and lapse_with_account:  # I-6: granted to an account that no longer exists
                expired += shortfall - due
                lapsed = True
            else:
                lots.append(Lot(end - 1, month_start(month + validity + 1), True, len(lots), shortfall - due))
        for lot in lots:
            if lot.remaining and lot.expires <= end:
                expired += lot.remaining
                lot.remaining = 0
        month_block = PointsBlock(
            opening=opening,
            granted=granted,
            purchased=purchased,
            shortfall_purchased=shortfall,
            consumed=consumed,
            expired=expired,
            closing=sum(lot.remaining for lot in lots),
        )
        closes[month] = PointsClose(
            month_block, tuple(purchase_ids), tuple(usage.event_id for usage in used[:1]), lapsed
        )
    return closes


def points_charges(close: PointsClose, month: int, tariff: Tariff) -> list[Outcome]:
    """The invoice lines of a month's points: voluntary purchases (PT-4) and the shortfall (PT-5)."""
    outcomes: list[Outcome] = []
    name = format_month(month)
    price = tariff.point_price
    if close.block.purchased:
        outcomes.append(
            Charge(
                "points_purchase",
                "PT-4",
                "points",
                close.block.purchased,
                price,
                close.purchase_ids,
                f"{close.block.purchased} points bought in {name} at {tariff.points_block_price} yen per "
                f"{tariff.points_block} points before tax (PT-4, PT-7)",
            )
        )
    if close.block.shortfall_purchased:
        outcomes.append(
            Charge(
                "points_shortfall",
                "PT-5",
                "points",
                close.block.shortfall_purchased,
                price,
                close.consumption_ids,
                f"{close.block.consumed} points consumed by messages in {name} exceeded the usable balance; "
                f"{close.block.shortfall_purchased} points bought at the month-end close, granted on the last day "
                f"of {name} (PT-5, PT-7)"
                + (
                    f"; the account was deleted in {name}, so the points left over lapse with it (PT-12, I-6)"
                    if close.shortfall_lapsed
                    else ""
                ),
            )
        )
    return outcomes
