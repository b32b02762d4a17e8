"""The summary tables ``mgwsim run`` prints (rich)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from rich.table import Table

from metering.money import format_money
from metering.rules import ITEMS
from metering.timeutil import format_month

if TYPE_CHECKING:
    from simulator.results import RunResult


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

    by_month = result.charges_by_item()
    months = sorted(by_month)
    items = [item for item in ITEMS if any(item in by_month[month] for month in months)]
    charges = Table(title=f"charges by item ({result.scenario.tariff.currency}; tariff {result.scenario.tariff.label})")
    charges.add_column("month")
    for item in items:
        charges.add_column(item.replace("_fee", "").replace("_", " "), justify="right")
    charges.add_column("total with tax", justify="right")
    totals = {document.month: sum(invoice.total for invoice in document.invoices) for document in result.documents}
    for month in months:
        amounts = (format_money(Decimal(by_month[month].get(item, 0))) for item in items)
        charges.add_row(format_month(month), *amounts, format_money(Decimal(totals.get(month, 0))))
    yield charges
