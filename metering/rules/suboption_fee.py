"""SMC-42 and MONO-58, sub-option fees (Art. 33(3), 42; Mono Platform Art. 58).

Each sub-option's fee follows its own conditions; the tariff declares per sub-option the rule
that bills it and a monthly full-month fee (possibly zero). A sub-option enabled at any time in
the month is charged one month.
"""

from __future__ import annotations

from metering.history import AccountHistory
from metering.rules import Charge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month


def suboption_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMC-42 / MONO-58 for every sub-option of the account in ``month``."""
    outcomes: list[Outcome] = []
    for subject in sorted(history.options):
        periods = [period for period in history.options[subject] if period.covers_month(month)]
        if not periods:
            continue
        option = tariff.suboptions[subject.split(":", 1)[0]]
        outcomes.append(
            Charge(
                "suboption_fee",
                option.rule,
                subject,
                1,
                option.monthly,
                tuple(period.start_id for period in periods),
                f"sub-option {option.name} enabled in {format_month(month)}: one full month per the "
                f"tariff's conditions ({'Art. 58' if option.rule == 'MONO-58' else 'Art. 42'})",
            )
        )
    return outcomes
