"""The one place where the simulator builds events of the ``mgwsim.events/1`` log.

Both engines write through an :class:`EventWriter`: the reference engine as its devices step,
the fast engine as it derives sessions in bulk. The events whose bytes must be the same whichever
engine wrote them — a day's traffic, an hour's platform messages, a session's start and end —
each have one builder here, so their ids and fields cannot drift apart between engines.
(Daily traffic the fast engine keeps as columns becomes events in
:mod:`metering.compact`, with the same ids and fields.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from metering.events import BILLED_TYPES, Event, encode_extra

if TYPE_CHECKING:
    from gateway.mobile_gateway import MobileGateway
    from simulator.world import Device

US: Final = 1_000_000


class EventWriter:
    """Collects a run's events; scenario seconds become epoch microseconds here."""

    def __init__(self, start_us: int) -> None:
        """A writer for a run that starts at epoch microseconds ``start_us``."""
        self.start_us = start_us
        self.events: list[Event] = []

    def instant(self, at: float) -> int:
        """Epoch microseconds of scenario second ``at``."""
        return self.start_us + int(at) * US

    def emit(self, at: float, event_type: str, account: str, event_id: str, **values: Any) -> None:
        """Record one event at scenario second ``at``.

        Billed types carry their values as event fields; diagnostic types carry them as the
        event's extra fields (as the log reader would read them back).
        """
        if event_type in BILLED_TYPES:
            event = Event(ts=self.instant(at), type=event_type, account=account, id=event_id, **values)
        else:
            extra = encode_extra(values)
            event = Event(ts=self.instant(at), type=event_type, account=account, id=event_id, extra=extra)
        self.events.append(event)

    def traffic(
        self,
        at: int,
        device: Device,
        event_id: str,
        up: int,
        down: int,
        route: str,
        gateway: str,
        session: str | None = None,
    ) -> None:
        """``sim.traffic``: a session's (or, without ``session``, a SIM's) bytes of one JST day."""
        values: dict[str, Any] = {"sim": device.iccid, "up_bytes": up, "down_bytes": down, "route": route}
        if session is not None:
            values["session"] = session
        self.emit(at, "sim.traffic", device.fleet.account, event_id, **values, gateway=gateway)

    def session_traffic(
        self, at: int, device: Device, session_id: str, day: int, up: int, down: int, route: str, gateway: str
    ) -> None:
        """``sim.traffic`` of one session's part of JST day ``day`` (id ``SESSION/DAY``)."""
        self.traffic(at, device, f"{session_id}/{day}", up, down, route, gateway, session_id)

    def messages(self, at: int, device: Device, event_id: str, count: int, size: int) -> None:
        """``mono.message``: ``count`` platform messages of ``size`` bytes in all, in one JST hour."""
        self.emit(at, "mono.message", device.fleet.account, event_id, sim=device.iccid, count=count, bytes=size)

    def session_created(self, start: int, device: Device, session_id: str, route: str, gateway: MobileGateway) -> None:
        """``session.created`` for a session that opened on ``gateway`` as it was at ``start``.

        Besides the address and DNS the gateway gave, it names the IMEI of the device the SIM was
        in and, under terminal lock, the IMEI the gateway locked the SIM to (for disputes).
        """
        locked = gateway.locked_imei(device.iccid)
        self.emit(
            start,
            "session.created",
            device.fleet.account,
            f"{session_id}/created",
            sim=device.iccid,
            gateway=gateway.id,
            session=session_id,
            route=route,
            address=gateway.address_of(device.iccid),
            dns=gateway.dns,
            imei=device.imei_at(start),
            **({} if locked is None else {"locked_imei": locked}),
        )

    def session_deleted(self, device: Device, session_id: str, start: int, end: int, cause: str) -> None:
        """``session.deleted`` with its cause and the IMEI of the device in its last second."""
        self.emit(
            end,
            "session.deleted",
            device.fleet.account,
            f"{session_id}/deleted",
            sim=device.iccid,
            gateway=device.fleet.gateway,
            session=session_id,
            cause=cause,
            imei=device.imei_at(max(start, end - 1)),
        )

    def refusal(self, at: int, device: Device, cause: str) -> None:
        """A refused attach, as a ``session.deleted`` diagnostic without a session."""
        self.emit(
            at, "session.deleted", device.fleet.account, f"{device.iccid}/refused/{at}", sim=device.iccid, cause=cause
        )
