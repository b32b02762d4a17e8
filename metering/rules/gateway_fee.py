"""SMC-41, the mobile gateway fee (Secure Mobile Connect terms Art. 41).

Per gateway and month, from creation until the deletion request; creation and deletion months
are full months; there is no usage exemption. A gateway created twice in a month is charged per
creation.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import Charge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month


def gateway_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMC-41 for every gateway of the account in ``month``."""
    outcomes: list[Outcome] = []
    for gateway in sorted(history.gateways):
        periods = [period for period in history.gateways[gateway] if period.covers_month(month)]
        if periods:
            outcomes.append(
                Charge(
                    "gateway_fee",
                    "SMC-41",
                    gateway,
                    len(periods),
                    tariff.gateway_fee,
                    tuple(period.start_id for period in periods),
                    f"gateway existed in {format_month(month)}: {len(periods)} creation(s), each a full month, "
                    "no usage exemption (Art. 41(2))",
                )
            )
    return outcomes
