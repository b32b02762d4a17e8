"""Shared reading of "registered in the month, and used for communication" (Art. 38, 57).

SIM basic fee (SMC-38) and platform basic fee (MONO-57) have the same shape: a full-month fee
per registration (device-ID issue) that touches the month, not charged in a month without
communication. The two interpretation switches I-1 and I-2 apply to both.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from metering.history import Period, Usage
from metering.rules import Charge, NoCharge, Outcome
from metering.tariff import Interpretations
from metering.timeutil import format_month


@dataclass(frozen=True, slots=True)
class RegistrationMonth:
    """One registration period touching the month, and whether it is chargeable.

    Attributes:
        period: The period.
        chargeable: Whether the month's fee is charged for it.
        used_by: Id of the first usage event that made it chargeable (if any).
        edge: Whether the month is the period's registration or deletion month.
    """

    period: Period
    chargeable: bool
    used_by: str | None
    edge: bool


def registrations_in_month(
    periods: Sequence[Period], usages: Sequence[Usage], month: int, switches: Interpretations
) -> list[RegistrationMonth]:
    """Decide, per registration period touching ``month``, whether its fee is charged.

    Args:
        periods: The subject's registration periods.
        usages: The subject's usage (traffic with bytes > 0, or messages).
        month: JST month index.
        switches: I-1 (``usage_test``) and I-2 (``exempt_first_and_last_month``).
    """
    used = [usage for usage in usages if usage.amount > 0 and usage.month == month]
    decided: list[RegistrationMonth] = []
    for index, period in enumerate(periods):
        if not period.covers_month(month):
            continue
        if switches.usage_test == "per_registration":
            own = [usage for usage in used if usage.period == index]
        else:
            own = used
        edge = period.start_month == month or period.end_month == month
        chargeable = bool(own) or (edge and not switches.exempt_first_and_last_month)
        decided.append(RegistrationMonth(period, chargeable, own[0].event_id if own else None, edge))
    return decided


@dataclass(frozen=True, slots=True)
class FeeWording:
    """How one registration fee speaks of itself in notes and explanations."""

    item: str
    rule: str
    used: str
    unused: str
    registrations: str
    articles: str


def registration_fee(
    wording: FeeWording,
    periods_by_subject: dict[str, list[Period]],
    usages_by_subject: dict[str, list[Usage]],
    month: int,
    price: Decimal,
    switches: Interpretations,
) -> list[Outcome]:
    """Rate a full-month fee per registration with the no-communication exemption."""
    outcomes: list[Outcome] = []
    name = format_month(month)
    for subject in sorted(periods_by_subject):
        decided = registrations_in_month(
            periods_by_subject[subject], usages_by_subject.get(subject, ()), month, switches
        )
        if not decided:
            continue
        charged = [entry for entry in decided if entry.chargeable]
        if not charged:
            outcomes.append(
                NoCharge(
                    wording.item,
                    wording.rule,
                    subject,
                    f"no {wording.item.replace('_', ' ')}: {wording.unused} in {name} ({wording.articles})",
                    tuple(entry.period.start_id for entry in decided),
                )
            )
            continue
        used = next((entry.used_by for entry in charged if entry.used_by), None)
        evidence = tuple(entry.period.start_id for entry in charged) + ((used,) if used else ())
        outcomes.append(
            Charge(
                wording.item,
                wording.rule,
                subject,
                len(charged),
                price,
                evidence,
                registration_note(wording, month, len(charged), used is not None),
            )
        )
    return outcomes


@functools.lru_cache(maxsize=4096)
def registration_note(wording: FeeWording, month: int, charged: int, used: bool) -> str:
    """The note of a charged registration fee (shared by every rater)."""
    name = format_month(month)
    if used:
        why = f"{wording.used} in {name}"
    else:
        why = f"{name} is the registration or deletion month, charged without communication (I-2 off)"
    return f"{why}; {charged} {wording.registrations} in the month, each a full month ({wording.articles})"
