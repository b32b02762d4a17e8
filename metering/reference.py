"""The reference rater: per account, per event, per month, written to be obviously right.

It replays each account's events into an :class:`~metering.history.AccountHistory` and applies
each rule unit of :mod:`metering.rules` month by month. It is the oracle that the fast columnar
rater (:mod:`metering.fast`) must agree with, and the source of explanations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from metering.events import Event, EventError
from metering.history import AccountHistory, processing_order, replay
from metering.invoice import InvoiceDocument, build_invoice, make_line, points_block, sort_invoices
from metering.rating import Rating, deduplicate
from metering.rules import Charge, Outcome
from metering.rules.monthly import MONTHLY_RULES
from metering.rules.points import points_charges, points_ledger
from metering.tariff import Tariff


def histories(events: Iterable[Event], tariff: Tariff) -> tuple[dict[str, AccountHistory], list[EventError]]:
    """Deduplicate the events and replay every account; return histories and all errors."""
    unique, errors = deduplicate(events)
    by_account: dict[str, list[Event]] = {}
    for event in processing_order(unique):
        by_account.setdefault(event.account, []).append(event)
    result: dict[str, AccountHistory] = {}
    for account in sorted(by_account):
        history, account_errors = replay(account, by_account[account], tariff)
        result[account] = history
        errors.extend(account_errors)
    return result, errors


def rate_reference(events: Iterable[Event], tariff: Tariff, months: Sequence[int]) -> Rating:
    """Rate ``months`` of an event log with the reference rules.

    Args:
        events: The events, in file order (duplicates allowed).
        tariff: The tariff.
        months: JST month indexes to bill.

    Returns:
        The :class:`Rating`; when it has errors its documents are empty.
    """
    account_histories, errors = histories(events, tariff)
    if errors:
        return Rating({}, {}, tuple(sorted(errors, key=lambda error: (error.source, error.line))))
    documents: dict[int, InvoiceDocument] = {}
    outcomes: dict[tuple[int, str], tuple[Outcome, ...]] = {}
    last = max(months, default=0)
    ledgers = {account: points_ledger(history, last, tariff) for account, history in account_histories.items()}
    for month in months:
        invoices = []
        for account, history in account_histories.items():
            close = ledgers[account].get(month)
            found: list[Outcome] = [outcome for rule in MONTHLY_RULES for outcome in rule(history, month, tariff)]
            if close is not None:
                found.extend(points_charges(close, month, tariff))
            lines = [make_line(outcome, tariff) for outcome in found if isinstance(outcome, Charge)]
            points = points_block(close)
            if lines or (close is not None and close.block.active) or month in history.event_months:
                invoices.append(build_invoice(account, lines, points, tariff))
            if found:  # kept even without an invoice: explain says why nothing was charged
                outcomes[(month, account)] = tuple(found)
        documents[month] = InvoiceDocument(month, tariff.label, sort_invoices(invoices))
    months_seen: set[int] = set()
    for history in account_histories.values():
        months_seen |= history.event_months
    span = (min(months_seen), max(months_seen)) if months_seen else None
    return Rating(documents, outcomes, (), span)
