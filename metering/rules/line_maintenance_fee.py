"""SMC-39, the line maintenance fee (Art. 39 and supplementary Art. 2).

Per SIM. Charged when the SIM stays registered without communication for 12 months counted
from the month of its registration (M..M+11), or for 12 consecutive months counted from the month
after its last communication (L+1..L+12), and again every further 12 idle months. The fee belongs
to the month in which the period completes. A SIM already registered on 2022-08-01 counts its
first period from 2022-08 (supplementary Art. 2). Communication is traffic of more than 0 bytes or
a platform message while the SIM is registered (Art. 57(2)). I-3 decides a deletion during the 12th
month; a re-registration starts a new count from its month, but a month in which the SIM
communicated in any registration is not idle (rule 2 then counts from the month after).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from metering.history import AccountHistory, Period, Usage
from metering.rules import Charge, NoCharge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month, month_start


@dataclass(frozen=True, slots=True)
class IdleCount:
    """Where the idle count of one registration period stands at the end of a month.

    Attributes:
        anchor: First month of the current idle run.
        last_use: Id of the last communication before the run, if any.
        idle: Idle months completed by the end of the month (0 if it had communication).
    """

    anchor: int
    last_use: str | None
    idle: int


def idle_count(period: Period, usages: list[Usage], month: int, tariff: Tariff) -> IdleCount:
    """Count the idle months of a registration period up to the end of ``month``.

    ``usages`` is the SIM's communication in every registration (I-3): a month in which the SIM
    communicated, before or after a re-registration, is not idle.
    """
    anchor = period.start_month
    transitional = tariff.transitional_start
    if period.start < month_start(transitional) and (period.end is None or period.end >= month_start(transitional)):
        anchor = max(anchor, transitional)
    last_use = None
    for usage in usages:
        if usage.amount > 0 and usage.month <= month and usage.month + 1 >= anchor:
            anchor = usage.month + 1
            last_use = usage.event_id
    return IdleCount(anchor, last_use, max(0, month - anchor + 1))


def _progress(count: IdleCount, month: int, length: int) -> str:
    """Where the idle count stands, in words."""
    if count.last_use is not None and count.anchor == month + 1:
        return f"SIM used for communication in {format_month(month)}"
    if count.idle == 0:
        return f"the idle count starts in {format_month(count.anchor)}"
    current = count.anchor + ((count.idle - 1) // length) * length
    done = count.idle - (current - count.anchor)
    return (
        f"{done} of {length} idle months; the period {format_month(current)}..{format_month(current + length - 1)} "
        f"would complete in {format_month(current + length - 1)}"
    )


@functools.lru_cache(maxsize=4096)
def maintenance_note(month: int, length: int, idle: int, after_use: bool, transitional: bool) -> str:
    """The note of a charged line maintenance fee (shared by every rater)."""
    if transitional:
        basis = "counted from 2022-08 for a SIM registered before 2022-08-01 (supplementary Art. 2)"
    elif after_use:
        basis = "since the month after its last communication"
    else:
        basis = "since its registration month"
    start = format_month(month - length + 1)
    return (
        f"no communication for {length} months {start}..{format_month(month)}, {basis}; idle month {idle} (Art. 39(1))"
    )


def line_maintenance_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMC-39 for every SIM of the account in ``month``."""
    outcomes: list[Outcome] = []
    length = tariff.idle_months
    for sim in sorted(history.sims):
        usages = history.communication.get(sim, [])
        for period in history.sims[sim]:
            if not period.covers_month(month):
                continue
            count = idle_count(period, usages, month, tariff)
            evidence = (period.start_id,) + ((count.last_use,) if count.last_use else ())
            completes = count.idle >= length and count.idle % length == 0
            if not completes:
                outcomes.append(
                    NoCharge(
                        "line_maintenance_fee",
                        "SMC-39",
                        sim,
                        f"no line maintenance fee in {format_month(month)}: "
                        f"{_progress(count, month, length)} (Art. 39(1))",
                        evidence,
                    )
                )
                continue
            start = format_month(month - length + 1)
            through_end = period.end is None or period.end >= month_start(month + 1)
            if not through_end and tariff.interpretations.deleted_in_final_month == "no_fee":
                outcomes.append(
                    NoCharge(
                        "line_maintenance_fee",
                        "SMC-39",
                        sim,
                        f"no line maintenance fee: the idle period {start}..{format_month(month)} would complete, "
                        f"but the SIM was deleted during {format_month(month)} (I-3)",
                        evidence + ((period.end_id,) if period.end_id else ()),
                    )
                )
                continue
            transitional = count.anchor == tariff.transitional_start and period.start < month_start(
                tariff.transitional_start
            )
            outcomes.append(
                Charge(
                    "line_maintenance_fee",
                    "SMC-39",
                    sim,
                    1,
                    tariff.line_maintenance_fee,
                    evidence,
                    maintenance_note(month, length, count.idle, count.last_use is not None, transitional),
                )
            )
    return outcomes
