"""What every rater shares: deduplication, the rating result, and month ranges.

Events are identified by ``(account, id)``. Re-ingesting an event with a known id is a no-op;
the same id with different content is an error naming both places.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from metering.events import Event, EventError
from metering.invoice import InvoiceDocument
from metering.rules import Outcome


@dataclass(frozen=True, slots=True)
class Rating:
    """The result of rating: one invoice document per month, the outcomes behind them, errors.

    Attributes:
        documents: Month index → invoice document.
        outcomes: ``(month, account)`` → the charges and no-charges of the rules.
        errors: Consistency errors; when there are any, no invoice may be shown.
        event_months: The first and the last JST month of the events rated, or ``None`` when there
            were none (or the rating did not look).
    """

    documents: Mapping[int, InvoiceDocument]
    outcomes: Mapping[tuple[int, str], tuple[Outcome, ...]] = field(default_factory=dict)
    errors: tuple[EventError, ...] = ()
    event_months: tuple[int, int] | None = None


def deduplicate(events: Iterable[Event]) -> tuple[list[Event], list[EventError]]:
    """Drop repeated events (same account and id, same content); report conflicting ones.

    Returns:
        The unique events in their first-seen order, and the conflicts found.
    """
    seen: dict[tuple[str, str], Event] = {}
    unique: list[Event] = []
    errors: list[EventError] = []
    for event in events:
        key = (event.account, event.id)
        first = seen.get(key)
        if first is None:
            seen[key] = event
            unique.append(event)
        elif first != event:
            errors.append(
                EventError(
                    f"event id {event.id!r} of account {event.account!r} was already used by a different "
                    f"event at {first.where}",
                    event.source,
                    event.line,
                )
            )
    return unique, errors


def merge_ratings(ratings: Iterable[Rating]) -> Rating:
    """One rating of the ratings of disjoint sets of accounts (the shards of a run).

    Documents of the same month are joined, their invoices listed by account, as one rating
    of all the events would list them.
    """
    from metering.invoice import sort_invoices

    documents: dict[int, list[InvoiceDocument]] = {}
    outcomes: dict[tuple[int, str], tuple[Outcome, ...]] = {}
    errors: list[EventError] = []
    spans: list[tuple[int, int]] = []
    for rating in ratings:
        for month, document in rating.documents.items():
            documents.setdefault(month, []).append(document)
        outcomes.update(rating.outcomes)
        errors.extend(rating.errors)
        if rating.event_months is not None:
            spans.append(rating.event_months)
    joined = {
        month: InvoiceDocument(
            month, parts[0].tariff, sort_invoices([invoice for part in parts for invoice in part.invoices])
        )
        for month, parts in sorted(documents.items())
    }
    span = (min(first for first, _ in spans), max(last for _, last in spans)) if spans else None
    return Rating(joined, outcomes, tuple(errors), span)
