"""The summary tables ``mgwsim run`` prints (rich)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from rich.table import Table

from metering.money import format_money
from metering.timeutil import format_month

if TYPE_CHECKING:
    from simulator.runner import RunResult


def summary_tables(result: RunResult) -> Iterator[Table]:
    """SIMs by state, sessions by closure cause, refusals, and charges by item per month."""
    stats = result.stats
    sims = Table(title=f"{result.scenario.name}: SIMs", show_header=True)
    sims.add_column("state")
    sims.add_column("SIMs", justify="right")
    for state, count in sorted(result.sim_states.items()):
        sims.add_row(state, f"{count:,}")
    yield sims

    sessions = Table(title=f"sessions: {stats.sessions:,} opened, {stats.interruptions:,} cut for mass traffic")
    sessions.add_column("closed by")
    sessions.add_column("sessions", justify="right")
    for cause, count in stats.closures.most_common():
        sessions.add_row(cause, f"{count:,}")
    for cause, count in stats.refusals.most_common():
        sessions.add_row(f"attach refused: {cause}", f"{count:,}")
    if stats.throttled_sessions:
        sessions.add_row("throttled by traffic control", f"{stats.throttled_sessions:,}")
    yield sessions

    charges = Table(
        title=f"charges by item ({result.scenario.tariff.currency}, before tax; tariff {result.scenario.tariff.label})"
    )
    charges.add_column("item")
    by_month = result.charges_by_item()
    months = sorted(by_month)
    for month in months:
        charges.add_column(format_month(month), justify="right")
    items = sorted({item for month in months for item in by_month[month]})
    for item in items:
        charges.add_row(item, *(format_money(Decimal(by_month[month].get(item, 0))) for month in months))
    totals = {document.month: sum(invoice.total for invoice in document.invoices) for document in result.documents}
    charges.add_section()
    charges.add_row("total with tax", *(format_money(Decimal(totals.get(month, 0))) for month in months))
    yield charges
