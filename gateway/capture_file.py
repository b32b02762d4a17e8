"""Capture files and link layers: the network-layer packets of a pcap or pcapng file.

Containers:

* **classic pcap** (microsecond or nanosecond timestamps, either byte order);
* **pcapng** (IETF draft-ietf-opsawg-pcapng): Section Header, Interface Description, Enhanced,
  Simple and (obsolete) Packet Blocks; several sections, each with its own byte order, and several
  interfaces, each with its own link type and timestamp resolution (``if_tsresol``) and offset
  (``if_tsoffset``). Other blocks (statistics, name resolution, custom) are skipped by their length.

Link types (tcpdump.org's LINKTYPE values): 0 loopback/null (BSD address family in the capturing
host's byte order), 1 Ethernet with any number of 802.1Q/802.1ad tags, 101 raw IP (IPv4 or IPv6 by
the version nibble), 228 raw IPv4, 229 raw IPv6, 113 Linux cooked (SLL, ``tcpdump -i any``), 276
Linux cooked v2 (SLL2).

A regular file is mapped rather than read, so a capture of gigabytes is not held in memory.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
VLAN_TAGS: Final = (0x8100, 0x88A8, 0x9100)
"""802.1Q, 802.1ad (QinQ) and the older QinQ tag ethertypes."""
LINK_TYPES: Final = {0: "null", 1: "ethernet", 101: "raw", 113: "sll", 228: "ipv4", 229: "ipv6", 276: "sll2"}
"""The link types this reader decodes, by their LINKTYPE number."""
PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
"""Classic pcap magic numbers: byte order and timestamp units per second."""
PCAPNG_SHB: Final = 0x0A0D0D0A
"""The block type of a pcapng Section Header Block (a palindrome: the same in both byte orders)."""
PCAPNG_PACKETS: Final = (2, 3, 6)
"""pcapng block types that carry a packet: obsolete Packet, Simple Packet, Enhanced Packet."""
_PCAPNG_BOM: Final = 0x1A2B3C4D
_NULL_IPV6: Final = (24, 28, 30)
"""BSD address families of IPv6 (NetBSD/OpenBSD, FreeBSD, macOS)."""


class CaptureReadError(Exception):
    """The file is not a readable pcap or pcapng capture at all (one-line message)."""


Frame = tuple[int, int, bytes]
"""``(epoch microseconds, link type, frame bytes)`` of one captured packet."""


def open_capture(path: Path) -> bytes | mmap.mmap:
    """The bytes of a capture file: mapped when it is a regular file, read otherwise (a pipe).

    Raises:
        CaptureReadError: If the file cannot be opened.
    """
    try:
        with path.open("rb") as stream:
            status = os.fstat(stream.fileno())
            if stat.S_ISREG(status.st_mode) and status.st_size:
                return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            return stream.read()
    except IsADirectoryError:
        raise CaptureReadError(f"{path}: is a folder, not a capture file") from None
    except FileNotFoundError:
        raise CaptureReadError(f"{path}: no such file") from None


def frames(path: Path, data: bytes | mmap.mmap) -> Iterator[Frame | str]:
    """Every record of a capture: a :data:`Frame`, or the reason a record could not be read.

    Raises:
        CaptureReadError: If the data is neither pcap nor pcapng.
    """
    if len(data) < 24:
        raise CaptureReadError(f"{path}: not a pcap or pcapng file (shorter than a file header)")
    magic = bytes(data[:4])
    if magic in PCAP_MAGICS:
        return _pcap_frames(path, data, *PCAP_MAGICS[magic])
    if struct.unpack_from("<I", data, 0)[0] == PCAPNG_SHB:
        return _pcapng_frames(path, data)
    raise CaptureReadError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")


def _pcap_frames(path: Path, data: bytes | mmap.mmap, order: str, units: int) -> Iterator[Frame | str]:
    link = struct.unpack_from(f"{order}I", data, 20)[0] & 0x0FFFFFFF
    if link not in LINK_TYPES:
        raise CaptureReadError(f"{path}: link type {link} is not read (read: {link_names()})")
    position = 24
    record = struct.Struct(f"{order}IIII")
    size = len(data)
    while position < size:
        if position + 16 > size:
            yield "truncated record header"
            return
        seconds, fraction, captured, original = record.unpack_from(data, position)
        position += 16
        instant = seconds * 1_000_000 + fraction * 1_000_000 // units
        if position + captured > size:
            yield "truncated packet"
            return
        frame = bytes(data[position : position + captured])
        position += captured
        if captured < original:
            yield "packet cut by the capture's snap length"
            continue
        yield instant, link, frame


def link_names() -> str:
    """The link types read, in words for messages."""
    return ", ".join(f"{number} {name}" for number, name in sorted(LINK_TYPES.items()))


def _resolution(value: int) -> int:
    """Timestamp units per second of an ``if_tsresol`` option value."""
    return int(2 ** (value & 0x7F) if value & 0x80 else 10 ** (value & 0x7F))


class Interface(NamedTuple):
    """What an Interface Description Block says about the packets captured on it."""

    link: int
    """The link type (LINKTYPE number)."""
    snap: int
    """The snap length (0: none)."""
    units: int
    """Timestamp units per second (``if_tsresol``; default microseconds)."""
    offset: int
    """Seconds added to every timestamp (``if_tsoffset``)."""


def interface_block(body: bytes, order: str) -> Interface:
    """The :class:`Interface` an Interface Description Block's body describes."""
    link, _, snap = struct.unpack_from(f"{order}HHI", body, 0)
    units, offset = 1_000_000, 0
    position = 8
    while position + 4 <= len(body):
        code, length = struct.unpack_from(f"{order}HH", body, position)
        value = body[position + 4 : position + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:
            units = _resolution(value[0])
        elif code == 14 and length >= 8:
            offset = struct.unpack_from(f"{order}q", value)[0]
        position += 4 + (length + 3) // 4 * 4
    return Interface(link, snap, units, offset)


def section_order(path: Path, data: bytes | mmap.mmap, position: int) -> str:
    """The byte order of the pcapng section whose Section Header Block starts at ``position``.

    Raises:
        CaptureReadError: If the byte-order magic is neither order's.
    """
    magic = struct.unpack_from("<I", data, position + 8)[0]
    order = "<" if magic == _PCAPNG_BOM else ">"
    if struct.unpack_from(f"{order}I", data, position + 8)[0] != _PCAPNG_BOM:
        raise CaptureReadError(f"{path}: damaged pcapng section header at byte {position}")
    return order


def packet_block(kind: int, body: bytes, order: str, interfaces: list[Interface]) -> Frame | str:
    """The frame of an Enhanced (6), Simple (3) or obsolete (2) Packet Block, or why there is none."""
    if kind == 3:  # Simple Packet Block: interface 0, no timestamp
        if not interfaces or len(body) < 4:
            return "pcapng packet without an interface"
        (original,) = struct.unpack_from(f"{order}I", body, 0)
        link, snap, _, _ = interfaces[0]
        captured = min(original, snap or original, len(body) - 4)
        frame, stamp, units, offset = body[4 : 4 + captured], 0, 1_000_000, 0
    else:
        if len(body) < 20:
            return "truncated pcapng packet"
        if kind == 6:
            index, high, low, captured, original = struct.unpack_from(f"{order}IIIII", body, 0)
        else:  # Packet Block (obsolete): 16-bit interface id and drops count
            index, _, high, low, captured, original = struct.unpack_from(f"{order}HHIIII", body, 0)
        if index >= len(interfaces):
            return "pcapng packet without an interface"
        link, _, units, offset = interfaces[index]
        frame = body[20 : 20 + captured]
        if len(frame) < captured:
            return "truncated packet"
        stamp = (high << 32) | low
    if link not in LINK_TYPES:
        return f"link type {link} is not read"
    if len(frame) < original:
        return "packet cut by the capture's snap length"
    return offset * 1_000_000 + stamp * 1_000_000 // units, link, frame


def block_record(kind: int, body: bytes, order: str, interfaces: list[Interface]) -> Frame | str | None:
    """A pcapng block as a record of the capture: a packet's frame or why there is none; ``None`` for no record.

    An Interface Description Block is added to ``interfaces`` (a record only when its link type
    is not read); section headers, statistics, name resolution and custom blocks carry no packet.
    """
    if kind == 1:
        interface = interface_block(body, order)
        interfaces.append(interface)
        return f"interface with link type {interface.link} (not read)" if interface.link not in LINK_TYPES else None
    if kind in PCAPNG_PACKETS:
        return packet_block(kind, body, order, interfaces)
    return None


def _pcapng_frames(path: Path, data: bytes | mmap.mmap) -> Iterator[Frame | str]:
    position, size = 0, len(data)
    order = "<"
    interfaces: list[Interface] = []
    while position < size:
        if position + 12 > size:
            yield "truncated pcapng block"
            return
        kind = struct.unpack_from("<I", data, position)[0]
        if kind == PCAPNG_SHB:  # a new section: its byte order, its own interfaces
            order = section_order(path, data, position)
            interfaces = []
        kind, length = struct.unpack_from(f"{order}II", data, position)
        if length < 12 or length % 4 or position + length > size:
            yield "truncated pcapng block"
            return
        record = block_record(kind, bytes(data[position + 8 : position + length - 4]), order, interfaces)
        position += length
        if record is not None:
            yield record


def network_packet(link: int, frame: bytes) -> tuple[int, bytes] | str:
    """``(IP version, packet)`` carried by a frame of link type ``link``, or why there is none."""
    if link in (101, 228, 229):
        if not frame:
            return "empty frame"
        version = frame[0] >> 4
        if (link == 228 and version != 4) or (link == 229 and version != 6) or version not in (4, 6):
            return "outer packet not IP"
        return version, frame
    if link == 1:
        if len(frame) < 14:
            return "truncated Ethernet header"
        kind, offset = struct.unpack_from("!H", frame, 12)[0], 14
        while kind in VLAN_TAGS:
            if len(frame) < offset + 4:
                return "truncated VLAN tag"
            kind, offset = struct.unpack_from("!H", frame, offset + 2)[0], offset + 4
        return _by_ethertype(kind, frame[offset:])
    if link == 113:
        if len(frame) < 16:
            return "truncated Linux cooked header"
        return _by_ethertype(struct.unpack_from("!H", frame, 14)[0], frame[16:])
    if link == 276:
        if len(frame) < 20:
            return "truncated Linux cooked v2 header"
        return _by_ethertype(struct.unpack_from("!H", frame, 0)[0], frame[20:])
    if link == 0:
        if len(frame) < 4:
            return "truncated loopback header"
        family = struct.unpack_from("<I", frame, 0)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", frame, 0)[0]
        if family == 2:
            return 4, frame[4:]
        if family in _NULL_IPV6:
            return 6, frame[4:]
        return "outer packet not IP"
    return f"link type {link} is not read"


def _by_ethertype(kind: int, payload: bytes) -> tuple[int, bytes] | str:
    if kind == ETHERTYPE_IPV4:
        return 4, payload
    if kind == ETHERTYPE_IPV6:
        return 6, payload
    return "outer packet not IP"
