"""Explanations: every charge, and every fee not charged to a subject with events, in words.

The text is meant to be pasted by a support engineer into a reply to a customer: it names the
rule, the article of the terms, the reason and the evidence events (id, type, time).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from metering.events import Event
from metering.invoice import make_line
from metering.money import format_money
from metering.rating import Rating
from metering.rules import ARTICLES, Charge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_instant, format_month


def evidence_text(event_id: str, events: Mapping[tuple[str, str], Event], account: str) -> str:
    """One evidence event in words: its id, type, time and file:line (the id alone when it is not at hand)."""
    event = events.get((account, event_id))
    if event is None:
        return event_id
    return f"{event_id}: {event.type} at {format_instant(event.ts)} ({event.where})"


def _evidence(ids: tuple[str, ...], events: Mapping[tuple[str, str], Event], account: str) -> list[str]:
    return [f"      - {evidence_text(event_id, events, account)}" for event_id in ids]


def explain_outcome(outcome: Outcome, tariff: Tariff, events: Mapping[tuple[str, str], Event], account: str) -> str:
    """One charge or no-charge, explained in a few lines."""
    article = ARTICLES.get(outcome.rule, outcome.rule)
    if isinstance(outcome, Charge):
        line = make_line(outcome, tariff)
        head = (
            f"  CHARGED {outcome.item} for {outcome.subject}: {outcome.quantity} x "
            f"{format_money(outcome.unit_price)} = {format_money(line.amount)} {tariff.currency} "
            f"[{outcome.rule}, {article}]"
        )
        body = f"    {outcome.note}"
    else:
        head = f"  NOT CHARGED {outcome.item} for {outcome.subject} [{outcome.rule}, {article}]"
        body = f"    {outcome.reason}"
    parts = [head, body]
    if outcome.evidence:
        parts.append("    evidence:")
        parts.extend(_evidence(outcome.evidence, events, account))
    return "\n".join(parts)


def explain(rating: Rating, tariff: Tariff, events: Mapping[tuple[str, str], Event], subject: str | None = None) -> str:
    """Explain every invoice of a rating (optionally only one subject: ICCID, gateway, …)."""
    blocks: list[str] = []
    switches = tariff.interpretations
    blocks.append(
        f"Tariff {tariff.label}{' (illustrative prices)' if tariff.illustrative else ''}; interpretations: "
        f"I-1 usage_test={switches.usage_test}, I-2 exempt_first_and_last_month="
        f"{str(switches.exempt_first_and_last_month).lower()}, I-3 deleted_in_final_month="
        f"{switches.deleted_in_final_month}, I-4 consumption_order={switches.consumption_order}, "
        f"I-5 expiring_at_deduction={switches.expiring_at_deduction}, "
        f"I-6 shortfall_on_deleted_account={switches.shortfall_on_deleted_account}."
    )
    for month, document in sorted(rating.documents.items()):
        invoices = {invoice.account: invoice for invoice in document.invoices}
        for account in sorted(set(invoices) | {account for (at, account) in rating.outcomes if at == month}):
            outcomes = [
                outcome
                for outcome in rating.outcomes.get((month, account), ())
                if subject is None or outcome.subject == subject
            ]
            if subject is not None and not outcomes:
                continue
            invoice = invoices.get(account)
            header = f"{account} {format_month(month)}"
            if invoice is None:
                header += ": no invoice (nothing charged, no events in the month)"
            elif subject is None:
                header += (
                    f": subtotal {format_money(invoice.subtotal)}, tax {format_money(invoice.tax)}, "
                    f"total {format_money(invoice.total)} {invoice.currency}"
                )
            parts = [header]
            parts.extend(explain_outcome(outcome, tariff, events, account) for outcome in outcomes)
            points = invoice.points if invoice is not None else None
            if points is not None and subject in (None, "points") and any(points.to_json().values()):
                parts.append(
                    f"  POINTS {format_month(month)}: opening {points.opening}, granted {points.granted}, "
                    f"purchased {points.purchased}, consumed {points.consumed} (deducted on the 1st of the "
                    f"next month, PT-3), expired {points.expired} (PT-8, PT-12), shortfall purchase "
                    f"{points.shortfall_purchased} (PT-5), closing balance {points.closing}"
                )
            if len(parts) == 1:
                parts.append("  nothing charged")
            blocks.append("\n".join(parts))
    unmatched = None if subject is None else unmatched_subject(rating, rating.documents, subject)
    if unmatched is not None:
        blocks.append(unmatched)
    return "\n\n".join(blocks) + "\n"


def unmatched_subject(rating: Rating, months: Iterable[int], subject: str) -> str | None:
    """What to say when no decision of ``months`` concerns ``subject``, or ``None`` when one does.

    A mistyped subject (an ICCID with a digit wrong, ``MGW-1`` for ``mgw-1``) is the usual cause,
    so the sentence names the nearest subjects that do have a decision in those months.
    """
    asked = set(months)
    subjects = {
        outcome.subject for (month, _), outcomes in rating.outcomes.items() if month in asked for outcome in outcomes
    }
    if subject in subjects:
        return None
    sentence = f"No charge or decision concerns {subject!r} in the months asked for."
    by_folded: dict[str, list[str]] = {}
    for known in sorted(subjects):
        by_folded.setdefault(known.casefold(), []).append(known)
    nearest = sorted(
        known
        for folded in difflib.get_close_matches(subject.casefold(), by_folded, n=3, cutoff=0.6)
        for known in by_folded[folded]
    )[:3]
    if nearest:
        sentence += f" The nearest that {'has' if len(nearest) == 1 else 'have'} one: {', '.join(map(repr, nearest))}."
    return sentence


def explain_line(
    rating: Rating,
    tariff: Tariff,
    events: Mapping[tuple[str, str], Event],
    month: int,
    account: str,
    item: str,
    subject: str,
) -> str:
    """The explanation mgwsim gives of one invoice line (month, account, item, subject): charges, no-charges.

    What ``mgwsim diff --explain`` puts beside a line that differs: every decision of the rules
    for that item and subject in that month, with rule, article, reason and evidence — or, when
    there is none, that mgwsim charges nothing of that item to that subject and why it cannot say more.
    """
    outcomes = [
        outcome
        for outcome in rating.outcomes.get((month, account), ())
        if outcome.item == item and outcome.subject == subject
    ]
    if not outcomes:
        return (
            f"  mgwsim decides nothing on {item} for {subject} of {account} in {format_month(month)}: "
            "no rule saw an event of this subject for this item (check the subject's id and the month)"
        )
    return "\n".join(explain_outcome(outcome, tariff, events, account) for outcome in outcomes)
