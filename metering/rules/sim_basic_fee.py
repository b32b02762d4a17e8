"""SMC-38, the SIM basic fee (Secure Mobile Connect terms Art. 38).

Per registered SIM and month, from registration until the deletion request. Not charged for a
month in which the SIM was not used for communication: traffic of more than 0 bytes, or a
platform message while it is registered (Art. 57(2) makes communication through the platform
closed-network or internet communication). Registration and deletion months are full months. A SIM
registered several times in one month is charged once per registration.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import Outcome
from metering.rules.registrations import FeeWording, registration_fee
from metering.tariff import Tariff

WORDING = FeeWording(
    item="sim_basic_fee",
    rule="SMC-38",
    used="SIM used for communication",
    unused="SIM registered but not used for communication",
    registrations="registration(s)",
    articles="Art. 38(2), 38(3)",
)


def sim_basic_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMC-38 for every SIM of the account in ``month``."""
    return registration_fee(
        WORDING, history.sims, history.communication, month, tariff.sim_basic_fee, tariff.interpretations
    )
