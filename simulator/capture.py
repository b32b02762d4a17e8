"""Between event logs and GTP captures: the sessions of a run as packets, and packets as events.

:func:`capture_sessions` picks the sessions of a run's log (``traffic_records = "session"``) for
``mgwsim run --pcap``; :func:`events_from_capture` turns what :func:`gateway.pcap_reader.read_capture`
found into ``sim.traffic`` events (one per session and JST day), ``session.created`` and
``session.deleted`` diagnostics, for ``mgwsim meter-pcap``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from devices.carrier import imsi_of, msisdn_of
from gateway.pcap import CaptureSession, Transfer
from gateway.pcap_reader import CaptureContents
from metering.events import ICCID_PATTERN, Event, encode_extra
from metering.textfile import header_names, read_text
from metering.timeutil import format_instant


class CaptureInputError(Exception):
    """A SIM map or a capture that cannot be turned into events (one-line message)."""


def capture_sessions(events: Iterable[Event], sims: int | None = None) -> list[CaptureSession]:
    """The sessions of the first ``sims`` SIMs (by ICCID; ``None``: all) of a session-level log.

    Raises:
        CaptureInputError: If the log has no session events (daily traffic records).
    """
    created: dict[str, tuple[int, dict[str, str]]] = {}
    ended: dict[str, int] = {}
    transfers: dict[str, list[Transfer]] = {}
    for event in events:
        if event.type == "session.created":
            fields = json.loads(event.extra)
            created[fields["session"]] = (event.ts, fields)
        elif event.type == "session.deleted":
            fields = json.loads(event.extra)
            if "session" in fields:  # a refused attach is a session.deleted without a session
                ended[fields["session"]] = event.ts
        elif event.type == "sim.traffic" and event.session is not None:
            transfers.setdefault(event.session, []).append(
                Transfer(event.ts, event.up_bytes or 0, event.down_bytes or 0)
            )
    if not created:
        raise CaptureInputError(
            'the run wrote no sessions: a capture needs traffic_records = "session" in the scenario'
        )
    chosen = sorted({fields["sim"] for _, fields in created.values()})
    if sims is not None:
        chosen = chosen[:sims]
    wanted = set(chosen)
    ordered = sorted((start, session_id) for session_id, (start, fields) in created.items() if fields["sim"] in wanted)
    sessions = []
    for number, (start, session_id) in enumerate(ordered):
        fields = created[session_id][1]
        moved = sorted(transfers.get(session_id, []), key=lambda transfer: transfer.ts_us)
        end = ended.get(session_id, max([start, *(transfer.ts_us for transfer in moved)]) + 1_000_000)
        sessions.append(
            CaptureSession(
                number=number,
                imsi=imsi_of(fields["sim"]),
                msisdn=msisdn_of(fields["sim"]),
                mei=fields.get("imei", "000000000000000"),
                address=fields["address"],
                route=fields.get("route", "closed"),
                start_us=start,
                end_us=end,
                transfers=tuple(moved),
            )
        )
    return sessions


SIM_MAP_COLUMNS: Final = (
    "imsi: the subscriber (6-15 digits); iccid: the SIM (18-20 digits); registered_at (optional): "
    "when the SIM was registered, RFC 3339 with offset - with it, meter-pcap writes sim.registered "
    "events and its output bills as it is"
)
"""The SIM map's columns, in words (``meter-pcap --help``)."""


@dataclass(frozen=True)
class SimMap:
    """IMSI → ICCID, and when each SIM was registered (when the map says).

    Attributes:
        iccids: ICCID by IMSI.
        registered: Registration instant (epoch µs) by ICCID, for the rows that have one.
        has_registrations: Whether the map has the ``registered_at`` column.
    """

    iccids: dict[str, str]
    registered: dict[str, int]
    has_registrations: bool

    def get(self, imsi: str) -> str | None:
        """The ICCID of ``imsi``."""
        return self.iccids.get(imsi)


def write_sim_map(events: Iterable[Event], path: Path) -> int:
    """Write the ``imsi,iccid,registered_at`` map of the SIMs in a log (what ``meter-pcap --sims`` reads)."""
    from metering.atomic import AtomicWriter

    with AtomicWriter(path) as temporary, temporary.open("w", encoding="utf-8", newline="") as stream:
        return write_sim_map_to(events, stream)


def write_sim_map_to(events: Iterable[Event], stream: TextIO) -> int:
    """Write the SIM map of :func:`write_sim_map` to an open text stream (``newline=""``); return its SIMs."""
    registered: dict[str, int] = {}
    seen: set[str] = set()
    for event in events:
        if event.sim is not None:
            seen.add(event.sim)
            if event.type == "sim.registered":
                registered.setdefault(event.sim, event.ts)
    writer = csv.writer(stream)
    writer.writerow(["imsi", "iccid", "registered_at"])
    for iccid in sorted(seen):
        at = registered.get(iccid)
        writer.writerow([imsi_of(iccid), iccid, format_instant(at) if at is not None else ""])
    return len(seen)


def read_sim_map(path: Path) -> SimMap:
    """The SIM map: a CSV with the columns ``imsi`` and ``iccid``, and optionally ``registered_at``.

    Raises:
        CaptureInputError: For a missing file or column, or a bad row (file and line named).
        OSError: When the file exists but cannot be read (permissions, an I/O error).
    """
    import re

    from metering.timeutil import TimeFormatError, parse_instant

    try:
        text = read_text(path)
    except ValueError as exc:
        raise CaptureInputError(f"{exc} (the SIM map)") from None
    rows = csv.DictReader(text.splitlines())
    if rows.fieldnames is not None:
        try:
            rows.fieldnames = header_names(rows.fieldnames, ("imsi", "iccid", "registered_at"))
        except ValueError as exc:
            raise CaptureInputError(f"{path}:1: {exc} (the SIM map)") from None
    if rows.fieldnames is None or not {"imsi", "iccid"} <= set(rows.fieldnames):
        raise CaptureInputError(f"{path}:1: the SIM map needs the columns imsi and iccid")
    mapping: dict[str, str] = {}
    registered: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        imsi, iccid = (row.get("imsi") or "").strip(), (row.get("iccid") or "").strip()
        at = (row.get("registered_at") or "").strip()
        if at:
            try:
                registered[iccid] = parse_instant(at)
            except TimeFormatError as exc:
                raise CaptureInputError(f"{path}:{line}: registered_at: {exc}") from None
        if not re.fullmatch(r"[0-9]{6,15}", imsi):
            raise CaptureInputError(f"{path}:{line}: imsi {imsi!r} is not 6 to 15 digits")
        if not re.fullmatch(ICCID_PATTERN, iccid):
            raise CaptureInputError(f"{path}:{line}: iccid {iccid!r} is not an ICCID")
        if mapping.get(imsi, iccid) != iccid:
            raise CaptureInputError(f"{path}:{line}: imsi {imsi} is mapped twice")
        mapping[imsi] = iccid
    return SimMap(mapping, registered, "registered_at" in rows.fieldnames)


@dataclass(frozen=True)
class MeteredCapture:
    """Events made from a capture, and what the capture held besides."""

    events: list[Event]
    sessions: int
    packets: int
    skipped: dict[str, int]
    unattributed_bytes: int = 0
    unattributed_packets: int = 0
    unattributed_tunnels: int = 0
    registrations: int = 0


def _session_marker(
    what: str, instant_us: int, account: str, session: str, sim: str, legs: list[str] | None = None
) -> Event:
    """The ``session.created`` or ``session.deleted`` diagnostic of a session seen in a capture.

    ``legs``: where its bearers were metered (S5/S8, Gn, S1-U), said on ``session.created``.
    """
    fields: dict[str, str] = {"session": session, "sim": sim}
    if legs:
        fields["metered_on"] = ",".join(legs)
    return Event(
        ts=instant_us,
        type=f"session.{what}",
        account=account,
        id=f"{session}/{what}",
        extra=encode_extra(fields),
    )


def events_from_capture(contents: CaptureContents, account: str, sim_map: SimMap) -> MeteredCapture:
    """``sim.traffic`` per session and JST day (stamped at its last G-PDU), and session diagnostics.

    With registration times in the SIM map, each SIM seen gets its ``sim.registered`` event
    (before its first session), so the output bills as it is.

    Raises:
        CaptureInputError: If a session's IMSI is not in the SIM map, or its registration is after its traffic.
    """
    events: list[Event] = []
    registered: set[str] = set()
    for session in contents.sessions:
        iccid = sim_map.get(session.imsi)
        if iccid is None:
            raise CaptureInputError(
                f"the session of IMSI {session.imsi} created {format_instant(session.start_us)} "
                "has no row in the SIM map"
            )
        at = sim_map.registered.get(iccid)
        if at is not None and iccid not in registered:
            if at > session.start_us:
                raise CaptureInputError(
                    f"SIM {iccid}: its first session, created {format_instant(session.start_us)}, is before its "
                    f"registered_at {format_instant(at)} in the SIM map"
                )
            registered.add(iccid)
            events.append(
                Event(ts=at, type="sim.registered", account=account, id=f"pcap-registered/{iccid}", sim=iccid)
            )
        name = f"pcap-{session.key}-{session.start_us}"
        events.append(_session_marker("created", session.start_us, account, name, iccid, session.legs))
        for day in sorted(set(session.up) | set(session.down)):
            events.append(
                Event(
                    ts=session.last_us[day],
                    type="sim.traffic",
                    account=account,
                    id=f"{name}/{day}",
                    sim=iccid,
                    up_bytes=session.up[day],
                    down_bytes=session.down[day],
                    route=session.route or "closed",
                    session=name,
                )
            )
        if session.end_us is not None:
            events.append(_session_marker("deleted", session.end_us, account, name, iccid))
    events.sort(key=lambda event: event.ts)
    return MeteredCapture(
        events,
        len(contents.sessions),
        contents.packets,
        dict(contents.skipped),
        sum(contents.unattributed.values()),
        contents.unattributed_packets,
        len(contents.unattributed),
        len(registered),
    )
