"""The rule units applied to every account and month, in invoice order: the one list both raters use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from metering.history import AccountHistory
from metering.rules import Outcome
from metering.rules.data_fee import data_fee
from metering.rules.gateway_fee import gateway_fee
from metering.rules.line_maintenance_fee import line_maintenance_fee
from metering.rules.platform_basic_fee import platform_basic_fee
from metering.rules.sim_basic_fee import sim_basic_fee
from metering.rules.sms_fee import sms_fee
from metering.rules.suboption_fee import suboption_fee
from metering.tariff import Tariff

RuleUnit = Callable[[AccountHistory, int, Tariff], list[Outcome]]
"""A charging rule: an account's history, a JST month and the tariff → its outcomes."""

MONTHLY_RULES: Final[tuple[RuleUnit, ...]] = (
    sim_basic_fee,  # SMC-38
    line_maintenance_fee,  # SMC-39
    data_fee,  # SMC-40
    gateway_fee,  # SMC-41
    suboption_fee,  # SMC-42, MONO-58
    platform_basic_fee,  # MONO-57
    sms_fee,  # SMS-71
)
"""The rule units applied to every account and month (points are closed separately)."""
