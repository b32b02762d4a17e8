"""Reading GTP captures: sessions, their subscribers and the bytes they carried, from any core's view.

The counterpart of :mod:`gateway.pcap`, for our captures and for real ones (containers and link
layers: :mod:`gateway.capture_file`). Outer IPv4 and IPv6; outer IPv4 fragments are reassembled
(bounded: :data:`MAX_REASSEMBLIES` datagrams at once, :data:`REASSEMBLY_TIMEOUT_US` each).

Sessions come from every GTP control view of an EPC or a 2G/3G core:

* **GTPv2-C** (TS 29.274) on S11 (MME-SGW) and S5/S8 (SGW-PGW): Create Session, Modify Bearer
  (the eNodeB's S1-U F-TEID, and its change at a handover), Create/Update/Delete Bearer (dedicated
  bearers), Delete Session, Release Access Bearers (S1-U released while idle);
* **GTPv1-C** (TS 29.060) on Gn/Gp (SGSN-GGSN): Create/Update/Delete PDP Context;
* **PFCP** (TS 29.244) on N4 (SMF-UPF), for tunnels no GTP-C names: Session Establishment
  (the UPF's N3 F-TEID of an uplink PDR, the UE address, the IMSI of a User ID IE), Modification
  (the gNodeB's N3 TEID in a FAR's Outer Header Creation) and Deletion. A PFCP session without a
  User ID has no subscriber: its bytes are counted as unattributed.

Every F-TEID is keyed by **(node address, TEID)**: nodes allocate TEIDs independently, so TEID 1 of
the SGW and TEID 1 of the PGW are different tunnels. A G-PDU belongs to the tunnel of its outer
destination address and TEID; the F-TEID's interface type says its leg (S1-U, S5/S8, Gn) and
direction. A subscriber's PDN connection seen on S11 and on S5 (same IMSI, same default bearer) is
one session, and a bearer seen on several legs is metered **once**: on the leg nearest the PGW
(S5/S8 or Gn) where it has traffic, else S1-U.

Volume is the T-PDU — the user's whole IP packet, inner header included (GTP-U header, outer UDP
and IP excluded), as a gateway's counters count it (TS 32.251/32.298): the IPv4 total length, or
40 + the IPv6 payload length. Each inner fragment is a T-PDU of its own size. G-PDUs with extension
headers (the 5G N3 PDU Session Container, PDCP numbers, UDP port, any type, skipped by its length)
are read. Packets that are truncated or malformed, G-PDUs of unknown tunnels and GTP messages
this reader does not use are counted by reason (distinct labels); nothing raises.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.capture_file import CaptureReadError, frames, network_packet, open_capture

__all__ = ["CaptureContents", "CaptureReadError", "CapturedSession", "read_capture"]

GTPC_PORT: Final = 2123
GTPU_PORT: Final = 2152
PFCP_PORT: Final = 8805
MAX_REASSEMBLIES: Final = 4_096
"""Outer IPv4 datagrams being reassembled at once; beyond, the oldest is given up."""
REASSEMBLY_TIMEOUT_US: Final = 30_000_000
"""A fragmented outer datagram not complete within 30 s of capture time is given up (RFC 791's 15 s, doubled)."""
LEG_ORDER: Final = ("S5/S8", "Gn", "S1-U", "N3")
"""Legs a bearer is metered on, nearest the PGW first."""
USER_FTEIDS: Final = {0: ("S1-U", False), 1: ("S1-U", True), 4: ("S5/S8", False), 5: ("S5/S8", True)}
"""GTPv2 F-TEID interface types of the user plane (TS 29.274 §8.22): leg, and whether G-PDUs sent to
it go uplink: 0 eNodeB S1-U, 1 SGW S1-U, 4 SGW S5/S8, 5 PGW S5/S8."""
CLOSED_V4: Final = tuple(ipaddress.ip_network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
CLOSED_V6: Final = (ipaddress.ip_network("fc00::/7"),)
"""Private space (RFC 1918, RFC 4193 unique local): traffic to it stays in the closed network."""
IE_IMSI: Final = 1
IE_CAUSE: Final = 2
IE_EBI: Final = 73
IE_FTEID: Final = 87
IE_BEARER_CONTEXT: Final = 93
_V1_TV_LENGTHS: Final = {
    1: 1, 2: 8, 3: 6, 4: 4, 5: 4, 8: 1, 9: 28, 11: 1, 12: 3, 13: 1, 14: 1, 15: 1, 16: 4, 17: 4, 18: 5,
    19: 1, 20: 1, 21: 1, 22: 9, 23: 1, 24: 1, 25: 2, 26: 2, 27: 2, 28: 2, 29: 1, 127: 4,
}  # fmt: skip
"""GTPv1 TV information elements and their value lengths (TS 29.060 §7.7); types >= 128 are TLV."""


@dataclass
class LegCounts:
    """What one bearer carried on one leg: bytes per JST day, last G-PDU per day, packets."""

    up: Counter[int] = field(default_factory=Counter)
    down: Counter[int] = field(default_factory=Counter)
    last_us: dict[int, int] = field(default_factory=dict)
    packets: int = 0


@dataclass
class Bearer:
    """An EPS bearer (or PDP context) of a session, with its counts per leg."""

    session: CapturedSession
    ebi: int
    legs: dict[str, LegCounts] = field(default_factory=dict)
    endpoints: list[tuple[bytes, int]] = field(default_factory=list)

    def metered_leg(self) -> str | None:
        """The leg its volume is taken from: the one nearest the PGW that carried anything."""
        return next((leg for leg in LEG_ORDER if leg in self.legs and self.legs[leg].packets), None)


@dataclass
class CapturedSession:
    """One session (PDN connection or PDP context) found in a capture.

    Attributes:
        imsi: The subscriber (``""``: none known, a PFCP session without a User ID).
        start_us: When its first Create Session (or PDP Context) Request was seen.
        end_us: When its first Delete Session (PDP Context) Request was seen (``None``: open).
        default_ebi: The default bearer's EBI (the NSAPI for GTPv1).
        bearers: Its bearers by EBI.
        route: ``closed`` or ``internet``: where its first uplink T-PDU went (private space or not).
        rejected: Whether every Create response refused it.
        accepted: Whether a Create response accepted it.
        named_by: What names it: the first control F-TEID (or F-SEID) seen, formatted by :attr:`key`.
    """

    imsi: str
    start_us: int
    end_us: int | None = None
    default_ebi: int = 0
    bearers: dict[int, Bearer] = field(default_factory=dict)
    route: str | None = None
    rejected: bool = False
    accepted: bool = False
    named_by: tuple[str, bytes, int] | None = None
    control: list[tuple[bytes, int]] = field(default_factory=list)
    route_at: int = 2**62
    """The capture record of the uplink T-PDU that decided :attr:`route` (the earliest one wins)."""

    @property
    def key(self) -> str:
        """A stable name: ``ADDRESS-TEID`` of its first control F-TEID (``pfcp-ADDRESS-SEID`` on N4)."""
        if self.named_by is None:
            return ""
        prefix, address, number = self.named_by
        width = 16 if prefix else 8
        return f"{prefix}{ipaddress.ip_address(address)}-{number:0{width}x}"

    def bearer(self, ebi: int) -> Bearer:
        """The bearer ``ebi`` (made on first use)."""
        if ebi not in self.bearers:
            self.bearers[ebi] = Bearer(self, ebi)
        return self.bearers[ebi]

    def _metered(self) -> list[LegCounts]:
        chosen = []
        for bearer in self.bearers.values():
            leg = bearer.metered_leg()
            if leg is not None:
                chosen.append(bearer.legs[leg])
        return chosen

    @property
    def up(self) -> Counter[int]:
        """Uplink T-PDU bytes per JST day, each bearer on its metered leg."""
        return sum((counts.up for counts in self._metered()), Counter())

    @property
    def down(self) -> Counter[int]:
        """Downlink T-PDU bytes per JST day, each bearer on its metered leg."""
        return sum((counts.down for counts in self._metered()), Counter())

    @property
    def last_us(self) -> dict[int, int]:
        """Per JST day, the instant of the last metered G-PDU."""
        found: dict[int, int] = {}
        for counts in self._metered():
            for day, instant in counts.last_us.items():
                found[day] = max(found.get(day, instant), instant)
        return found

    @property
    def packets(self) -> int:
        """Metered G-PDUs."""
        return sum(counts.packets for counts in self._metered())

    @property
    def legs(self) -> list[str]:
        """The legs its bearers were metered on (for the session diagnostics)."""
        return sorted({leg for bearer in self.bearers.values() if (leg := bearer.metered_leg())})


@dataclass
class CaptureContents:
    """What a capture held: its sessions, in the order they were created, and what was skipped."""

    sessions: list[CapturedSession] = field(default_factory=list)
    packets: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unattributed: Counter[tuple[str, int]] = field(default_factory=Counter)
    """T-PDU bytes of G-PDUs no control message in the capture gave a session, per (address, TEID)."""
    unattributed_packets: int = 0
    unattributed_sessions: int = 0
    """PFCP sessions without a subscriber (no User ID): their bytes are in :attr:`unattributed`."""


# --- outer IP and UDP -------------------------------------------------------------------------


@dataclass
class _Reassembly:
    first_us: int
    header: bytes
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None


class Fragments:
    """Outer IPv4 reassembly, bounded in datagrams and in time."""

    def __init__(self, skipped: Counter[str]) -> None:
        self.pending: dict[tuple[bytes, bytes, int, int], _Reassembly] = {}
        self.skipped = skipped

    def add(self, instant: int, packet: bytes, header: int, total: int) -> bytes | None:
        """Take one fragment; the whole datagram once its last piece is in, else ``None``."""
        self._expire(instant)
        flags = struct.unpack_from("!H", packet, 6)[0]
        offset, more = (flags & 0x1FFF) * 8, bool(flags & 0x2000)
        key = (packet[12:16], packet[16:20], struct.unpack_from("!H", packet, 4)[0], packet[9])
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= MAX_REASSEMBLIES:
                del self.pending[next(iter(self.pending))]
                self.skipped["outer IPv4 fragments given up (too many at once)"] += 1
            entry = self.pending[key] = _Reassembly(instant, packet[:header])
        if offset == 0:
            entry.header = packet[:header]
        entry.pieces[offset] = packet[header:total]
        if not more:
            entry.total = offset + total - header
        if entry.total is None:
            return None
        data = bytearray()
        for start in sorted(entry.pieces):
            if start > len(data):
                return None  # a hole: wait for the rest
            data[start:] = entry.pieces[start]
        if len(data) < entry.total:
            return None
        del self.pending[key]
        head = bytearray(entry.header)
        struct.pack_into("!HH", head, 2, len(head) + entry.total, 0)
        return bytes(head) + bytes(data[: entry.total])

    def _expire(self, instant: int) -> None:
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            if instant - entry.first_us <= REASSEMBLY_TIMEOUT_US:
                return
            del self.pending[key]
            self.skipped["outer IPv4 fragments never completed"] += 1

    def finish(self) -> None:
        """Count what was still waiting at the end of the capture."""
        if self.pending:
            self.skipped["outer IPv4 fragments never completed"] += len(self.pending)
            self.pending.clear()


def _outer_udp(
    instant: int, version: int, packet: bytes, fragments: Fragments
) -> tuple[bytes, bytes, int, int, bytes] | str | None:
    """``(source, destination, source port, destination port, payload)`` of an outer UDP datagram.

    ``None`` for a fragment still waiting for the rest of its datagram; a reason otherwise.
    """
    if version == 4:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return "outer packet not IP"
        header = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        if header < 20 or total < header or len(packet) < total:
            return "malformed outer IPv4 header"
        if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:
            whole = fragments.add(instant, packet, header, total)
            if whole is None:
                return None
            packet, total = whole, len(whole)
        protocol, payload = packet[9], packet[header:total]
        source, destination = packet[12:16], packet[16:20]
    else:
        if len(packet) < 40 or packet[0] >> 4 != 6:
            return "malformed outer IPv6 header"
        length = struct.unpack_from("!H", packet, 4)[0]
        protocol, payload = packet[6], packet[40 : 40 + length]
        if len(payload) < length:
            return "malformed outer IPv6 header"
        source, destination = packet[8:24], packet[24:40]
        while protocol in (0, 43, 60):  # hop-by-hop, routing, destination options
            if len(payload) < 8:
                return "malformed outer IPv6 extension header"
            protocol, skip = payload[0], (payload[1] + 1) * 8
            payload = payload[skip:]
        if protocol == 44:
            return "outer IPv6 fragment (not reassembled)"
    if protocol != 17:
        return "outer packet not UDP"
    if len(payload) < 8:
        return "truncated outer UDP header"
    sport, dport, length = struct.unpack_from("!HHH", payload)
    if length < 8 or length > len(payload):
        return "malformed outer UDP length"
    return source, destination, sport, dport, payload[8:length]


def _tpdu(tpdu: bytes) -> tuple[int, bytes] | str:
    """``(volume, inner destination address)`` of a T-PDU: the inner packet's IP length."""
    if not tpdu:
        return "empty T-PDU"
    version = tpdu[0] >> 4
    if version == 4:
        if len(tpdu) < 20:
            return "truncated inner IPv4 header"
        total = struct.unpack_from("!H", tpdu, 2)[0]
        if total < (tpdu[0] & 0x0F) * 4 or total < 20:
            return "malformed inner IPv4 header"
        if total > len(tpdu):
            return "truncated T-PDU"
        return total, tpdu[16:20]
    if version == 6:
        if len(tpdu) < 40:
            return "truncated inner IPv6 header"
        total = 40 + struct.unpack_from("!H", tpdu, 4)[0]
        if total > len(tpdu):
            return "truncated T-PDU"
        return total, tpdu[24:40]
    return "inner packet not IP"


@functools.lru_cache(maxsize=4096)  # a fleet talks to a few servers: each address is looked at once
def _closed(address: bytes) -> bool:
    """Whether a packet to ``address`` (4 or 16 bytes) stays in the closed network (private space)."""
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in (CLOSED_V4 if ip.version == 4 else CLOSED_V6))


# --- GTP information elements -------------------------------------------------------------------


_NIBBLES_SWAPPED: Final = bytes((byte & 0x0F) << 4 | byte >> 4 for byte in range(256))


def _tbcd(value: bytes) -> str:
    """TBCD digits (TS 29.274 §8.3: low nibble first), up to the first filler nibble (0xF).

    A nibble above 9 that is not the filler reads as its decimal number, as it always has.
    """
    swapped = value.translate(_NIBBLES_SWAPPED).hex()
    filler = swapped.find("f")
    digits_only = swapped if filler < 0 else swapped[:filler]
    if digits_only.isdecimal():  # the usual: every nibble a digit (C speed)
        return digits_only
    digits: list[str] = []
    for byte in value:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble == 0x0F:
                return "".join(digits)
            digits.append(str(nibble))
    return "".join(digits)


_IE_HEADER: Final = struct.Struct("!BHB").unpack_from


def _v2_ies(body: bytes) -> list[tuple[int, int, bytes]] | None:
    """``(type, instance, value)`` of GTPv2 IEs (``None`` if one overruns the body)."""
    found = []
    position, size = 0, len(body)
    while position < size:
        if position + 4 > size:
            return None
        kind, length, flags = _IE_HEADER(body, position)
        end = position + 4 + length
        if end > size:
            return None
        found.append((kind, flags & 0x0F, body[position + 4 : end]))
        position = end
    return found


@dataclass(frozen=True)
class _Fteid:
    interface: int
    teid: int
    addresses: tuple[bytes, ...]


def _fteid(value: bytes) -> _Fteid | None:
    """An F-TEID (TS 29.274 §8.22): interface type, TEID, IPv4 and/or IPv6 address."""
    if len(value) < 5:
        return None
    flags, teid = value[0], int.from_bytes(value[1:5], "big")
    if flags & 0xC0 == 0x80:  # IPv4 only, the usual
        return _Fteid(flags & 0x3F, teid, (value[5:9],) if len(value) >= 9 else ())
    addresses, position = [], 5
    if flags & 0x80:
        addresses.append(value[position : position + 4])
        position += 4
    if flags & 0x40:
        addresses.append(value[position : position + 16])
    return _Fteid(flags & 0x3F, teid, tuple(address for address in addresses if len(address) in (4, 16)))


def _pfcp_ies(body: bytes) -> list[tuple[int, bytes]] | None:
    """``(type, value)`` of PFCP IEs (TS 29.244 §8.1.1; an enterprise IE's value keeps its enterprise id)."""
    found = []
    position = 0
    while position < len(body):
        if position + 4 > len(body):
            return None
        kind, length = struct.unpack_from("!HH", body, position)
        value = body[position + 4 : position + 4 + length]
        if len(value) < length:
            return None
        found.append((kind, value))
        position += 4 + length
    return found


def _fseid(value: bytes) -> tuple[int, tuple[bytes, ...]] | None:
    """An F-SEID (§8.2.37): the SEID and the node's IPv4/IPv6 addresses."""
    if len(value) < 9:
        return None
    flags, seid = value[0], struct.unpack_from("!Q", value, 1)[0]
    addresses, position = [], 9
    if flags & 0x02:
        addresses.append(value[position : position + 4])
        position += 4
    if flags & 0x01:
        addresses.append(value[position : position + 16])
    return seid, tuple(address for address in addresses if len(address) in (4, 16))


def _pfcp_fteid(value: bytes) -> _Fteid | None:
    """A PFCP F-TEID (§8.2.3); one the UPF is still to choose (CH) names no tunnel yet."""
    if len(value) < 5 or value[0] & 0x04:
        return None
    flags, teid = value[0], struct.unpack_from("!I", value, 1)[0]
    addresses, position = [], 5
    if flags & 0x01:
        addresses.append(value[position : position + 4])
        position += 4
    if flags & 0x02:
        addresses.append(value[position : position + 16])
    return _Fteid(-1, teid, tuple(address for address in addresses if len(address) in (4, 16)))


def _outer_header(value: bytes) -> _Fteid | None:
    """A GTP-U Outer Header Creation (§8.2.56): the TEID and address downlink G-PDUs go to."""
    if len(value) < 6 or not value[0] & 0x03:  # GTP-U/UDP/IPv4 or /IPv6
        return None
    teid = struct.unpack_from("!I", value, 2)[0]
    addresses = []
    if value[0] & 0x01 and len(value) >= 10:
        addresses.append(value[6:10])
    elif value[0] & 0x02 and len(value) >= 22:
        addresses.append(value[6:22])
    return _Fteid(-1, teid, tuple(addresses))


def _user_imsi(value: bytes) -> str | None:
    """The IMSI of a User ID IE (§8.2.101), when it carries one."""
    if len(value) < 2 or not value[0] & 0x01:
        return None
    length = value[1]
    return _tbcd(value[2 : 2 + length]) or None


def _v1_ies(body: bytes) -> list[tuple[int, bytes]] | None:
    """``(type, value)`` of GTPv1 IEs: TV types below 128 by their fixed length, TLV above."""
    found = []
    position = 0
    while position < len(body):
        kind = body[position]
        if kind < 128:
            length = _V1_TV_LENGTHS.get(kind)
            if length is None:
                return None
            start = position + 1
        else:
            if position + 3 > len(body):
                return None
            length = struct.unpack_from("!H", body, position + 1)[0]
            start = position + 3
        value = body[start : start + length]
        if len(value) < length:
            return None
        found.append((kind, value))
        position = start + length
    return found


# --- the sessions -------------------------------------------------------------------------------


Tunnel = tuple[Bearer, str, bool]
"""Where a G-PDU to a tunnel is counted: the bearer, the leg, and whether it goes uplink."""


class Tunnels(dict[tuple[bytes, int], Tunnel]):
    """The user-plane tunnels by (node address, TEID), with a log of their changes for the fast reader.

    Every assignment and removal is logged with the capture record it happened at (``position``),
    so G-PDUs counted in bulk later are attributed as they would have been one by one.
    """

    def __init__(self) -> None:
        """An empty table and log."""
        super().__init__()
        self.position = 0
        self.log: list[tuple[int, bytes, int, Tunnel | None]] = []

    def __setitem__(self, key: tuple[bytes, int], value: Tunnel) -> None:
        """Assign a tunnel (logged)."""
        super().__setitem__(key, value)
        self.log.append((self.position, key[0], key[1], value))

    def __delitem__(self, key: tuple[bytes, int]) -> None:
        """Remove a tunnel (logged)."""
        super().__delitem__(key)
        self.log.append((self.position, key[0], key[1], None))


class Core:
    """Sessions and tunnels as a capture's control planes establish them."""

    def __init__(self, contents: CaptureContents, utc_offset_s: int) -> None:
        self.contents = contents
        self.utc_offset_s = utc_offset_s
        self.control: dict[tuple[bytes, int], CapturedSession] = {}
        self.user = Tunnels()
        self.open: dict[tuple[str, int], CapturedSession] = {}
        self.requests: dict[tuple[bytes, bytes, int], tuple[CapturedSession, list[Bearer]]] = {}
        self.pfcp_sessions: dict[tuple[bytes, int], CapturedSession] = {}
        """PFCP sessions by the F-SEID (node address, SEID) a peer addresses them with."""
        self.creating: dict[tuple[bytes, bytes], list[CapturedSession]] = {}
        """Sessions whose Create Session Request from a peer to a peer awaits its response."""

    @property
    def skipped(self) -> Counter[str]:
        return self.contents.skipped

    # G-PDUs

    def gpdu(self, instant: int, destination: bytes, teid: int, tpdu: bytes) -> None:
        tunnel = self.user.get((destination, teid))
        found = _tpdu(tpdu)
        if isinstance(found, str):
            self.skipped[found] += 1
            return
        if tunnel is None:
            self.skipped["G-PDU for an unknown tunnel (address, TEID)"] += 1
            self.contents.unattributed[(str(ipaddress.ip_address(destination)), teid)] += found[0]
            self.contents.unattributed_packets += 1
            return
        volume, inner_destination = found
        bearer, leg, uplink = tunnel
        session = bearer.session
        if uplink and self.user.position < session.route_at:
            session.route = "closed" if _closed(inner_destination) else "internet"
            session.route_at = self.user.position
        counts = bearer.legs.get(leg) or bearer.legs.setdefault(leg, LegCounts())
        day = (instant // 1_000_000 + self.utc_offset_s) // 86_400
        (counts.up if uplink else counts.down)[day] += volume
        counts.last_us[day] = max(counts.last_us.get(day, instant), instant)
        counts.packets += 1

    # tunnels

    def _user_endpoint(self, bearer: Bearer, fteid: _Fteid, leg: str, uplink: bool) -> None:
        for address in fteid.addresses:
            self.user[(address, fteid.teid)] = (bearer, leg, uplink)
            bearer.endpoints.append((address, fteid.teid))

    def _control_endpoint(self, session: CapturedSession, fteid: _Fteid) -> None:
        for address in fteid.addresses:
            self.control[(address, fteid.teid)] = session
            session.control.append((address, fteid.teid))
            if session.named_by is None:
                session.named_by = ("", address, fteid.teid)

    def _drop_bearer(self, bearer: Bearer) -> None:
        for endpoint in bearer.endpoints:
            if self.user.get(endpoint, (None,))[0] is bearer:
                del self.user[endpoint]
        bearer.endpoints.clear()

    def _end(self, session: CapturedSession, instant: int) -> None:
        if session.end_us is None:
            session.end_us = instant
        self.open.pop((session.imsi, session.default_ebi), None)

    def _close(self, session: CapturedSession) -> None:
        for bearer in session.bearers.values():
            self._drop_bearer(bearer)
        for endpoint in session.control:
            if self.control.get(endpoint) is session:
                del self.control[endpoint]

    # GTPv2-C

    @staticmethod
    def _v2_bearers(ies: list[tuple[int, int, bytes]]) -> list[tuple[int, list[_Fteid]]]:
        """``(EBI, F-TEIDs)`` of each Bearer Context IE of a message (EBI 0: not yet assigned)."""
        contexts = []
        for kind, _, value in ies:
            if kind != IE_BEARER_CONTEXT:
                continue
            nested = _v2_ies(value) or []
            ebi = next((inner[0] & 0x0F for k, _, inner in nested if k == IE_EBI and inner), 0)
            fteids = [found for k, _, inner in nested if k == IE_FTEID and (found := _fteid(inner)) is not None]
            contexts.append((ebi, fteids))
        return contexts

    def _register(
        self,
        session: CapturedSession,
        ies: list[tuple[int, int, bytes]],
        bearers: list[Bearer] | None = None,
        contexts: list[tuple[int, list[_Fteid]]] | None = None,
    ) -> list[Bearer]:
        """Take a message's F-TEIDs: control ones for the session, user ones for its bearers.

        ``bearers``: those of the request a response answers, in order (a Create Bearer Request's
        bearers have no EBI yet; its response numbers them).
        """
        for kind, _, value in ies:
            if kind == IE_FTEID and (fteid := _fteid(value)) is not None and fteid.interface not in USER_FTEIDS:
                self._control_endpoint(session, fteid)
        touched = []
        for position, (ebi, fteids) in enumerate(contexts if contexts is not None else self._v2_bearers(ies)):
            if ebi == 0 and bearers is not None and position < len(bearers):
                bearer = bearers[position]
            elif ebi == 0:
                bearer = Bearer(session, 0)  # not yet numbered (Create Bearer Request): the response numbers it
            else:
                bearer = session.bearer(ebi)
                if bearers is not None and position < len(bearers) and bearers[position].ebi == 0:
                    pending = bearers[position]  # the response numbers the bearer of the request
                    bearer.legs.update(pending.legs)
                    for endpoint in pending.endpoints:
                        self.user[endpoint] = (bearer, *self.user[endpoint][1:])
                        bearer.endpoints.append(endpoint)
            for fteid in fteids:
                if fteid.interface in USER_FTEIDS:
                    leg, uplink = USER_FTEIDS[fteid.interface]
                    self._user_endpoint(bearer, fteid, leg, uplink)
            touched.append(bearer)
        return touched

    def v2(self, instant: int, source: bytes, destination: bytes, payload: bytes) -> None:
        while payload:
            if len(payload) < 8 or payload[0] >> 5 != 2:
                self.skipped["malformed GTPv2-C header"] += 1
                return
            flags, kind, length = struct.unpack_from("!BBH", payload)
            has_teid = bool(flags & 0x08)
            if len(payload) < 4 + length or length < (8 if has_teid else 4):
                self.skipped["truncated GTPv2-C message"] += 1
                return
            teid = struct.unpack_from("!I", payload, 4)[0] if has_teid else 0
            sequence = struct.unpack_from("!I", payload, 8 if has_teid else 4)[0] >> 8
            ies = _v2_ies(payload[(12 if has_teid else 8) : 4 + length])
            if ies is None:
                self.skipped["truncated GTPv2-C message"] += 1
            else:
                self._v2_message(instant, source, destination, kind, teid, sequence, ies)
            payload = payload[4 + length :] if flags & 0x10 else b""  # a piggybacked message follows

    def _v2_message(
        self,
        instant: int,
        source: bytes,
        destination: bytes,
        kind: int,
        teid: int,
        sequence: int,
        ies: list[tuple[int, int, bytes]],
    ) -> None:
        session = self.control.get((destination, teid)) if teid else None
        if kind == 32:  # Create Session Request
            imsi = next((_tbcd(value) for k, _, value in ies if k == IE_IMSI), None)
            contexts = self._v2_bearers(ies)
            if imsi is None or not contexts:
                self.skipped["Create Session Request without IMSI or bearer context"] += 1
                return
            ebi = contexts[0][0]
            session = self.open.get((imsi, ebi))
            if session is None:  # a new PDN connection (the same one seen on another leg is not)
                session = CapturedSession(imsi, instant, default_ebi=ebi)
                self.open[(imsi, ebi)] = session
                self.contents.sessions.append(session)
            self._register(session, ies, contexts=contexts)
            self.requests[(source, destination, sequence)] = (session, [])
            self.creating.setdefault((source, destination), []).append(session)
            return
        if kind == 33:
            waiting = self.creating.get((destination, source), [])
            for position, candidate in enumerate(waiting):
                if candidate is session or self.requests.get((destination, source, sequence), (None,))[0] is candidate:
                    del waiting[position]
                    break
        if session is None and teid and kind in (34, 36, 95, 97, 99, 170):
            # the Create Session Response is not in the capture: the peer's next request names the
            # control TEID it was given; with one session waiting between the two, it is that one's
            waiting = self.creating.get((source, destination), [])
            if len(waiting) == 1:
                session = waiting.pop()
                self.control[(destination, teid)] = session
                session.control.append((destination, teid))
        if kind in (33, 35, 96, 98, 100, 171, 37):  # responses: to the request of the same peer and sequence
            request = self.requests.pop((destination, source, sequence), None)
            if session is None and request is not None:
                session = request[0]
            if session is None:
                self.skipped[f"GTPv2-C response (type {kind}) without its request"] += 1
                return
            cause = next((value[0] for k, _, value in ies if k == IE_CAUSE and value), 16)
            accepted = 16 <= cause <= 63
            if kind == 33:
                if accepted:
                    session.accepted = True
                elif not session.accepted:
                    session.rejected = True
                    self._end(session, instant)
                    return
            if accepted:
                self._register(session, ies, request[1] if request is not None else None)
            if kind == 37:
                self._close(session)
            return
        if session is None:
            if kind in (34, 36, 95, 97, 99, 170):
                self.skipped[f"GTPv2-C request (type {kind}) for an unknown session"] += 1
            else:
                self.skipped[f"GTPv2-C message type {kind} (not used)"] += 1
            return
        if kind in (34, 95, 97):  # Modify Bearer, Create Bearer, Update Bearer Request
            touched = self._register(session, ies)
            self.requests[(source, destination, sequence)] = (session, touched)
        elif kind == 36:  # Delete Session Request
            self._end(session, instant)
            self.requests[(source, destination, sequence)] = (session, [])
        elif kind == 99:  # Delete Bearer Request: the EBIs named (the default one ends the session)
            for k, _, value in ies:
                if k == IE_EBI and value:
                    ebi = value[0] & 0x0F
                    if ebi == session.default_ebi:
                        self._end(session, instant)
                    elif ebi in session.bearers:
                        self._drop_bearer(session.bearers[ebi])
            self.requests[(source, destination, sequence)] = (session, [])
        elif kind == 170:  # Release Access Bearers Request: the S1-U tunnels go (the eNodeB's)
            for bearer in session.bearers.values():
                for endpoint in list(bearer.endpoints):
                    found = self.user.get(endpoint)
                    if found is not None and found[0] is bearer and found[1] == "S1-U" and not found[2]:
                        del self.user[endpoint]
            self.requests[(source, destination, sequence)] = (session, [])
        else:
            self.skipped[f"GTPv2-C message type {kind} (not used)"] += 1

    # PFCP (N4)

    def pfcp(self, instant: int, source: bytes, destination: bytes, payload: bytes) -> None:
        """One PFCP message (TS 29.244 §7.2): session establishment, modification, deletion."""
        while payload:
            if len(payload) < 8 or payload[0] >> 5 != 1:
                self.skipped["malformed PFCP header"] += 1
                return
            flags, kind, length = struct.unpack_from("!BBH", payload)
            has_seid = bool(flags & 0x01)
            head = 16 if has_seid else 8
            if len(payload) < 4 + length or 4 + length < head:
                self.skipped["truncated PFCP message"] += 1
                return
            seid = struct.unpack_from("!Q", payload, 4)[0] if has_seid else 0
            sequence = struct.unpack_from("!I", payload, head - 4)[0] >> 8
            ies = _pfcp_ies(payload[head : 4 + length])
            if ies is None:
                self.skipped["truncated PFCP message"] += 1
            else:
                self._pfcp_message(instant, source, destination, kind, seid, sequence, ies)
            payload = payload[4 + length :] if flags & 0x02 else b""  # MP: another message follows

    def _pfcp_message(
        self, instant: int, source: bytes, destination: bytes, kind: int, seid: int, sequence: int,
        ies: list[tuple[int, bytes]],
    ) -> None:  # fmt: skip
        session = self.pfcp_sessions.get((destination, seid)) if seid else None
        if kind == 50:  # Session Establishment Request (SMF -> UPF)
            imsi = next((_user_imsi(value) for k, value in ies if k == 141), None) or ""
            session = CapturedSession(imsi, instant, default_ebi=0)
            for k, value in ies:
                if k == 57 and (found := _fseid(value)) is not None:  # CP F-SEID: where the UPF answers
                    for address in found[1]:
                        self.pfcp_sessions[(address, found[0])] = session
                        session.named_by = session.named_by or ("pfcp-", address, found[0])
            self._pfcp_rules(session, ies)
            self.contents.sessions.append(session)
            self.requests[(source, destination, sequence)] = (session, [])
            return
        if kind in (51, 53, 55):  # responses
            request = self.requests.pop((destination, source, sequence), None)
            if session is None and request is not None:
                session = request[0]
            if session is None:
                self.skipped[f"PFCP response (type {kind}) without its request"] += 1
                return
            accepted = next((value[0] for k, value in ies if k == 19 and value), 1) == 1
            if kind == 51 and not accepted:
                session.rejected = True
                return
            for k, value in ies:
                if k == 57 and (found := _fseid(value)) is not None:  # UP F-SEID: where the SMF sends
                    for address in found[1]:
                        self.pfcp_sessions[(address, found[0])] = session
            self._pfcp_rules(session, ies)
            if kind == 55:
                self._close(session)
            return
        if session is None:
            if kind in (52, 54):
                self.skipped[f"PFCP request (type {kind}) for an unknown session"] += 1
            else:
                self.skipped[f"PFCP message type {kind} (not used)"] += 1
            return
        if kind == 52:
            self._pfcp_rules(session, ies)
        elif kind == 54:
            self._end(session, instant)
        self.requests[(source, destination, sequence)] = (session, [])

    def _pfcp_rules(self, session: CapturedSession, ies: list[tuple[int, bytes]]) -> None:
        """N3 tunnels of Create/Created/Update PDRs (uplink, to the UPF) and FARs (downlink, to the gNodeB)."""
        bearer = session.bearer(0)
        for kind, value in ies:
            nested = _pfcp_ies(value) if kind in (1, 3, 8, 9, 10) else None
            if not nested:
                continue
            if kind in (1, 8, 9):  # Create PDR, Created PDR, Update PDR
                pdi = next((_pfcp_ies(inner) for k, inner in nested if k == 2), None) or []
                source_interface = next((inner[0] & 0x0F for k, inner in pdi if k == 20 and inner), 0)
                for k, inner in [*pdi, *nested]:
                    if k == 21 and source_interface == 0 and (found := _pfcp_fteid(inner)) is not None:
                        self._tunnel_if_free(bearer, found, "N3", True)
            else:  # Create FAR, Update FAR: where downlink G-PDUs are sent
                for k, inner in nested:
                    if k not in (4, 11):
                        continue
                    parameters = _pfcp_ies(inner) or []
                    to_access = next((item[0] & 0x0F for key, item in parameters if key == 42 and item), 1) == 0
                    for key, item in parameters:
                        if key == 84 and to_access and (found := _outer_header(item)) is not None:
                            self._tunnel_if_free(bearer, found, "N3", False)

    def _tunnel_if_free(self, bearer: Bearer, fteid: _Fteid, leg: str, uplink: bool) -> None:
        """A PFCP tunnel, unless GTP-C already named it (GTP-C knows the subscriber)."""
        for address in fteid.addresses:
            known = self.user.get((address, fteid.teid))
            if known is None or known[0].session.imsi == "" or known[0].session is bearer.session:
                self.user[(address, fteid.teid)] = (bearer, leg, uplink)
                bearer.endpoints.append((address, fteid.teid))

    # GTPv1-C

    def v1(self, instant: int, source: bytes, destination: bytes, payload: bytes) -> None:
        if len(payload) < 8:
            self.skipped["malformed GTPv1-C header"] += 1
            return
        flags, kind, length, teid = struct.unpack_from("!BBHI", payload)
        start = 8 + (4 if flags & 0x07 else 0)
        if len(payload) < 8 + length or length < start - 8:
            self.skipped["truncated GTPv1-C message"] += 1
            return
        sequence = struct.unpack_from("!H", payload, 8)[0] if flags & 0x02 else 0
        if flags & 0x04:  # extension headers
            position = start - 1
            while position < len(payload) and payload[position]:
                if position + 1 >= len(payload) or payload[position + 1] == 0:
                    self.skipped["malformed GTPv1-C extension header"] += 1
                    return
                position += payload[position + 1] * 4
            start = position + 1
        ies = _v1_ies(payload[start : 8 + length])
        if ies is None:
            self.skipped["truncated GTPv1-C message"] += 1
            return
        session = self.control.get((destination, teid)) if teid else None
        values = dict(ies)
        addresses = [value for k, value in ies if k == 133 and len(value) in (4, 16)]
        control_address = addresses[0] if addresses else source
        user_address = addresses[1] if len(addresses) > 1 else control_address
        if kind == 16:  # Create PDP Context Request (SGSN → GGSN)
            if 2 not in values:
                self.skipped["Create PDP Context Request without IMSI"] += 1
                return
            imsi, nsapi = _tbcd(values[2]), values.get(20, b"\x05")[0] & 0x0F
            session = self.open.get((imsi, nsapi))
            if session is None:
                session = CapturedSession(imsi, instant, default_ebi=nsapi)
                self.open[(imsi, nsapi)] = session
                self.contents.sessions.append(session)
            self._v1_tunnels(session, values, control_address, user_address, uplink=False)
            self.requests[(source, destination, sequence)] = (session, [])
        elif kind in (17, 19, 21):  # responses
            request = self.requests.pop((destination, source, sequence), None)
            if session is None and request is not None:
                session = request[0]
            if session is None:
                self.skipped[f"GTPv1-C response (type {kind}) without its request"] += 1
                return
            cause = values.get(1, b"\x80")[0]
            accepted = 128 <= cause <= 191
            if kind == 17 and not accepted and not session.accepted:
                session.rejected = True
                self._end(session, instant)
                return
            if kind == 17:
                session.accepted = True
            if kind == 21:
                self._close(session)
            elif accepted:
                self._v1_tunnels(session, values, control_address, user_address, uplink=True)
        elif kind in (18, 20):  # Update / Delete PDP Context Request
            if session is None:
                self.skipped[f"GTPv1-C request (type {kind}) for an unknown session"] += 1
                return
            if kind == 18:  # from the SGSN (a new one, after a routing area update): its own tunnels
                self._v1_tunnels(session, values, control_address, user_address, uplink=False)
            else:
                self._end(session, instant)
            self.requests[(source, destination, sequence)] = (session, [])
        else:
            self.skipped[f"GTPv1-C message type {kind} (not used)"] += 1

    def _v1_tunnels(
        self, session: CapturedSession, values: dict[int, bytes], control: bytes, user: bytes, uplink: bool
    ) -> None:
        """A PDP context's tunnels: TEID Data I at the user address, TEID Control Plane at the control one."""
        if 17 in values:
            self._control_endpoint(session, _Fteid(-1, struct.unpack("!I", values[17])[0], (control,)))
        if 16 in values:
            bearer = session.bearer(session.default_ebi)
            self._user_endpoint(bearer, _Fteid(-1, struct.unpack("!I", values[16])[0], (user,)), "Gn", uplink)


def read_capture(path: Path, utc_offset_s: int = 9 * 3600, engine: str = "fast") -> CaptureContents:
    """Sessions and their bytes per JST day (``utc_offset_s``) from a capture.

    ``engine``: ``fast`` (:mod:`gateway.pcap_fast`: G-PDUs found and counted in bulk with numpy)
    or ``reference`` (every packet one by one, here); both give the same contents.

    Raises:
        CaptureReadError: If the file is neither a pcap nor a pcapng capture, or a link type is not read.
    """
    if engine == "fast":
        from gateway.pcap_fast import read_capture_fast

        return read_capture_fast(path, utc_offset_s)
    if engine != "reference":
        raise ValueError(f"unknown capture reader {engine!r}")
    contents = CaptureContents()
    core = Core(contents, utc_offset_s)
    data = open_capture(path)
    try:
        return read_frames(path, data, core)
    finally:
        if not isinstance(data, bytes):
            data.close()


def read_frames(path: Path, data: Any, core: Core) -> CaptureContents:
    """Every record of a capture's bytes, one by one, into ``core``; its finished contents."""
    contents = core.contents
    fragments = Fragments(contents.skipped)
    for position, record in enumerate(frames(path, data)):
        contents.packets += 1
        if isinstance(record, str):
            contents.skipped[record] += 1
            continue
        core.user.position = position
        take_frame(core, fragments, *record)
    fragments.finish()
    return finish(contents)


def take_frame(core: Core, fragments: Fragments, instant: int, link: int, frame: bytes) -> None:
    """One captured frame, through the link layer, outer IP and UDP, to GTP-U, GTP-C or PFCP."""
    skipped = core.skipped
    network = network_packet(link, frame)
    if isinstance(network, str):
        skipped[network] += 1
        return
    datagram = _outer_udp(instant, *network, fragments)
    if datagram is None:
        return
    if isinstance(datagram, str):
        skipped[datagram] += 1
        return
    source, destination, sport, dport, payload = datagram
    if dport == GTPU_PORT or sport == GTPU_PORT:
        _gtpu(core, instant, destination, payload)
    elif dport == PFCP_PORT or sport == PFCP_PORT:
        core.pfcp(instant, source, destination, payload)
    elif dport == GTPC_PORT or sport == GTPC_PORT:
        version = payload[0] >> 5 if payload else 0
        if version == 2:
            core.v2(instant, source, destination, payload)
        elif version == 1 and payload[0] & 0x10:
            core.v1(instant, source, destination, payload)
        else:
            skipped["malformed GTP-C header"] += 1
    else:
        skipped["UDP port other than GTP"] += 1


def finish(contents: CaptureContents) -> CaptureContents:
    """The sessions to report: rejected ones dropped, those without a subscriber counted as unattributed."""
    kept = []
    for session in contents.sessions:
        if session.rejected:
            continue
        if not session.imsi:  # a PFCP session without a User ID: its bytes have no subscriber
            volume = sum(session.up.values()) + sum(session.down.values())
            if volume:
                contents.unattributed[(f"pfcp-session-{session.start_us}", 0)] += volume
                contents.unattributed_packets += session.packets
            contents.unattributed_sessions += 1
            continue
        kept.append(session)
    contents.sessions = kept
    return contents


def _gtpu(core: Core, instant: int, destination: bytes, payload: bytes) -> None:
    """One GTP-U message (TS 29.281 §5.1): a G-PDU is counted, anything else is skipped by its type."""
    skipped = core.skipped
    if len(payload) < 8 or payload[0] >> 5 != 1 or not payload[0] & 0x10:
        skipped["malformed GTP-U header"] += 1
        return
    flags, kind, length, teid = struct.unpack_from("!BBHI", payload)
    end = 8 + length
    if len(payload) < end:
        skipped["truncated G-PDU"] += 1
        return
    if kind != 255:
        skipped["GTP-U message other than G-PDU"] += 1
        return
    start = 8
    if flags & 0x07:
        start = 12
        if end < start:
            skipped["truncated G-PDU"] += 1
            return
        if flags & 0x04:  # extension headers: each a length in 4-octet units, its content, the next type
            following = payload[11]
            while following:
                if start >= end or payload[start] == 0:
                    skipped["malformed GTP-U extension header"] += 1
                    return
                start += payload[start] * 4
                if start > end:
                    skipped["malformed GTP-U extension header"] += 1
                    return
                following = payload[start - 1]
    core.gpdu(instant, destination, teid, payload[start:end])
