"""MONO-57, the Mono Platform basic fee (Mono Platform terms Art. 57).

Per device ID and month, from issue to deletion; not charged in a month with no communication
through the platform; issue and deletion months are full months; several issues of the same
device ID in one month are each charged. The I-1 and I-2 switches apply as for SMC-38.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import Outcome
from metering.rules.registrations import FeeWording, registration_fee
from metering.tariff import Tariff

WORDING = FeeWording(
    item="platform_basic_fee",
    rule="MONO-57",
    used="device ID used for communication through the platform",
    unused="no communication through the platform",
    registrations="device-ID issue(s)",
    articles="Art. 57(2), 57(3)",
)


def platform_basic_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate MONO-57 for every device ID of the account in ``month``."""
    return registration_fee(
        WORDING, history.devices, history.messages, month, tariff.platform_basic_fee, tariff.interpretations
    )
