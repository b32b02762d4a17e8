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

from devices.carrier import imsi_of, msisdn_of
from gateway.pcap import CaptureSession, Transfer
from gateway.pcap_reader import CaptureContents
from metering.events import ICCID_PATTERN, Event, encode_extra


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


def write_sim_map(events: Iterable[Event], path: Path) -> int:
    """Write the ``imsi,iccid`` map of the SIMs in a log (what ``meter-pcap --sims`` reads)."""
    from metering.atomic import AtomicWriter

    iccids = sorted({event.sim for event in events if event.sim is not None})
    with AtomicWriter(path) as temporary, temporary.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["imsi", "iccid"])
        for iccid in iccids:
            writer.writerow([imsi_of(iccid), iccid])
    return len(iccids)


def read_sim_map(path: Path) -> dict[str, str]:
    """IMSI → ICCID from a CSV with the columns ``imsi`` and ``iccid``.

    Raises:
        CaptureInputError: For a missing file or column, or a bad row (file and line named).
    """
    import re

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureInputError(f"{path}: cannot read the SIM map ({exc})") from None
    rows = csv.DictReader(text.splitlines())
    if rows.fieldnames is None or not {"imsi", "iccid"} <= set(rows.fieldnames):
        raise CaptureInputError(f"{path}:1: the SIM map needs the columns imsi and iccid")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        imsi, iccid = (row.get("imsi") or "").strip(), (row.get("iccid") or "").strip()
        if not re.fullmatch(r"[0-9]{6,15}", imsi):
            raise CaptureInputError(f"{path}:{line}: imsi {imsi!r} is not 6 to 15 digits")
        if not re.fullmatch(ICCID_PATTERN, iccid):
            raise CaptureInputError(f"{path}:{line}: iccid {iccid!r} is not an ICCID")
        if mapping.get(imsi, iccid) != iccid:
            raise CaptureInputError(f"{path}:{line}: imsi {imsi} is mapped twice")
        mapping[imsi] = iccid
    return mapping


@dataclass(frozen=True)
class MeteredCapture:
    """Events made from a capture, and what the capture held besides."""

    events: list[Event]
    sessions: int
    packets: int
    skipped: dict[str, int]


def _session_marker(what: str, instant_us: int, account: str, session: str, sim: str) -> Event:
    """The ``session.created`` or ``session.deleted`` diagnostic of a session seen in a capture."""
    return Event(
        ts=instant_us,
        type=f"session.{what}",
        account=account,
        id=f"{session}/{what}",
        extra=encode_extra({"session": session, "sim": sim}),
    )


def events_from_capture(contents: CaptureContents, account: str, sim_map: dict[str, str]) -> MeteredCapture:
    """``sim.traffic`` per session and JST day (stamped at its last G-PDU), and session diagnostics.

    Raises:
        CaptureInputError: If a session's IMSI is not in the SIM map.
    """
    events: list[Event] = []
    for session in contents.sessions:
        iccid = sim_map.get(session.imsi)
        if iccid is None:
            raise CaptureInputError(f"IMSI {session.imsi} of a session in the capture is not in the SIM map")
        name = f"pcap-{session.teids['pgw_c']:08x}-{session.start_us}"
        events.append(_session_marker("created", session.start_us, account, name, iccid))
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
    return MeteredCapture(events, len(contents.sessions), contents.packets, dict(contents.skipped))
