"""Rich tables of invoices, for people (``mgwsim bill --format table``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rich.console import RenderableType
from rich.table import Table

from metering.invoice import InvoiceDocument
from metering.money import format_money
from metering.tariff import Tariff
from metering.timeutil import format_month


def invoice_tables(documents: Sequence[InvoiceDocument], tariff: Tariff) -> Iterator[RenderableType]:
    """One table per account and month, lines then totals and the points block."""
    for document in documents:
        if not document.invoices:
            yield f"{format_month(document.month)}: no invoices"
        for invoice in document.invoices:
            title = f"{invoice.account} — {format_month(document.month)} — tariff {document.tariff}"
            if tariff.illustrative:
                title += " (illustrative prices)"
            table = Table(title=title, show_footer=False)
            table.add_column("item", no_wrap=True)
            table.add_column("rule")
            table.add_column("subject", no_wrap=True)
            table.add_column("qty", justify="right")
            table.add_column("unit price", justify="right")
            table.add_column(f"amount ({invoice.currency})", justify="right")
            for line in invoice.lines:
                table.add_row(
                    line.item,
                    line.rule,
                    line.subject,
                    f"{line.quantity:,}",
                    format_money(line.unit_price),
                    format_money(line.amount),
                )
            table.add_section()
            table.add_row("subtotal", "", "", "", "", format_money(invoice.subtotal))
            table.add_row(
                f"tax {format_money((tariff.tax_rate * 100).normalize())}%",
                "",
                "",
                "",
                "",
                format_money(invoice.tax),
            )
            table.add_row("[bold]total[/bold]", "", "", "", "", f"[bold]{format_money(invoice.total)}[/bold]")
            yield table
            points = invoice.points
            if any(points.to_json().values()):
                yield (
                    f"  points: opening {points.opening:,} + granted {points.granted:,} + purchased "
                    f"{points.purchased:,} + shortfall {points.shortfall_purchased:,} - consumed "
                    f"{points.consumed:,} - expired {points.expired:,} = closing {points.closing:,}"
                )
