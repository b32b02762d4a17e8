"""Reading GTP captures back: sessions, their subscribers and the bytes they carried.

The counterpart of :mod:`gateway.pcap`, for our captures and for real ones: classic pcap files
(microsecond or nanosecond timestamps, either byte order) with raw IPv4 (link types 101 and 228)
or Ethernet (link type 1, with 802.1Q tags). GTPv2-C (TS 29.274) on UDP port 2123 gives the
sessions: a Create Session Request names the IMSI and the SGW's control and user TEIDs, its
Response (addressed to the SGW's control TEID) the PGW's; a Delete Session Request (addressed to
the PGW's control TEID) ends it. GTP-U G-PDUs (TS 29.281, UDP 2152, message type 255) are counted
against the session whose user TEID they carry: uplink to the PGW's, downlink to the SGW's.

The volume of a G-PDU is the payload of its T-PDU's transport: UDP payload, TCP segment data,
or the IP payload of other protocols. Packets that are truncated or malformed, G-PDUs for an
unknown TEID and GTP messages this reader does not use are counted by reason; nothing raises.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import stat
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

GTPC_PORT: Final = 2123
GTPU_PORT: Final = 2152
IE_IMSI: Final = 1
IE_FTEID: Final = 87
IE_BEARER_CONTEXT: Final = 93
CLOSED_NETWORKS: Final = tuple(
    ipaddress.IPv4Network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
"""RFC 1918 space: traffic to it stays in the closed network; anything else went to the internet."""


class CaptureReadError(Exception):
    """The file is not a readable pcap capture at all (one-line message)."""


@dataclass
class CapturedSession:
    """One session found in a capture.

    Attributes:
        imsi: The subscriber.
        start_us: When the Create Session Request was seen (epoch microseconds).
        end_us: When the Delete Session Request was seen (``None``: still open at the end).
        teids: The session's TEIDs by role (``sgw_c``, ``sgw_u``, ``pgw_c``, ``pgw_u``).
        up: Uplink bytes per JST day number.
        down: Downlink bytes per JST day number.
        last_us: Per JST day, the time of the last G-PDU of that day.
        packets: G-PDUs counted.
        route: ``closed`` or ``internet``: where its first uplink T-PDU went (RFC 1918 space or
            not); ``closed`` when it sent nothing.
    """

    imsi: str
    start_us: int
    end_us: int | None = None
    teids: dict[str, int] = field(default_factory=dict)
    up: Counter[int] = field(default_factory=Counter)
    down: Counter[int] = field(default_factory=Counter)
    last_us: dict[int, int] = field(default_factory=dict)
    packets: int = 0
    route: str | None = None


@dataclass
class CaptureContents:
    """What a capture held: its sessions, in the order they were created, and what was skipped."""

    sessions: list[CapturedSession] = field(default_factory=list)
    packets: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def packets(path: Path) -> Iterator[tuple[int, bytes | None, str]]:
    """``(epoch µs, IPv4 packet or None, reason)`` per record of a classic pcap file.

    A regular file is mapped rather than read, so a capture of gigabytes is not held in memory.

    Raises:
        CaptureReadError: If the file cannot be read or is not a classic pcap file.
    """
    try:
        with path.open("rb") as stream:
            status = os.fstat(stream.fileno())
            if stat.S_ISREG(status.st_mode) and status.st_size:
                data: bytes | mmap.mmap = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            else:  # a pipe, or empty: read as it comes
                data = stream.read()
    except OSError as exc:
        raise CaptureReadError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        yield from _records(path, data)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _records(path: Path, data: bytes | mmap.mmap) -> Iterator[tuple[int, bytes | None, str]]:
    """The records of the capture's bytes (see :func:`packets`)."""
    if len(data) < 24:
        raise CaptureReadError(f"{path}: not a pcap file (shorter than its 24-byte header)")
    magic = data[:4]
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", 1), b"\xa1\xb2\xc3\xd4": (">", 1),
        b"\x4d\x3c\xb2\xa1": ("<", 1000), b"\xa1\xb2\x3c\x4d": (">", 1000),
    }  # fmt: skip
    if magic not in formats:
        raise CaptureReadError(f"{path}: not a classic pcap file (magic {magic.hex()}; pcapng is not read)")
    order, divisor = formats[magic]
    link = struct.unpack(f"{order}I", data[20:24])[0] & 0x0FFFFFFF
    if link not in (1, 101, 228):
        raise CaptureReadError(f"{path}: link type {link} is not read (raw IPv4 101/228 or Ethernet 1)")
    position = 24
    record = struct.Struct(f"{order}IIII")
    while position < len(data):
        if position + 16 > len(data):
            yield 0, None, "truncated record header"
            return
        seconds, fraction, captured, original = record.unpack_from(data, position)
        position += 16
        frame = data[position : position + captured]
        position += captured
        instant = seconds * 1_000_000 + fraction // divisor
        if len(frame) < captured:
            yield instant, None, "truncated packet"
            return
        if captured < original:
            yield instant, None, "packet cut by the capture's snap length"
            continue
        if link == 1:
            offset, kind = 14, frame[12:14]
            while kind in (b"\x81\x00", b"\x88\xa8") and len(frame) >= offset + 4:
                kind, offset = frame[offset + 2 : offset + 4], offset + 4
            if kind != b"\x08\x00":
                yield instant, None, "not IPv4"
                continue
            frame = frame[offset:]
        yield instant, frame, ""


def _ip_payload(packet: bytes) -> tuple[int, bytes] | str:
    """``(protocol, payload)`` of an IPv4 packet, or the reason it is not one we can read."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return "not IPv4"
    header = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if header < 20 or total < header or len(packet) < total:
        return "malformed IPv4 header"
    if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:
        return "IPv4 fragment"
    return packet[9], packet[header:total]


def _udp(packet: bytes) -> tuple[int, int, bytes] | str:
    found = _ip_payload(packet)
    if isinstance(found, str):
        return found
    protocol, payload = found
    if protocol != 17:
        return "not UDP"
    if len(payload) < 8:
        return "truncated UDP header"
    source, destination, length = struct.unpack_from("!HHH", payload)
    if length < 8 or length > len(payload):
        return "malformed UDP length"
    return source, destination, payload[8:length]


def _tpdu_volume(packet: bytes) -> int | str:
    """The transport payload bytes of a T-PDU (the metered volume)."""
    found = _ip_payload(packet)
    if isinstance(found, str):
        return found
    protocol, payload = found
    if protocol == 17:
        return max(0, len(payload) - 8) if len(payload) >= 8 else "truncated inner UDP header"
    if protocol == 6:
        if len(payload) < 20:
            return "truncated inner TCP header"
        return max(0, len(payload) - (payload[12] >> 4) * 4)
    return len(payload)


def _tbcd(value: bytes) -> str:
    digits: list[str] = []
    for byte in value:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble == 0x0F:
                return "".join(digits)
            digits.append(str(nibble))
    return "".join(digits)


def _ies(body: bytes) -> Iterator[tuple[int, int, bytes]] | None:
    """``(type, instance, value)`` of the IEs of a GTPv2 body (``None`` if an IE overruns it)."""
    found = []
    position = 0
    while position < len(body):
        if position + 4 > len(body):
            return None
        kind, length, flags = struct.unpack_from("!BHB", body, position)
        value = body[position + 4 : position + 4 + length]
        if len(value) < length:
            return None
        found.append((kind, flags & 0x0F, value))
        position += 4 + length
    return iter(found)


def _fteid(value: bytes) -> int | None:
    return struct.unpack_from("!I", value, 1)[0] if len(value) >= 5 else None


def read_capture(path: Path, utc_offset_s: int = 9 * 3600) -> CaptureContents:
    """Sessions and their bytes per JST day (``utc_offset_s``) from a capture.

    Raises:
        CaptureReadError: If the file is not a classic pcap capture.
    """
    contents = CaptureContents()
    pending: dict[int, CapturedSession] = {}  # by the SGW's control TEID, until the response
    by_control: dict[int, CapturedSession] = {}  # by the PGW's control TEID
    by_user: dict[int, tuple[CapturedSession, bool]] = {}  # user TEID -> (session, uplink)
    for instant, packet, reason in packets(path):
        contents.packets += 1
        if packet is None:
            contents.skipped[reason] += 1
            continue
        udp = _udp(packet)
        if isinstance(udp, str):
            contents.skipped[udp] += 1
            continue
        _, port, payload = udp
        if port == GTPU_PORT:
            if len(payload) < 8 or payload[0] >> 5 != 1:
                contents.skipped["malformed GTP-U header"] += 1
                continue
            flags, kind, length, teid = struct.unpack_from("!BBHI", payload)
            if kind != 255:
                contents.skipped["GTP-U message other than G-PDU"] += 1
                continue
            start = 8 + (4 if flags & 0x07 else 0)
            if len(payload) < 8 + length or length < start - 8:
                contents.skipped["truncated G-PDU"] += 1
                continue
            if flags & 0x04:  # extension headers
                contents.skipped["G-PDU with extension headers"] += 1
                continue
            owner = by_user.get(teid)
            if owner is None:
                contents.skipped["G-PDU for an unknown TEID"] += 1
                continue
            volume = _tpdu_volume(payload[start : 8 + length])
            if isinstance(volume, str):
                contents.skipped[volume] += 1
                continue
            session, uplink = owner
            if uplink and session.route is None:
                destination = ipaddress.IPv4Address(payload[start + 16 : start + 20])
                session.route = "closed" if any(destination in network for network in CLOSED_NETWORKS) else "internet"
            day = (instant // 1_000_000 + utc_offset_s) // 86_400
            (session.up if uplink else session.down)[day] += volume
            session.last_us[day] = max(session.last_us.get(day, instant), instant)
            session.packets += 1
        elif port == GTPC_PORT or udp[0] == GTPC_PORT:
            if len(payload) < 12 or payload[0] >> 5 != 2 or not payload[0] & 0x08:
                contents.skipped["malformed GTPv2-C header"] += 1
                continue
            kind, length, teid = struct.unpack_from("!xBHI", payload)
            ies = _ies(payload[12 : 4 + length]) if len(payload) >= 4 + length else None
            if ies is None:
                contents.skipped["truncated GTPv2-C message"] += 1
                continue
            if kind == 32:  # Create Session Request
                values = list(ies)
                imsi = next((_tbcd(value) for ie, _, value in values if ie == IE_IMSI), None)
                control = next((_fteid(v) for ie, instance, v in values if ie == IE_FTEID and instance == 0), None)
                user = _bearer_fteid(values)
                if imsi is None or control is None or user is None:
                    contents.skipped["Create Session Request without IMSI or F-TEIDs"] += 1
                    continue
                session = CapturedSession(imsi, instant, teids={"sgw_c": control, "sgw_u": user})
                pending[control] = session
            elif kind == 33:  # Create Session Response
                values = list(ies)
                waiting = pending.pop(teid, None)
                control = next((_fteid(v) for ie, instance, v in values if ie == IE_FTEID and instance == 1), None)
                user = _bearer_fteid(values)
                if waiting is None or control is None or user is None:
                    contents.skipped["Create Session Response without a request or F-TEIDs"] += 1
                    continue
                waiting.teids.update(pgw_c=control, pgw_u=user)
                by_control[control] = waiting
                by_user[user] = (waiting, True)
                by_user[waiting.teids["sgw_u"]] = (waiting, False)
                contents.sessions.append(waiting)
            elif kind == 36:  # Delete Session Request
                ending = by_control.pop(teid, None)
                if ending is None:
                    contents.skipped["Delete Session Request for an unknown TEID"] += 1
                    continue
                ending.end_us = instant
                by_user.pop(ending.teids["pgw_u"], None)
                by_user.pop(ending.teids["sgw_u"], None)
            elif kind != 37:
                contents.skipped[f"GTPv2-C message type {kind}"] += 1
        else:
            contents.skipped["UDP port other than GTP"] += 1
    return contents


def _bearer_fteid(values: list[tuple[int, int, bytes]]) -> int | None:
    """The user-plane F-TEID inside a message's bearer context."""
    for kind, _, value in values:
        if kind == IE_BEARER_CONTEXT:
            nested = _ies(value)
            if nested is None:
                return None
            for inner, _, inner_value in nested:
                if inner == IE_FTEID:
                    return _fteid(inner_value)
    return None
