"""MONO-57, the Mono Platform basic fee (Mono Platform terms Art. 57).

Per device ID and month, from issue to deletion; not charged in a month with no communication
through the platform; issue and deletion months are full months; several issues of the same
device ID in one month are each charged. The I-1 and I-2 switches apply as for SMC-38.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import NoCharge, Outcome
from metering.rules.registrations import FeeWording, registration_fee
from metering.tariff import Tariff
from metering.timeutil import format_month

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
    outcomes = registration_fee(
        WORDING, history.devices, history.messages, month, tariff.platform_basic_fee, tariff.interpretations
    )
    for sim in sorted(history.deviceless):
        if any(period.covers_month(month) for period in history.devices.get(sim, ())):
            continue  # the device ID's own outcome above speaks for the month
        sent = [usage for usage in history.deviceless[sim] if usage.month == month]
        if sent:
            outcomes.append(
                NoCharge(
                    WORDING.item,
                    WORDING.rule,
                    sim,
                    f"no platform basic fee: {sum(usage.amount for usage in sent)} platform message(s) of SIM {sim} "
                    f"in {format_month(month)}, but no Mono Platform device ID was issued for it (Art. 57(1)); "
                    "the messages consume points all the same (point terms Art. 3)",
                    (sent[0].event_id,),
                )
            )
    return outcomes
