"""The charging rules of the service terms, one small pure unit per article.

Every unit takes an account's :class:`~metering.history.AccountHistory`, a JST month and the
:class:`~metering.tariff.Tariff`, and returns :class:`Charge` and :class:`NoCharge` outcomes.
A charge becomes an invoice line; a no-charge is the explanation of a fee that was not charged
to a subject that has events. Each outcome names its rule id, and :data:`ARTICLES` maps rule ids
to the article of the terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

ARTICLES: Final[dict[str, str]] = {
    "SMC-38": "Secure Mobile Connect terms Art. 38 (SIM basic fee)",
    "SMC-39": "Secure Mobile Connect terms Art. 39 and supplementary Art. 2 (line maintenance fee)",
    "SMC-40": "Secure Mobile Connect terms Art. 40 (data fee)",
    "SMC-41": "Secure Mobile Connect terms Art. 41 (mobile gateway fee)",
    "SMC-42": "Secure Mobile Connect terms Art. 33(3) and 42 (sub-option fees)",
    "MONO-57": "Mono Platform terms Art. 57 (platform basic fee)",
    "MONO-58": "Mono Platform terms Art. 58 (sub-option fees)",
    "SMS-71": "SMS terms Art. 71 (fee per message sent)",
    "PT-3": "sakura.io point terms Art. 3 (consumption and monthly deduction)",
    "PT-4": "sakura.io point terms Art. 4 and 7 (voluntary purchase)",
    "PT-5": "sakura.io point terms Art. 5 and 7 (shortfall purchase at the month-end close)",
    "PT-8": "sakura.io point terms Art. 8 (expiry)",
    "PT-12": "sakura.io point terms Art. 12 (points lapse when the account is deleted)",
}
"""Rule id → the article of the terms it implements."""

ITEMS: Final[tuple[str, ...]] = (
    "sim_basic_fee",
    "line_maintenance_fee",
    "data_fee",
    "gateway_fee",
    "suboption_fee",
    "platform_basic_fee",
    "sms_fee",
    "points_purchase",
    "points_shortfall",
)
"""Invoice items, in the order invoices list them."""


@dataclass(frozen=True, slots=True)
class Charge:
    """A fee that is charged: becomes one invoice line.

    Attributes:
        item: The invoice item (:data:`ITEMS`).
        rule: The rule id (key of :data:`ARTICLES`).
        subject: ICCID, gateway id, ``option:target``, SMS kind, pool or ``points``.
        quantity: Chargeable registrations, months, units, messages or points.
        unit_price: Price per quantity, from the tariff.
        evidence: Ids of the events that decided the charge.
        note: Why, in words a support engineer can paste to a customer.
    """

    item: str
    rule: str
    subject: str
    quantity: int
    unit_price: Decimal
    evidence: tuple[str, ...]
    note: str


@dataclass(frozen=True, slots=True)
class NoCharge:
    """A fee that is not charged to a subject that has events, and why.

    Attributes:
        item: The invoice item that was not charged.
        rule: The rule id that decided it.
        subject: The subject.
        reason: Why not, in words.
        evidence: Ids of the events that decided it.
    """

    item: str
    rule: str
    subject: str
    reason: str
    evidence: tuple[str, ...]


Outcome = Charge | NoCharge
