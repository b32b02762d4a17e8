"""SMS-71, the SMS fee (SMS terms Art. 71).

Charged per message sent in the month (1st to last day), whether or not delivery succeeded.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import Charge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month


def sms_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMS-71 per message kind in ``month``."""
    outcomes: list[Outcome] = []
    for kind in sorted(history.sms):
        sent = [usage for usage in history.sms[kind] if usage.month == month]
        count = sum(usage.amount for usage in sent)
        if count:
            outcomes.append(
                Charge(
                    "sms_fee",
                    "SMS-71",
                    kind,
                    count,
                    tariff.sms_fee[kind],
                    (sent[0].event_id,),
                    f"{count} {kind} message(s) sent in {format_month(month)}, "
                    "charged whether delivered or not (Art. 71)",
                )
            )
    return outcomes
