"""Replay of one account's events into its history: who was registered when, and what was used.

:func:`replay` walks the events of one account in processing order (``ts``, ties by file order)
and builds an :class:`AccountHistory`: registration periods of SIMs, gateways, sub-options and
Mono device IDs, the traffic and messages with the period they fall in, and the point grants.
Inconsistent histories (a deletion of something not registered, traffic of a SIM that is not
registered) are returned as :class:`~metering.events.EventError` values naming the event.

The history is the input of the reference rules in :mod:`metering.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from metering.events import Event, EventError
from metering.tariff import Tariff
from metering.timeutil import format_instant, month_of_instant, month_start


@dataclass(slots=True)
class Period:
    """A registration period ``[start, end)`` of a SIM, gateway, sub-option or device ID.

    Attributes:
        start: Instant of the registration (creation, enablement, issue).
        start_id: Id of the event that started it.
        end: Instant of the deletion request, or ``None`` while still registered.
        end_id: Id of the event that ended it.
    """

    start: int
    start_id: str
    end: int | None = None
    end_id: str | None = None

    @property
    def start_month(self) -> int:
        """JST month of the registration."""
        return month_of_instant(self.start)

    @property
    def end_month(self) -> int | None:
        """JST month of the deletion, if deleted."""
        return None if self.end is None else month_of_instant(self.end)

    def covers_month(self, month: int) -> bool:
        """Whether the period touches ``month`` (registration and deletion months included)."""
        end_month = self.end_month
        return self.start_month <= month and (end_month is None or end_month >= month)

    def contains(self, instant: int) -> bool:
        """Whether ``instant`` lies in ``[start, end)``."""
        return self.start <= instant and (self.end is None or instant < self.end)


@dataclass(frozen=True, slots=True)
class Usage:
    """One usage record: traffic bytes or a message count, in a registration period.

    Attributes:
        ts: Instant.
        amount: Bytes (traffic) or count (messages, SMS).
        event_id: The event's id (evidence).
        period: Index of the registration period it falls in.
    """

    ts: int
    amount: int
    event_id: str
    period: int

    @property
    def month(self) -> int:
        """JST month of the usage."""
        return month_of_instant(self.ts)


@dataclass(frozen=True, slots=True)
class PointGrant:
    """Points granted to the account: a voluntary purchase (paid) or a free grant.

    Attributes:
        ts: Grant instant.
        points: Points granted.
        expires: Instant at which the points lapse.
        paid: True for purchased points.
        event_id: Evidence.
    """

    ts: int
    points: int
    expires: int
    paid: bool
    event_id: str


@dataclass(slots=True)
class AccountHistory:
    """Everything the rules need to know about one account, derived from its events."""

    account: str
    sims: dict[str, list[Period]] = field(default_factory=dict)
    traffic: dict[str, list[Usage]] = field(default_factory=dict)
    communication: dict[str, list[Usage]] = field(default_factory=dict)
    """Per SIM, in processing order: its traffic and its platform messages while it is registered
    (Art. 57(2): communication through the platform is the SIM's communication), each with the SIM
    registration period it falls in. SMC-38 and SMC-39 judge "communication" by it."""
    gateways: dict[str, list[Period]] = field(default_factory=dict)
    options: dict[str, list[Period]] = field(default_factory=dict)
    devices: dict[str, list[Period]] = field(default_factory=dict)
    messages: dict[str, list[Usage]] = field(default_factory=dict)
    """Per SIM, the platform messages sent while it had a device ID, with the device-ID period (MONO-57)."""
    deviceless: dict[str, list[Usage]] = field(default_factory=dict)
    """Per SIM, the platform messages sent while it had no device ID: points, but no MONO-57 fee."""
    sms: dict[str, list[Usage]] = field(default_factory=dict)
    grants: list[PointGrant] = field(default_factory=list)
    consumption: list[Usage] = field(default_factory=list)
    deletions: list[tuple[int, str]] = field(default_factory=list)
    event_months: set[int] = field(default_factory=set)


def processing_order(events: Iterable[Event]) -> list[Event]:
    """Events in processing order: by ``ts``, ties by the order given (file order)."""
    return sorted(events, key=lambda event: event.ts)


def _open(periods: dict[str, list[Period]], key: str, event: Event, what: str) -> EventError | None:
    history = periods.setdefault(key, [])
    if history and history[-1].end is None:
        return EventError(
            f"{event.type}: {what} is already registered since {format_instant(history[-1].start)}",
            event.source,
            event.line,
        )
    history.append(Period(event.ts, event.id))
    return None


def _close(periods: dict[str, list[Period]], key: str, event: Event, what: str) -> EventError | None:
    history = periods.get(key)
    if not history or history[-1].end is not None:
        return EventError(f"{event.type}: {what} is not registered", event.source, event.line)
    history[-1].end = event.ts
    history[-1].end_id = event.id
    return None


def _period_at(periods: Sequence[Period] | None, instant: int) -> int | None:
    if periods:
        for index in range(len(periods) - 1, -1, -1):
            if periods[index].contains(instant):
                return index
    return None


ReplayStep = Callable[[AccountHistory, Event, Tariff], "str | EventError | None"]
"""Adds one event to a history. Returns ``None``; an :class:`EventError` (an inconsistency, kept
with the event counted); or a reason (the event is refused: not counted, and it consumes no points)."""


def _sim_registered(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _open(history.sims, event.sim or "", event, f"SIM {event.sim}")


def _sim_deleted(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _close(history.sims, event.sim or "", event, f"SIM {event.sim}")


def _sim_traffic(history: AccountHistory, event: Event, _tariff: Tariff) -> str | None:
    sim = event.sim or ""
    period = _period_at(history.sims.get(sim), event.ts)
    if period is None:
        return f"SIM {sim} is not registered at {format_instant(event.ts)}"
    usage = Usage(event.ts, (event.up_bytes or 0) + (event.down_bytes or 0), event.id, period)
    history.traffic.setdefault(sim, []).append(usage)
    history.communication.setdefault(sim, []).append(usage)
    return None


def _gateway_created(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _open(history.gateways, event.gateway or "", event, f"gateway {event.gateway}")


def _gateway_deleted(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _close(history.gateways, event.gateway or "", event, f"gateway {event.gateway}")


def _option(history: AccountHistory, event: Event, tariff: Tariff) -> str | EventError | None:
    option = event.option or ""
    if option not in tariff.suboptions:
        return f"sub-option {option!r} has no entry in the tariff's [suboptions]"
    key = f"{option}:{event.target}"
    change = _open if event.type == "option.enabled" else _close
    return change(history.options, key, event, f"sub-option {key}")


def _device_registered(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _open(history.devices, event.sim or "", event, f"device ID of SIM {event.sim}")


def _device_deleted(history: AccountHistory, event: Event, _tariff: Tariff) -> EventError | None:
    return _close(history.devices, event.sim or "", event, f"device ID of SIM {event.sim}")


def _message(history: AccountHistory, event: Event, _tariff: Tariff) -> None:
    """Never refused: points are consumed whatever the SIM's state (PT-3)."""
    sim, count = event.sim or "", event.count or 1
    registration = _period_at(history.sims.get(sim), event.ts)
    if registration is not None:
        history.communication.setdefault(sim, []).append(Usage(event.ts, count, event.id, registration))
    device = _period_at(history.devices.get(sim), event.ts)
    if device is None:
        history.deviceless.setdefault(sim, []).append(Usage(event.ts, count, event.id, 0))
    else:
        history.messages.setdefault(sim, []).append(Usage(event.ts, count, event.id, device))


def _sms(history: AccountHistory, event: Event, _tariff: Tariff) -> None:
    history.sms.setdefault(event.kind or "", []).append(Usage(event.ts, event.count or 1, event.id, 0))


def _points_purchased(history: AccountHistory, event: Event, tariff: Tariff) -> str | None:
    points = event.points or 0
    if points < tariff.points_block or points % tariff.points_block or points > tariff.points_purchase_max:
        return (
            f"a purchase must be a multiple of {tariff.points_block} points between "
            f"{tariff.points_block} and {tariff.points_purchase_max} (PT-4), got {points}"
        )
    expires = month_start(month_of_instant(event.ts) + tariff.points_paid_validity_months + 1)
    history.grants.append(PointGrant(event.ts, points, expires, True, event.id))
    return None


def _points_granted(history: AccountHistory, event: Event, _tariff: Tariff) -> str | None:
    expires = event.expires or 0
    if expires <= event.ts:
        return "free points expire before they are granted"
    history.grants.append(PointGrant(event.ts, event.points or 0, expires, False, event.id))
    return None


def _account_deleted(history: AccountHistory, event: Event, _tariff: Tariff) -> None:
    history.deletions.append((event.ts, event.id))


REPLAY_STEPS: Final[dict[str, ReplayStep]] = {
    "sim.registered": _sim_registered,
    "sim.deleted": _sim_deleted,
    "sim.traffic": _sim_traffic,
    "gateway.created": _gateway_created,
    "gateway.deleted": _gateway_deleted,
    "option.enabled": _option,
    "option.disabled": _option,
    "mono.device.registered": _device_registered,
    "mono.device.deleted": _device_deleted,
    "mono.message": _message,
    "sms.sent": _sms,
    "points.purchased": _points_purchased,
    "points.granted": _points_granted,
    "account.deleted": _account_deleted,
}
"""How each billed event type enters a history (other types are diagnostics: only their month counts)."""


def replay(account: str, events: Sequence[Event], tariff: Tariff) -> tuple[AccountHistory, list[EventError]]:
    """Build the history of one account from its events (already in processing order).

    Each event goes through its step in :data:`REPLAY_STEPS`, then consumes points if the tariff
    says it does (PT-3).

    Args:
        account: The account.
        events: The account's events, deduplicated, in processing order.
        tariff: The tariff (for point rules and known sub-options).

    Returns:
        The history and the consistency errors found (empty when the history is consistent).
    """
    history = AccountHistory(account)
    errors: list[EventError] = []
    for event in events:
        history.event_months.add(month_of_instant(event.ts))
        step = REPLAY_STEPS.get(event.type)
        outcome = step(history, event, tariff) if step is not None else None
        if isinstance(outcome, str):
            errors.append(EventError(f"{event.type}: {outcome}", event.source, event.line))
            continue
        per = tariff.points_consumption.get(event.type)
        if per:
            history.consumption.append(Usage(event.ts, (event.count or 1) * per, event.id, 0))
        if outcome is not None:
            errors.append(outcome)
    return history, errors
