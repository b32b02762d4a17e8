"""The HTML dispute report (``mgwsim explain … --html FILE``): one self-contained page for a customer.

Per account and month: the invoice, every line with its rule, article, quantity, unit price,
amount, evidence (event ids with file:line) and note; then the fees *not* charged and why. Per
SIM: a timeline (inline SVG) of the month and the twelve before it — registration periods,
sessions and their close causes, daily traffic, PIN/PUK states, platform messages, the charges of
each month. SIMs are collapsed (``<details>``) and a filter box narrows them, so an account of
thousands of SIMs stays usable.

The page needs nothing from outside: CSS, SVG and a few lines of script are inline, and the page's
Content-Security-Policy forbids every request. Every value that comes from a log or a tariff is
escaped (:func:`html.escape`, quotes included) — ids, extra fields, file names — so markup in them
is shown as text, never run.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Final

from metering.events import Event
from metering.explain import evidence_text, unmatched_subject
from metering.invoice import Invoice, make_line
from metering.money import format_money
from metering.rating import Rating
from metering.rules import ARTICLES, Charge, NoCharge, Outcome
from metering.tariff import Tariff
from metering.timeutil import JST_OFFSET_US, US_PER_SECOND, format_instant, format_month, month_end, month_start

DAY_US: Final = 86_400 * US_PER_SECOND
_WIDTH: Final = 900
_ROW: Final = 14
_ROWS: Final = ("registered", "sessions", "traffic", "PIN/PUK", "messages", "charges")
_PIN_TYPES: Final = ("sim.pin_failed", "sim.locked", "sim.unlocked", "sim.dead")
_STYLE: Final = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.evidence { font-family: ui-monospace, monospace; font-size: 12px; }
.notcharged td { background: #f6f6f6; }
details.sim { border: 1px solid #ddd; margin: .3em 0; padding: .2em .6em; }
details.sim summary { cursor: pointer; font-family: ui-monospace, monospace; }
svg text { font: 10px system-ui, sans-serif; }
#filter { font-size: 1em; padding: .3em; width: 24em; }
.totals td { font-weight: 600; }
"""
_SCRIPT: Final = """
document.getElementById('filter').addEventListener('input', function (event) {
  var wanted = event.target.value.trim().toLowerCase();
  var shown = 0;
  document.querySelectorAll('details.sim').forEach(function (sim) {
    var match = !wanted || sim.dataset.sim.indexOf(wanted) !== -1;
    sim.hidden = !match;
    if (match) { shown += 1; }
  });
  document.getElementById('shown').textContent = String(shown);
});
"""


def _text(value: object) -> str:
    """A value as HTML text: escaped, quotes included (safe in an element and in an attribute)."""
    return escape(str(value), quote=True)


@dataclass
class SimHistory:
    """What one SIM's timeline shows, from its events (instants as epoch microseconds)."""

    iccid: str
    registrations: list[tuple[int, int | None, str]] = field(default_factory=list)
    sessions: list[tuple[int, str, str]] = field(default_factory=list)
    traffic: Counter[int] = field(default_factory=Counter)
    pin: list[tuple[int, str]] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)


def sim_histories(events: Iterable[Event]) -> dict[tuple[str, str], SimHistory]:
    """Per (account, ICCID): registration periods, sessions, daily traffic, PIN/PUK states, messages."""
    histories: dict[tuple[str, str], SimHistory] = {}
    for event in sorted(events, key=lambda event: event.ts):
        extra = json.loads(event.extra) if event.extra else {}
        sim = event.sim if event.sim is not None else extra.get("sim")  # diagnostic events carry it as a field
        if not isinstance(sim, str):
            continue
        history = histories.setdefault((event.account, sim), SimHistory(sim))
        if event.type == "sim.registered":
            history.registrations.append((event.ts, None, event.id))
        elif event.type == "sim.deleted" and history.registrations and history.registrations[-1][1] is None:
            start, _, first = history.registrations[-1]
            history.registrations[-1] = (start, event.ts, first)
        elif event.type == "sim.traffic":
            day = (event.ts + JST_OFFSET_US) // DAY_US
            history.traffic[day] += (event.up_bytes or 0) + (event.down_bytes or 0)
        elif event.type in ("session.created", "session.deleted"):
            cause = str(extra.get("cause", "")) if event.type == "session.deleted" else "created"
            history.sessions.append((event.ts, event.type, cause))
        elif event.type in _PIN_TYPES:
            history.pin.append((event.ts, event.type.removeprefix("sim.")))
        elif event.type == "mono.message":
            history.messages.append(event.ts)
    return histories


def _x(instant: int, start: int, end: int) -> float:
    return round(110 + (_WIDTH - 120) * (min(max(instant, start), end) - start) / (end - start), 1)


def timeline_svg(history: SimHistory, first_month: int, last_month: int, charges: Mapping[int, str]) -> str:
    """The SIM's timeline over the months ``first_month..last_month`` as inline SVG."""
    start, end = month_start(first_month), month_end(last_month)
    height = _ROW * (len(_ROWS) + 1) + 6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" role="img" '
        f'aria-label="timeline of {_text(history.iccid)}">'
    ]
    for row, name in enumerate(_ROWS):
        y = _ROW * (row + 1)
        parts.append(f'<text x="4" y="{y}">{name}</text>')
        parts.append(f'<line x1="110" y1="{y - 4}" x2="{_WIDTH - 10}" y2="{y - 4}" stroke="#eee"/>')
    for month in range(first_month, last_month + 2):
        x = _x(month_start(month), start, end)
        parts.append(f'<line x1="{x}" y1="2" x2="{x}" y2="{height - 12}" stroke="#ddd"/>')
        if month <= last_month:
            parts.append(f'<text x="{x + 2}" y="{height - 2}">{format_month(month)[2:]}</text>')
    for begun, ended, event_id in history.registrations:
        x1, x2 = _x(begun, start, end), _x(ended if ended is not None else end, start, end)
        title = f"registered {format_instant(begun)} ({event_id})" + (
            f" to {format_instant(ended)}" if ended is not None else ""
        )
        parts.append(
            f'<rect x="{x1}" y="{_ROW - 9}" width="{max(x2 - x1, 1)}" height="8" fill="#4a90d9">'
            f"<title>{_text(title)}</title></rect>"
        )
    for instant, kind, cause in history.sessions:
        x = _x(instant, start, end)
        colour = "#2a9d3a" if kind == "session.created" else "#c0392b"
        parts.append(
            f'<circle cx="{x}" cy="{_ROW * 2 - 4}" r="2.5" fill="{colour}">'
            f"<title>{_text(kind)} {_text(format_instant(instant))} {_text(cause)}</title></circle>"
        )
    if history.traffic:
        most = max(history.traffic.values()) or 1
        for day, volume in sorted(history.traffic.items()):
            instant = day * DAY_US - JST_OFFSET_US
            if not start <= instant < end:
                continue
            tall = max(1.0, round(9 * volume / most, 1))
            parts.append(
                f'<rect x="{_x(instant, start, end)}" y="{_ROW * 3 - 3 - tall}" width="2" height="{tall}" '
                f'fill="#8e44ad"><title>{_text(format_instant(instant)[:10])}: {volume:,} bytes</title></rect>'
            )
    for instant, state in history.pin:
        parts.append(
            f'<rect x="{_x(instant, start, end) - 2}" y="{_ROW * 4 - 8}" width="4" height="8" fill="#e67e22">'
            f"<title>{_text(state)} {_text(format_instant(instant))}</title></rect>"
        )
    for instant in history.messages:
        parts.append(
            f'<circle cx="{_x(instant, start, end)}" cy="{_ROW * 5 - 4}" r="2" fill="#16a085">'
            f"<title>platform message {_text(format_instant(instant))}</title></circle>"
        )
    for month, amount in sorted(charges.items()):
        x = _x(month_start(month), start, end)
        parts.append(f'<text x="{x + 2}" y="{_ROW * 6}" fill="#555">{_text(amount)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _evidence(ids: Sequence[str], events: Mapping[tuple[str, str], Event], account: str) -> str:
    return "<br>".join(_text(evidence_text(event_id, events, account)) for event_id in ids)


def _invoice_table(
    invoice: Invoice | None, outcomes: Sequence[Outcome], tariff: Tariff, events: Mapping[tuple[str, str], Event]
) -> str:
    account = invoice.account if invoice is not None else ""
    rows = [
        "<table><thead><tr><th>item</th><th>rule</th><th>article</th><th>subject</th><th>quantity</th>"
        "<th>unit price</th><th>amount</th><th>evidence</th><th>note</th></tr></thead><tbody>"
    ]
    for outcome in outcomes:
        if not isinstance(outcome, Charge):
            continue
        line = make_line(outcome, tariff)
        rows.append(
            f"<tr class='line'><td>{_text(line.item)}</td><td>{_text(line.rule)}</td>"
            f"<td>{_text(ARTICLES.get(line.rule, line.rule))}</td><td>{_text(line.subject)}</td>"
            f"<td class='num'>{_text(line.quantity)}</td><td class='num'>{_text(format_money(line.unit_price))}</td>"
            f"<td class='num'>{_text(format_money(line.amount))}</td>"
            f"<td class='evidence'>{_evidence(line.evidence, events, account)}</td><td>{_text(line.note)}</td></tr>"
        )
    if invoice is not None:
        for label, value in (("subtotal", invoice.subtotal), ("tax", invoice.tax), ("total", invoice.total)):
            rows.append(
                f"<tr class='totals'><td colspan='6'>{label}</td><td class='num'>{_text(format_money(value))}</td>"
                f"<td colspan='2'>{_text(invoice.currency)}</td></tr>"
            )
    rows.append("</tbody></table>")
    return "".join(rows)


def _not_charged(outcomes: Sequence[Outcome], events: Mapping[tuple[str, str], Event], account: str) -> str:
    rows = [
        "<table class='notcharged'><thead><tr><th>item</th><th>rule</th><th>article</th><th>subject</th>"
        "<th>why not</th><th>evidence</th></tr></thead><tbody>"
    ]
    count = 0
    for outcome in outcomes:
        if not isinstance(outcome, NoCharge):
            continue
        count += 1
        rows.append(
            f"<tr class='notcharged'><td>{_text(outcome.item)}</td><td>{_text(outcome.rule)}</td>"
            f"<td>{_text(ARTICLES.get(outcome.rule, outcome.rule))}</td><td>{_text(outcome.subject)}</td>"
            f"<td>{_text(outcome.reason)}</td>"
            f"<td class='evidence'>{_evidence(outcome.evidence, events, account)}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows) if count else "<p>Every fee with events was charged.</p>"


def dispute_page(
    rating: Rating,
    tariff: Tariff,
    events: Sequence[Event],
    months: Sequence[int],
    subject: str | None = None,
    sources: Sequence[str] = (),
) -> str:
    """The dispute report of ``months`` as one HTML page (``rating`` covers them and the twelve before)."""
    by_id: dict[tuple[str, str], Event] = {}
    for event in events:
        by_id.setdefault((event.account, event.id), event)
    histories = sim_histories(events)
    charges_by_sim: dict[tuple[str, str], dict[int, dict[str, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    for month, document in rating.documents.items():
        for invoice in document.invoices:
            for line in invoice.lines:
                per = charges_by_sim[(invoice.account, line.subject)][month]
                per[invoice.currency] = per.get(invoice.currency, Decimal(0)) + line.amount
    first, last = min(months) - 12, max(months)
    title = f"mgwsim dispute report: {format_month(min(months))}" + (
        f"..{format_month(max(months))}" if len(months) > 1 else ""
    )
    body = [
        f"<h1>{_text(title)}</h1>",
        f"<p>Tariff {_text(tariff.label)}{' (illustrative prices)' if tariff.illustrative else ''}; "
        f"from {_text(', '.join(sources) or 'the event store')}. Every charge below names its rule, the "
        "article of the terms and the events that decided it; fees not charged are listed with the reason.</p>",
    ]
    unmatched = None if subject is None else unmatched_subject(rating, months, subject)
    if unmatched is not None:
        body.append(f"<p class='unmatched'>{_text(unmatched)}</p>")
    accounts = sorted({account for month, account in rating.outcomes if month in months})
    sims_total = 0
    for account in accounts:
        body.append(f"<section class='account' data-account='{_text(account)}'><h2>Account {_text(account)}</h2>")
        for month in months:
            invoices = (
                {invoice.account: invoice for invoice in rating.documents[month].invoices}
                if month in rating.documents
                else {}
            )
            outcomes = [
                outcome
                for outcome in rating.outcomes.get((month, account), ())
                if subject is None or outcome.subject == subject
            ]
            body.append(f"<h3>Invoice {_text(format_month(month))}</h3>")
            body.append(_invoice_table(invoices.get(account), outcomes, tariff, by_id))
            body.append(f"<h4>Fees not charged, {_text(format_month(month))}</h4>")
            body.append(_not_charged(outcomes, by_id, account))
        sims = sorted(
            iccid for (owner, iccid) in histories if owner == account and (subject is None or iccid == subject)
        )
        sims_total += len(sims)
        body.append(f"<h3>SIMs ({len(sims):,}): {format_month(first)} to {format_month(last)}</h3>")
        for iccid in sims:
            amounts = {
                month: ", ".join(f"{format_money(amount)} {currency}" for currency, amount in sorted(per.items()))
                for month, per in charges_by_sim.get((account, iccid), {}).items()
                if first <= month <= last
            }
            body.append(
                f"<details class='sim' data-sim='{_text(iccid.lower())}'><summary>{_text(iccid)}</summary>"
                f"{timeline_svg(histories[(account, iccid)], first, last, amounts)}</details>"
            )
        body.append("</section>")
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>"
    )
    filter_box = (
        "<p><label>Filter SIMs by ICCID: <input id='filter' type='search' placeholder='e.g. 89813'></label> "
        f"<span id='shown'>{sims_total}</span> of {sims_total} SIMs shown (click a SIM for its timeline)</p>"
    )
    return head + body[0] + body[1] + filter_box + "".join(body[2:]) + f"<script>{_SCRIPT}</script></body></html>\n"
