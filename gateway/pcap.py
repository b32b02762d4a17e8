"""GTP captures of the mobile gateway's core side: what Wireshark shows an engineer.

The capture is the S5/S8 interface between the serving gateway (SGW) and the mobile gateway in its
PGW role, as raw IPv4 packets (pcap link type 101):

* GTPv2-C (3GPP TS 29.274, UDP port 2123): per session a Create Session Request (§7.2.1: IMSI,
  MSISDN, MEI, RAT type, the SGW's control F-TEID, APN ``sakura``, PDN address allocation, bearer
  context with the SGW's user-plane F-TEID) and its Response (§7.2.2: cause, the PGW's control
  F-TEID, PDN address, bearer context with the PGW's user-plane F-TEID), then a Delete Session
  Request (§7.2.9.1) and Response (§7.2.10.1) when the session ends.
* GTP-U (3GPP TS 29.281 §5.1, UDP port 2152): G-PDUs (message type 255) whose T-PDU is the
  device's IPv4/UDP packet. Uplink goes to the PGW's user TEID, downlink to the SGW's.

The metered volume of a G-PDU is its T-PDU, the device's whole IPv4 packet (TS 32.251/32.298
data volume; EVENTS.md): a session's traffic records of ``u`` bytes up and ``d`` down become T-PDUs
of at most :data:`MAX_TPDU` bytes each (and at least :data:`MIN_TPDU`, an IPv4 and a UDP header)
whose IPv4 total lengths sum to exactly ``u`` and ``d``; ``mgwsim meter-pcap`` reads them back the
same way, and so does tshark's ``ip.len`` of the inner header.

Each message type is built once with scapy (:func:`templates`), with sentinel values where the
per-session fields go; the writer copies the template bytes and patches TEIDs, sequence numbers,
subscriber identities, addresses, lengths and IPv4 header checksums in place. The full-size
G-PDUs of one transfer are identical but for their timestamps, so they are written as one numpy
block. Output depends only on the sessions given: the same run writes the same bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np

SGW_ADDRESS: Final = "10.255.0.1"
"""The serving gateway's S5/S8 address (GTP-C and GTP-U)."""
PGW_ADDRESS: Final = "10.255.0.2"
"""The mobile gateway's S5/S8 address."""
SERVERS: Final = {"closed": "10.0.0.10", "internet": "203.0.113.10"}
"""Where a device's traffic goes: a server in the closed network, or on the internet (TEST-NET-3)."""
GTPC_PORT: Final = 2123
GTPU_PORT: Final = 2152
DEVICE_PORT: Final = 40000
SERVER_PORT: Final = 9
"""The discard port (RFC 863): the payload is opaque bytes to any dissector."""
MAX_TPDU: Final = 1500
"""Bytes of a full-size T-PDU: a 1,500-byte IPv4 packet (the Ethernet MTU)."""
MIN_TPDU: Final = 28
"""Bytes of the smallest T-PDU: an IPv4 header and a UDP header, no payload."""
APN: Final = "sakura"
RAT_EUTRAN: Final = 6
EPS_BEARER_ID: Final = 5
CAUSE_ACCEPTED: Final = 16
PCAP_HEADER: Final = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
"""pcap global header: microsecond timestamps, link type 101 (raw IP)."""

# sentinels placed in the templates and found again to learn the patch offsets
_IMSI, _MSISDN, _MEI = "999999999999991", "999999999999992", "999999999999993"
_UE = "192.0.2.254"
_TEID = {"sgw_c": 0xA1A2A3A4, "sgw_u": 0xB1B2B3B4, "pgw_c": 0xC1C2C3C4, "pgw_u": 0xD1D2D3D4, "header": 0xE1E2E3E4}
_SEQ = 0xF1F2F3


class CaptureError(Exception):
    """A capture that cannot be written (one-line message)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """Bytes a session carried, stamped at an instant (one traffic record of the event log)."""

    ts_us: int
    up: int
    down: int


@dataclass(frozen=True, slots=True)
class CaptureSession:
    """One data session as the capture shows it.

    Attributes:
        number: Its number in the capture (makes its TEIDs and sequence numbers).
        imsi: Subscriber identity (15 digits).
        msisdn: Subscriber number (15 digits).
        mei: Device identity (the IMEI, 15 digits).
        address: The device's IPv4 address (PDN address allocation).
        route: ``closed`` or ``internet`` (where its traffic goes).
        start_us: Epoch microseconds the session was created.
        end_us: Epoch microseconds it was deleted.
        transfers: Its traffic, in time order.
    """

    number: int
    imsi: str
    msisdn: str
    mei: str
    address: str
    route: str
    start_us: int
    end_us: int
    transfers: tuple[Transfer, ...]

    def teids(self) -> dict[str, int]:
        """The session's tunnel endpoint identifiers (SGW/PGW, control/user)."""
        base = (self.number % 0x0FFFFFFF) + 1
        return {
            "sgw_c": 0x10000000 | base,
            "pgw_c": 0x20000000 | base,
            "sgw_u": 0x30000000 | base,
            "pgw_u": 0x40000000 | base,
        }


def tbcd(digits: str, length: int) -> bytes:
    """Telephony BCD (TS 29.274 §8.3): two digits a byte, low nibble first, padded with 0xF."""
    nibbles = [int(digit) for digit in digits] + [0xF] * (2 * length - len(digits))
    return bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, 2 * length, 2))


@dataclass(frozen=True)
class Template:
    """A message's bytes and where its per-session fields are."""

    data: bytes
    offsets: dict[str, int]


@cache
def templates() -> dict[str, Template]:
    """Each message type built once with scapy, with the offsets of its patchable fields."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.contrib.gtp_v2 import (
        IE_APN,
        IE_FTEID,
        IE_IMSI,
        IE_MEI,
        IE_MSISDN,
        IE_PAA,
        IE_RAT,
        GTPHeader,
        GTPV2CreateSessionRequest,
        GTPV2CreateSessionResponse,
        GTPV2DeleteSessionRequest,
        GTPV2DeleteSessionResponse,
        IE_BearerContext,
        IE_Cause,
        IE_EPSBearerID,
    )
    from scapy.layers.inet import IP, UDP

    def control(source: str, destination: str, message_type: int, body: object) -> bytes:
        outer = IP(src=source, dst=destination, id=0, flags=0) / UDP(sport=GTPC_PORT, dport=GTPC_PORT, chksum=0)
        header = GTPHeader(P=0, T=1, MP=0, teid=_TEID["header"], seq=_SEQ, gtp_type=message_type)
        return bytes(outer / header / body)

    def fteid(interface: int, key: str, address: str, instance: int) -> object:
        return IE_FTEID(ipv4_present=1, InterfaceType=interface, GRE_Key=_TEID[key], ipv4=address, instance=instance)

    messages = {
        "create_request": control(
            SGW_ADDRESS,
            PGW_ADDRESS,
            32,
            GTPV2CreateSessionRequest(
                IE_list=[
                    IE_IMSI(IMSI=_IMSI),
                    IE_MSISDN(digits=_MSISDN),
                    IE_MEI(MEI=_MEI),
                    IE_RAT(RAT_type=RAT_EUTRAN),
                    fteid(6, "sgw_c", SGW_ADDRESS, 0),  # S5/S8 SGW GTP-C
                    IE_APN(APN=APN),
                    IE_PAA(PDN_type=1, ipv4=_UE),
                    IE_BearerContext(
                        IE_list=[
                            IE_EPSBearerID(EBI=EPS_BEARER_ID),
                            fteid(4, "sgw_u", SGW_ADDRESS, 2),
                        ]  # S5/S8 SGW GTP-U
                    ),
                ]
            ),
        ),
        "create_response": control(
            PGW_ADDRESS,
            SGW_ADDRESS,
            33,
            GTPV2CreateSessionResponse(
                IE_list=[
                    IE_Cause(Cause=CAUSE_ACCEPTED),
                    fteid(7, "pgw_c", PGW_ADDRESS, 1),  # S5/S8 PGW GTP-C
                    IE_PAA(PDN_type=1, ipv4=_UE),
                    IE_BearerContext(
                        IE_list=[
                            IE_EPSBearerID(EBI=EPS_BEARER_ID),
                            IE_Cause(Cause=CAUSE_ACCEPTED),
                            fteid(5, "pgw_u", PGW_ADDRESS, 2),  # S5/S8 PGW GTP-U
                        ]
                    ),
                ]
            ),
        ),
        "delete_request": control(
            SGW_ADDRESS, PGW_ADDRESS, 36, GTPV2DeleteSessionRequest(IE_list=[IE_EPSBearerID(EBI=EPS_BEARER_ID)])
        ),
        "delete_response": control(
            PGW_ADDRESS, SGW_ADDRESS, 37, GTPV2DeleteSessionResponse(IE_list=[IE_Cause(Cause=CAUSE_ACCEPTED)])
        ),
        "gpdu": bytes(
            IP(src=SGW_ADDRESS, dst=PGW_ADDRESS, id=0, flags=0)
            / UDP(sport=GTPU_PORT, dport=GTPU_PORT, chksum=0)
            / GTP_U_Header(teid=_TEID["header"], gtp_type=255)
            / IP(src=_UE, dst=SERVERS["closed"], id=0, flags=0)
            / UDP(sport=DEVICE_PORT, dport=SERVER_PORT, chksum=0)
        ),
    }
    found: dict[str, Template] = {}
    sentinels = {
        "imsi": tbcd(_IMSI, 8),
        "msisdn": tbcd(_MSISDN, 8),
        "mei": tbcd(_MEI, 8),
        "ue": ipaddress.IPv4Address(_UE).packed,
        "seq": _SEQ.to_bytes(3, "big"),
        **{f"teid_{name}": value.to_bytes(4, "big") for name, value in _TEID.items()},
    }
    for name, data in messages.items():
        offsets = {}
        for field, sentinel in sentinels.items():
            position = data.find(sentinel)
            if position >= 0:
                offsets[field] = position
        found[name] = Template(data, offsets)
    return found


def _checksum(header: bytes | bytearray) -> int:
    """The IPv4 header checksum (RFC 791) of a header whose checksum field is zero."""
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class CaptureWriter:
    """Writes sessions to a pcap stream, message by message from the templates."""

    def __init__(self, stream: BinaryIO) -> None:
        """Write the pcap header to ``stream``."""
        self.stream = stream
        self.packets = 0
        self.templates = templates()
        stream.write(PCAP_HEADER)

    def _record(self, ts_us: int, packet: bytes | bytearray) -> None:
        seconds, micros = divmod(ts_us, 1_000_000)
        self.stream.write(struct.pack("<IIII", seconds, micros, len(packet), len(packet)))
        self.stream.write(packet)
        self.packets += 1

    def _control(self, name: str, fields: _SessionFields, header_teid: int, seq: int) -> bytearray:
        template = self.templates[name]
        packet = bytearray(template.data)
        offsets = template.offsets
        struct.pack_into("!I", packet, offsets["teid_header"], header_teid)
        packet[offsets["seq"] : offsets["seq"] + 3] = (seq & 0xFFFFFF).to_bytes(3, "big")
        for field, value in fields.patches.items():
            where = offsets.get(field)
            if where is not None:
                packet[where : where + len(value)] = value
        return packet

    def _gpdu(self, fields: _SessionFields, uplink: bool, tpdu: int) -> bytearray:
        """One G-PDU carrying a T-PDU (an IPv4/UDP packet) of ``tpdu`` bytes."""
        packet = bytearray(fields.gpdu_up if uplink else fields.gpdu_down)
        packet.extend(bytes(tpdu - MIN_TPDU))
        total = len(packet)
        # outer IPv4 (20) + UDP (8) + GTP-U (8) + inner IPv4 (20) + UDP (8): lengths, then checksums
        struct.pack_into("!H", packet, 2, total)
        struct.pack_into("!H", packet, 10, _checksum(packet[0:20]))
        struct.pack_into("!H", packet, 24, total - 20)
        struct.pack_into("!H", packet, 30, total - 36)
        struct.pack_into("!H", packet, 38, total - 36)
        struct.pack_into("!H", packet, 46, _checksum(packet[36:56]))
        struct.pack_into("!H", packet, 60, tpdu - 20)
        return packet

    def _transfer(self, fields: _SessionFields, ts_us: int, uplink: bool, volume: int) -> int:
        """G-PDUs whose T-PDUs sum to ``volume`` bytes, from ``ts_us`` on, 1 µs apart; the next free instant."""
        full, tails = tpdu_sizes(volume)
        if full:  # identical packets but for their timestamps: one block of records, written at once
            packet = np.frombuffer(bytes(self._gpdu(fields, uplink, MAX_TPDU)), dtype=np.uint8)
            instants = ts_us + np.arange(full, dtype=np.int64)
            header = np.empty((full, 4), dtype="<u4")
            header[:, 0] = instants // 1_000_000
            header[:, 1] = instants % 1_000_000
            header[:, 2] = header[:, 3] = len(packet)
            block = np.empty((full, 16 + len(packet)), dtype=np.uint8)
            block[:, :16] = header.view(np.uint8)
            block[:, 16:] = packet
            self.stream.write(block.reshape(-1).data)
            self.packets += full
        for offset, size in enumerate(tails):
            self._record(ts_us + full + offset, self._gpdu(fields, uplink, size))
        return ts_us + full + len(tails)

    def write(self, session: CaptureSession) -> None:
        """All packets of one session, in time order."""
        fields = _SessionFields.of(session, self.templates["gpdu"].data)
        teids = fields.teids
        sequence = 2 * session.number
        self._record(session.start_us, self._control("create_request", fields, 0, sequence))
        self._record(session.start_us + 1_000, self._control("create_response", fields, teids["sgw_c"], sequence))
        for transfer in session.transfers:
            at = self._transfer(fields, transfer.ts_us, True, transfer.up)
            self._transfer(fields, at, False, transfer.down)
        self._record(session.end_us, self._control("delete_request", fields, teids["pgw_c"], sequence + 1))
        self._record(session.end_us + 1_000, self._control("delete_response", fields, teids["sgw_c"], sequence + 1))


def tpdu_sizes(volume: int) -> tuple[int, list[int]]:
    """How ``volume`` bytes are cut into T-PDUs: so many of :data:`MAX_TPDU`, then the rest.

    Every T-PDU holds :data:`MIN_TPDU` to :data:`MAX_TPDU` bytes; a rest too small for a packet of
    its own shares the last full one's bytes (1,500 + rest = (1,472 + rest) + 28).

    Raises:
        CaptureError: For 1 to 27 bytes, which no IPv4/UDP packet can carry.
    """
    full, rest = divmod(volume, MAX_TPDU)
    if rest == 0:
        return full, []
    if rest >= MIN_TPDU:
        return full, [rest]
    if full:
        return full - 1, [MAX_TPDU - MIN_TPDU + rest, MIN_TPDU]
    raise CaptureError(f"a transfer of {volume} bytes is smaller than one IPv4/UDP packet ({MIN_TPDU} bytes)")


_SGW_PACKED: Final = ipaddress.IPv4Address(SGW_ADDRESS).packed
_PGW_PACKED: Final = ipaddress.IPv4Address(PGW_ADDRESS).packed
_SERVERS_PACKED: Final = {route: ipaddress.IPv4Address(address).packed for route, address in SERVERS.items()}


@dataclass(frozen=True)
class _SessionFields:
    """A session's encoded fields, computed once: control-plane patches and G-PDU headers."""

    teids: dict[str, int]
    patches: dict[str, bytes]
    gpdu_up: bytes
    gpdu_down: bytes

    @classmethod
    def of(cls, session: CaptureSession, gpdu: bytes) -> _SessionFields:
        teids = session.teids()
        device = ipaddress.IPv4Address(session.address).packed
        server = _SERVERS_PACKED.get(session.route, _SERVERS_PACKED["closed"])
        patches = {
            "imsi": tbcd(session.imsi, 8),
            "msisdn": tbcd(session.msisdn, 8),
            "mei": tbcd(session.mei, 8),
            "ue": device,
            **{f"teid_{key}": value.to_bytes(4, "big") for key, value in teids.items()},
        }
        headers = []
        for uplink in (True, False):
            header = bytearray(gpdu)
            header[12:16], header[16:20] = (_SGW_PACKED, _PGW_PACKED) if uplink else (_PGW_PACKED, _SGW_PACKED)
            header[10:12] = b"\0\0"
            struct.pack_into("!I", header, 32, teids["pgw_u" if uplink else "sgw_u"])
            header[48:52], header[52:56] = (device, server) if uplink else (server, device)
            header[46:48] = b"\0\0"
            ports = (DEVICE_PORT, SERVER_PORT) if uplink else (SERVER_PORT, DEVICE_PORT)
            struct.pack_into("!HH", header, 56, *ports)
            headers.append(bytes(header))
        return cls(teids, patches, headers[0], headers[1])


def write_capture(sessions: Iterable[CaptureSession], path: Path) -> int:
    """Write a capture of ``sessions`` to ``path`` atomically; return the number of packets."""
    from metering.atomic import AtomicWriter

    with AtomicWriter(path) as temporary, temporary.open("wb") as stream:
        return write_capture_to(sessions, stream)


def write_capture_to(sessions: Iterable[CaptureSession], stream: BinaryIO) -> int:
    """Write a capture of ``sessions`` to an open binary stream; return the number of packets."""
    writer = CaptureWriter(stream)
    for session in sessions:
        writer.write(session)
    return int(writer.packets)
