"""The fast capture reader: G-PDUs found and counted in bulk with numpy, everything else one by one.

The obvious reader (:func:`gateway.pcap_reader.read_capture` with ``engine="reference"``) takes
every packet through Python. Here a capture is read in chunks of at most :data:`CHUNK` records
and :data:`CHUNK_BYTES` bytes: the record offsets are found by walking the record headers (a
classic pcap's 16-byte headers, a pcapng file's blocks), and the fixed fields of every frame —
link layer, outer IPv4 header, UDP ports, GTP-U flags and TEID, the inner IP length — are gathered
with numpy over the memory map. The plain G-PDUs (outer IPv4 without options or fragments, GTP-U
with at most one extension header, a whole inner IPv4 or IPv6 packet) are counted in bulk; every
other record (control messages, fragments, outer IPv6, pcapng blocks the columns cannot carry,
anything unusual) goes, in capture order, through the reference's own code, which also keeps the
tunnel table. Each change of that table is logged with its record number, so a G-PDU counted in
bulk is attributed to the tunnel that held at its record, exactly as the reference would. Memory
is bounded by the chunk, not the capture. Property tests demand the same contents from both
readers, on clean and randomly damaged pcap and pcapng files.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.capture_file import (
    LINK_TYPES,
    PCAP_MAGICS,
    PCAPNG_SHB,
    Frame,
    Interface,
    block_record,
    link_names,
    open_capture,
    packet_block,
    section_order,
)
from gateway.pcap_reader import (
    GTPC_PORT,
    GTPU_PORT,
    PFCP_PORT,
    CaptureContents,
    Core,
    Fragments,
    LegCounts,
    Tunnel,
    _closed,
    finish,
    read_frames,
    take_frame,
)
from metering.collector import paused_collector

CHUNK: Final = 1 << 20
"""Records read, classified and counted at a time (at most)."""
CHUNK_BYTES: Final = 16 << 20
"""Bytes of capture read at a time (at most)."""
RELEASE_BYTES: Final = 64 << 20
"""The pages of what was read leave memory in spans of this many bytes."""
SMALLEST: Final = 4096
"""Captures smaller than this are read one by one (the bulk gathers need room past a frame's end)."""
IntArray = npt.NDArray[np.int64]
UNKNOWN: Final = "G-PDU for an unknown tunnel (address, TEID)"


@dataclass
class _Records:
    """One chunk of capture records: the packets as columns, the rest as items taken one by one.

    ``odd`` holds, with their record numbers, the records the columns cannot carry: frames of
    packet blocks read one by one, and the reasons records could not be read.
    """

    index: IntArray
    ts: IntArray
    start: IntArray
    length: IntArray
    link: IntArray
    odd: list[tuple[int, Frame | str]]


def _pcap_chunks(
    data: Any, view: npt.NDArray[np.uint8], order: str, units: int, link: int
) -> Generator[_Records, None, None]:
    """Classic pcap: record positions by walking the 16-byte record headers, fields gathered after.

    Records of equal size follow each other in bulk transfers (full-size G-PDUs): after a few,
    the walk predicts the next ones' positions and checks their lengths with numpy at once.
    """
    caplen = struct.Struct(f"{order}I").unpack_from
    size = len(data)
    u32 = np.dtype(f"{order}u4")
    position, number = 24, 0
    while position < size:
        segments: list[IntArray] = []
        singles: list[int] = []
        append = singles.append
        bad: list[str] = []  # at the chunk's end
        taken, previous, run, reach = 0, -1, 0, 64
        limit = min(size, position + CHUNK_BYTES)
        while position < limit and taken < CHUNK:
            if position + 16 > size:
                bad.append("truncated record header")
                position = size
                break
            captured = caplen(data, position + 8)[0]
            if position + 16 + captured > size:
                bad.append("truncated packet")
                position = size
                break
            append(position)
            taken += 1
            step = 16 + captured
            position += step
            run = run + 1 if captured == previous else 0
            previous = captured
            while run >= 3:  # predict the run's next records (this captured length), while predictions hold
                end = min(limit, position + step * (CHUNK - taken))
                held, reach, broken = _run_ahead(view, u32, position, step, end, reach, 8, (captured,))
                if held is None:
                    break
                if len(held):
                    segments += [np.array(singles, dtype=np.int64), held]
                    singles.clear()
                    taken += len(held)
                    position += len(held) * step
                if broken:
                    run = 0
        segments.append(np.array(singles, dtype=np.int64))
        heads = np.concatenate(segments)
        fields = _gather(view, heads, 16).view(u32).astype(np.int64)
        seconds, fraction, captured_, original = fields[:, 0], fields[:, 1], fields[:, 2], fields[:, 3]
        count = len(heads)
        index = number + np.arange(count, dtype=np.int64)
        keep = captured_ >= original
        odd: list[tuple[int, Frame | str]] = [(position_, _CUT) for position_ in index[~keep].tolist()]
        odd += [(number + count + k, reason) for k, reason in enumerate(bad)]
        yield _Records(
            index=index[keep],
            ts=(seconds * 1_000_000 + fraction * 1_000_000 // units)[keep],
            start=(heads + 16)[keep],
            length=captured_[keep],
            link=np.full(int(keep.sum()), link, dtype=np.int64),
            odd=odd,
        )
        number += count + len(bad)


def _run_ahead(
    view: npt.NDArray[np.uint8],
    u32: np.dtype[Any],
    position: int,
    step: int,
    limit: int,
    reach: int,
    offset: int,
    expected: tuple[int, ...],
) -> tuple[IntArray | None, int, bool]:
    """The records of a run of equal sizes predicted from ``position``, checked at once with numpy.

    Up to ``reach`` records of ``step`` bytes that end by ``limit`` are predicted; a prediction
    holds where the 32-bit words at ``offset`` in the record are ``expected`` (a length, a block
    type). Returns the positions that held (up to the first that did not; ``None`` if fewer than
    two could be predicted), the next reach (twice as far while predictions hold, back to 64 when
    one fails) and whether the run broke.
    """
    ahead = min(reach, (limit - position) // step)
    if ahead < 2:
        return None, reach, False
    # the words of every predicted record, read in place: a strided view, no index arrays
    found = np.ndarray((ahead, len(expected)), dtype=u32, buffer=view, offset=position + offset, strides=(step, 4))
    wrong = (found != expected).any(axis=1)
    good = int(wrong.argmax()) if wrong.any() else ahead
    predicted = position + step * np.arange(good, dtype=np.int64)
    if good < ahead:
        return predicted, 64, True
    return predicted, min(reach * 2, 1 << 16), False


_CUT: Final = "packet cut by the capture's snap length"
_NEVER: Final = 1 << 62
"""A record number no capture reaches."""


_EPB_FIELDS: Final = 28
"""Bytes of an Enhanced Packet Block's fixed fields: type, length, interface, timestamp (2), captured, original."""
_WIDEST_UNITS: Final = 10**12
"""Interfaces with timestamp units up to this many per second have their timestamps converted in bulk."""
_LATEST_SECOND: Final = 1 << 42
"""Timestamps (and offsets) beyond this many seconds are converted one by one, in Python's integers."""


def _pcapng_chunks(path: Path, data: Any, view: npt.NDArray[np.uint8]) -> Generator[_Records, None, None]:
    """pcapng: Enhanced Packet Blocks as columns, every other block read as the reference reads it.

    The blocks are walked by their lengths (runs of equal lengths predicted and checked with numpy,
    as in :func:`_pcap_chunks`). A chunk ends before a Section Header Block (a new byte order) and
    before an Interface Description Block (the interfaces a chunk's packets refer to are then all
    known). An Enhanced Packet Block the columns cannot carry — an unknown interface or link type,
    a truncated or cut packet, a timestamp resolution or offset beyond the bulk conversion — is
    read by :func:`gateway.capture_file.packet_block`, as the reference reads it.
    """
    size = len(data)
    position, number, order = 0, 0, "<"
    interfaces: list[Interface] = []
    while position < size:
        base = number
        segments: list[IntArray] = []
        singles: list[int] = []
        odd: list[tuple[int, Frame | str]] = []
        taken, previous, run, reach = 0, -1, 0, 64
        limit = min(size, position + CHUNK_BYTES)
        block = struct.Struct(f"{order}II").unpack_from
        u32 = np.dtype(f"{order}u4")
        while position < limit and taken < CHUNK:
            if position + 12 > size:
                odd.append((number, "truncated pcapng block"))
                number, position = number + 1, size
                break
            kind = block(data, position)[0]  # (a section header's type reads the same in both orders)
            if kind in (PCAPNG_SHB, 1) and taken:
                break  # a new section or interface: the packets before it are a chunk of their own
            if kind == PCAPNG_SHB:
                order = section_order(path, data, position)
                interfaces = []
                block = struct.Struct(f"{order}II").unpack_from
                u32 = np.dtype(f"{order}u4")
            kind, length = block(data, position)
            if length < 12 or length % 4 or position + length > size:
                odd.append((number, "truncated pcapng block"))
                number, position = number + 1, size
                break
            if kind == 6:
                singles.append(position)
                taken += 1
                number += 1
                position += length
                run = run + 1 if length == previous else 0
                previous = length
                while run >= 3:  # predict the run's next blocks (type 6, this length), while predictions hold
                    end = min(limit, position + length * (CHUNK - taken))
                    held, reach, broken = _run_ahead(view, u32, position, length, end, reach, 0, (6, length))
                    if held is None:
                        break
                    if len(held):
                        segments += [np.array(singles, dtype=np.int64), held]
                        singles.clear()
                        taken += len(held)
                        number += len(held)
                        position += len(held) * length
                    if broken:
                        run = 0
                continue
            previous, run = -1, 0
            record = block_record(kind, bytes(data[position + 8 : position + length - 4]), order, interfaces)
            position += length
            if record is not None:
                odd.append((number, record))
                number += 1
        segments.append(np.array(singles, dtype=np.int64))
        yield _packet_columns(data, view, np.concatenate(segments), base, number, odd, order, interfaces)


def _packet_columns(
    data: Any,
    view: npt.NDArray[np.uint8],
    blocks: IntArray,
    base: int,
    end: int,
    odd: list[tuple[int, Frame | str]],
    order: str,
    interfaces: list[Interface],
) -> _Records:
    """The Enhanced Packet Blocks at ``blocks`` (records ``base`` to ``end`` less the odd ones) as columns."""
    numbered = np.ones(end - base, dtype=bool)
    numbered[[index - base for index, _ in odd]] = False
    index = base + np.flatnonzero(numbered)
    gathered = _gather(view, blocks, _EPB_FIELDS)
    fields = gathered.view(np.dtype(f"{order}u4")).reshape(-1, 7).astype(np.int64)
    length, interface, captured, original = fields[:, 1], fields[:, 2], fields[:, 5], fields[:, 6]
    described = interfaces or [Interface(-1, 0, 1, 0)]  # (no interface: every packet is odd)
    known = len(described)
    links = np.array([item.link for item in described], dtype=np.int64)
    bulk = np.array(
        [item.link in LINK_TYPES and 1 <= item.units <= _WIDEST_UNITS and abs(item.offset) < _LATEST_SECOND
         for item in described],
        dtype=bool,
    )  # fmt: skip
    units = np.array([item.units if ok else 1 for item, ok in zip(described, bulk, strict=True)], dtype=np.uint64)
    offsets = np.array([item.offset if ok else 0 for item, ok in zip(described, bulk, strict=True)], dtype=np.int64)
    which = np.minimum(interface, known - 1)
    good = (length >= 32) & (interface < len(interfaces)) & bulk[which]
    good &= (captured <= length - 32) & (captured >= original)
    per_second = units[which]
    stamp = fields[:, 3].astype(np.uint64) << np.uint64(32) | fields[:, 4].astype(np.uint64)
    seconds = stamp // per_second
    good &= seconds < _LATEST_SECOND
    fraction = (stamp % per_second).astype(np.int64) * 1_000_000 // per_second.astype(np.int64)
    shift = offsets[which]
    ts = (shift + seconds.astype(np.int64)) * 1_000_000 + fraction
    for at, number in zip(blocks[~good].tolist(), index[~good].tolist(), strict=True):
        kind_length = struct.unpack_from(f"{order}I", data, at + 4)[0]
        odd.append((number, packet_block(6, bytes(data[at + 8 : at + kind_length - 4]), order, interfaces)))
    odd.sort(key=lambda item: item[0])
    return _Records(
        index=index[good],
        ts=ts[good],
        start=blocks[good] + 28,
        length=captured[good],
        link=links[which][good],
        odd=odd,
    )


_HEADERS: Final = 40
"""Bytes gathered from each frame's network header: outer IPv4 (20), UDP (8), GTP-U with its options (12)."""


def _gather(view: npt.NDArray[np.uint8], at: IntArray, width: int) -> npt.NDArray[np.uint8]:
    """The ``width`` bytes from each position of ``at``, one row each (bytes past the end: the last byte).

    The rows are copied from an overlapping view of every position's next ``width`` bytes, whole,
    instead of byte by byte through an index array of ``width`` times their number.
    """
    gathered: npt.NDArray[np.uint8]
    if not len(at) or int(at.max()) + width > len(view):
        gathered = view[np.minimum(at[:, None] + np.arange(width, dtype=np.int64), len(view) - 1)]
    else:
        rows = np.ndarray((len(view) - width + 1,), dtype=f"V{width}", buffer=view, strides=(1,))
        gathered = rows[at].view(np.uint8).reshape(-1, width)
    return gathered


def _be16(view: npt.NDArray[np.uint8], at: IntArray) -> IntArray:
    return view[at].astype(np.int64) << 8 | view[at + 1]


@dataclass
class _Log:
    """The tunnel table's change log as arrays (IPv4 tunnels: key = address << 32 | TEID)."""

    key: IntArray
    index: IntArray
    value: IntArray
    tunnels: list[Tunnel | None]
    seen: int = 0


def _update_log(log: _Log, core: Core) -> None:
    """The tunnel table's changes since the last chunk, added to the log after its settled entries.

    The records still to come all lie after what the log holds, so of its entries only each key's
    last can still decide a G-PDU: the others are forgotten, and a key whose last entry removed its
    tunnel too (a key the log does not hold has no tunnel). The log stays as small as the tunnels
    open at once, not as the capture's.
    """
    entries = core.user.log[log.seen :]
    log.seen = len(core.user.log)
    keys, indexes, values = [], [], []
    for position, address, teid, tunnel in entries:
        if len(address) != 4:
            continue  # G-PDUs to IPv6 nodes are read one by one
        keys.append(int.from_bytes(address, "big") << 32 | teid)
        indexes.append(position)
        values.append(len(log.tunnels) if tunnel is not None else -1)
        if tunnel is not None:
            log.tunnels.append(tunnel)
    if keys:
        _keep_the_last(log)
        log.key = np.concatenate([log.key, np.array(keys, dtype=np.uint64).view(np.int64)])
        log.index = np.concatenate([log.index, np.array(indexes, dtype=np.int64)])
        log.value = np.concatenate([log.value, np.array(values, dtype=np.int64)])


def _keep_the_last(log: _Log) -> None:
    """Each key's last entry (by record, then as logged), unless it removed the key's tunnel."""
    if not len(log.key):
        return
    order = np.lexsort((np.arange(len(log.key)), log.index, log.key))
    keys = log.key[order]
    last = order[np.flatnonzero(np.append(keys[1:] != keys[:-1], True))]
    kept = np.sort(last[log.value[last] >= 0])
    log.key, log.index, log.value = log.key[kept], log.index[kept], log.value[kept]


def _attribute(log: _Log, key: IntArray, index: IntArray) -> IntArray:
    """Per G-PDU, the tunnel that held its (address, TEID) at its record (-1: none)."""
    found = np.full(len(key), -1, dtype=np.int64)
    if not len(log.key) or not len(key):
        return found
    known, log_id = np.unique(log.key, return_inverse=True)
    order = np.lexsort((np.arange(len(log.key)), log.index, log_id))
    combined = log_id[order] * (1 << 40) + log.index[order]
    values = log.value[order]
    position = np.minimum(np.searchsorted(known, key), len(known) - 1)
    hit = known[position] == key
    query = position * (1 << 40) + index
    last = np.searchsorted(combined, query, side="left") - 1
    valid = hit & (last >= 0)
    same = np.zeros(len(key), dtype=bool)
    same[valid] = (combined[last[valid]] >> 40) == position[valid]
    found[same] = values[last[same]]
    return found


@paused_collector()
def read_capture_fast(path: Path, utc_offset_s: int = 9 * 3600) -> CaptureContents:
    """:func:`gateway.pcap_reader.read_capture`, with the plain G-PDUs counted in bulk.

    The cyclic garbage collector is paused while reading: the sessions and bearers it builds are
    all kept (they refer to each other), and its passes over them would cost a tenth of the time.
    """
    from gateway.capture_file import CaptureReadError

    contents = CaptureContents()
    core = Core(contents, utc_offset_s)
    fragments = Fragments(contents.skipped)
    data = open_capture(path)
    try:
        if len(data) < 24:
            raise CaptureReadError(f"{path}: not a pcap or pcapng file (shorter than a file header)")
        magic = bytes(data[:4])
        pcapng = struct.unpack_from("<I", data, 0)[0] == PCAPNG_SHB
        if (magic not in PCAP_MAGICS and not pcapng) or len(data) < SMALLEST:  # not a capture, or tiny
            return read_frames(path, data, core)
        log = _Log(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        if pcapng:
            _read_chunks(core, fragments, data, log, lambda view: _pcapng_chunks(path, data, view))
        else:
            order, units = PCAP_MAGICS[magic]
            link = struct.unpack_from(f"{order}I", data, 20)[0] & 0x0FFFFFFF
            if link not in LINK_TYPES:
                raise CaptureReadError(f"{path}: link type {link} is not read (read: {link_names()})")
            _read_chunks(core, fragments, data, log, lambda view: _pcap_chunks(data, view, order, units, link))
        fragments.finish()
    finally:
        if not isinstance(data, bytes):
            with contextlib.suppress(BufferError):  # a view held by an exception's traceback: closed with it
                data.close()
    return finish(contents)


def _read_chunks(
    core: Core,
    fragments: Fragments,
    data: Any,
    log: _Log,
    chunks_of: Callable[[npt.NDArray[np.uint8]], Generator[_Records, None, None]],
) -> None:
    """Every chunk of a capture (the numpy view of the map lives only here, so the map can close)."""
    view = np.frombuffer(data, dtype=np.uint8)
    chunks = chunks_of(view)
    released = 0
    try:
        for records in chunks:
            _take(core, fragments, view, data, records, log)
            if isinstance(data, mmap.mmap) and len(records.start):  # read pages leave our memory
                done = int(records.start[-1]) // mmap.PAGESIZE * mmap.PAGESIZE
                if done - released >= RELEASE_BYTES:
                    data.madvise(mmap.MADV_DONTNEED, released, done - released)
                    released = done
    finally:
        chunks.close()
        del view


def _network_offsets(view: npt.NDArray[np.uint8], start: IntArray, length: IntArray, links: IntArray) -> IntArray:
    """Where each frame's IPv4 header starts (-1: not an IPv4 frame this path reads in bulk)."""
    kinds = np.unique(links).tolist()
    if len(kinds) == 1:  # (one link type: every classic pcap, most pcapng files)
        offset = _link_offsets(view, start, kinds[0])
    else:
        offset = np.full(len(start), -1, dtype=np.int64)
        for link in kinds:
            chosen = links == link
            offset[chosen] = _link_offsets(view, start[chosen], link)
    return np.where(length >= offset + 28, offset, -1)  # room for an IPv4 and a UDP header


def _link_offsets(view: npt.NDArray[np.uint8], start: IntArray, link: int) -> IntArray:
    """Where the IPv4 header starts in frames of one link type (-1: not IPv4)."""
    size = len(view)

    def byte_at(at: IntArray) -> IntArray:
        return view[np.minimum(at, size - 1)].astype(np.int64)

    if link in (101, 228):
        return np.zeros(len(start), dtype=np.int64)
    if link == 1:
        offset = np.full(len(start), 14, dtype=np.int64)
        kind = byte_at(start + 12) << 8 | byte_at(start + 13)
        for _ in range(4):
            tagged = (kind == 0x8100) | (kind == 0x88A8) | (kind == 0x9100)
            if not tagged.any():
                break
            kind = np.where(tagged, byte_at(start + offset + 2) << 8 | byte_at(start + offset + 3), kind)
            offset = np.where(tagged, offset + 4, offset)
        return np.where(kind == 0x0800, offset, -1)
    if link == 113:
        return np.where((byte_at(start + 14) << 8 | byte_at(start + 15)) == 0x0800, 16, -1)
    if link == 276:
        return np.where((byte_at(start) << 8 | byte_at(start + 1)) == 0x0800, 20, -1)
    if link == 0:  # the address family in the capturing host's order: little-endian unless that is > 0xFFFF
        little = byte_at(start) | byte_at(start + 1) << 8 | byte_at(start + 2) << 16 | byte_at(start + 3) << 24
        big = byte_at(start) << 24 | byte_at(start + 1) << 16 | byte_at(start + 2) << 8 | byte_at(start + 3)
        return np.where(np.where(little > 0xFFFF, big, little) == 2, 4, -1)
    return np.full(len(start), -1, dtype=np.int64)


def _take(
    core: Core,
    fragments: Fragments,
    view: npt.NDArray[np.uint8],
    data: Any,
    records: _Records,
    log: _Log,
) -> None:
    contents = core.contents
    contents.packets += len(records.index) + len(records.odd)
    start, length = records.start, records.length
    offset = _network_offsets(view, start, length, records.link)
    candidate = offset >= 0
    ip = start + np.where(candidate, offset, 0)
    available = length - offset
    # the outer IPv4, UDP and GTP-U headers of every frame, at once (past the file's end: its last byte)
    head = _gather(view, ip, _HEADERS)

    def be16(at: int) -> IntArray:
        high: IntArray = head[:, at].astype(np.int64)
        word: IntArray = high << 8 | head[:, at + 1]
        return word

    fast = candidate & (head[:, 0] == 0x45)
    fast &= (be16(6) & 0x3FFF) == 0
    fast &= head[:, 9] == 17
    total = be16(2)
    fast &= total <= available
    fast &= be16(24) == total - 20
    plain_ip = fast.copy()  # a whole, unfragmented IPv4/UDP datagram without options
    fast &= available >= 56  # room for outer IPv4, UDP, GTP-U and an inner IPv4 header
    fast &= (be16(22) == GTPU_PORT) | (be16(20) == GTPU_PORT)
    flags = head[:, 28].astype(np.int64)
    fast &= (head[:, 29] == 255) & (flags & 0xF0 == 0x30) & (be16(30) == total - 36)
    tpdu = np.where(flags & 0x07, ip + 40, ip + 36)
    extended = fast & ((flags & 0x04) != 0)
    if extended.any():  # one extension header (the N3 PDU Session Container): its length, then "no more"
        size = len(view) - 1
        ext_length = view[np.minimum(tpdu, size)].astype(np.int64) * 4
        after = tpdu + ext_length
        single = (view[np.minimum(ip + 39, size)] != 0) & (ext_length > 0)
        single &= after <= ip + total
        single &= view[np.minimum(after - 1, size)] == 0
        fast &= ~extended | single
        tpdu = np.where(extended, after, tpdu)
    end = ip + total
    room = end - tpdu
    fast &= room >= 20
    safe = np.where(fast, tpdu, ip)
    version = view[safe] >> 4
    inner_v4 = fast & (version == 4)
    inner_v6 = fast & (version == 6) & (room >= 40)
    volume = np.zeros(len(start), dtype=np.int64)
    v4_total = _be16(view, safe + 2)
    ok_v4 = inner_v4 & (v4_total >= 20) & (v4_total >= (view[safe] & 0x0F).astype(np.int64) * 4) & (v4_total <= room)
    v6_total = 40 + _be16(view, np.where(inner_v6, safe + 4, safe))
    ok_v6 = inner_v6 & (v6_total <= room)
    volume = np.where(ok_v4, v4_total, np.where(ok_v6, v6_total, 0))
    fast = ok_v4 | ok_v6
    # every other record, in order, one by one: control planes, fragments, the unusual; a plain
    # GTPv2-C datagram (the IPv4 and UDP headers checked above) goes straight to the core
    source_port, destination_port = be16(20), be16(22)
    ports = np.stack([source_port, destination_port])
    plain_v2 = (
        plain_ip & ((ports == GTPC_PORT).any(axis=0)) & ~((ports == GTPU_PORT) | (ports == PFCP_PORT)).any(axis=0)
    )
    plain_v2 &= (total > 28) & (head[:, 28] >> 5 == 2)
    slow = np.flatnonzero(~fast)
    odd, taken = records.odd, 0
    due = odd[0][0] if odd else _NEVER  # the record number of the next odd record
    if len(slow):
        rows = zip(
            records.index[slow].tolist(),
            records.ts[slow].tolist(),
            records.link[slow].tolist(),
            start[slow].tolist(),
            length[slow].tolist(),
            ip[slow].tolist(),
            total[slow].tolist(),
            plain_v2[slow].tolist(),
            strict=True,
        )
        for index, instant, link, at, size_, where, whole, direct in rows:
            while due < index:
                _take_odd(core, fragments, *odd[taken])
                taken += 1
                due = odd[taken][0] if taken < len(odd) else _NEVER
            core.user.position = index
            if direct:
                core.v2(
                    instant,
                    data[where + 12 : where + 16],
                    data[where + 16 : where + 20],
                    data[where + 28 : where + whole],
                )
            else:
                take_frame(core, fragments, instant, link, bytes(data[at : at + size_]))
    for item in odd[taken:]:
        _take_odd(core, fragments, *item)
    _update_log(log, core)
    chosen = np.flatnonzero(fast)
    if not len(chosen):
        return
    key = (be16(16) << 48 | be16(18) << 32 | be16(32) << 16 | be16(34))[chosen]
    index = records.index[chosen]
    owner = _attribute(log, key, index)
    amounts, instants = volume[chosen], records.ts[chosen]
    missing = owner < 0
    if missing.any():
        contents.skipped[UNKNOWN] += int(missing.sum())
        contents.unattributed_packets += int(missing.sum())
        tunnels, inverse = np.unique(key[missing], return_inverse=True)
        sums = np.bincount(inverse, weights=amounts[missing].astype(np.float64))
        for tunnel, total_ in zip(tunnels.tolist(), sums.tolist(), strict=True):
            address = str(ipaddress.IPv4Address((tunnel >> 32) & 0xFFFFFFFF))
            contents.unattributed[(address, tunnel & 0xFFFFFFFF)] += int(total_)
    counted = ~missing
    if not counted.any():
        return
    owner, amounts, instants, index = owner[counted], amounts[counted], instants[counted], index[counted]
    days = (instants // 1_000_000 + core.utc_offset_s) // 86_400
    groups, inverse = np.unique(owner * (1 << 32) + days, return_inverse=True)
    sums = np.bincount(inverse, weights=amounts.astype(np.float64))  # exact: a chunk's sum is far below 2^53
    packets = np.bincount(inverse)
    latest = np.full(len(groups), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, inverse, instants)
    for group, total_, count, last in zip(
        groups.tolist(), sums.tolist(), packets.tolist(), latest.tolist(), strict=True
    ):
        tunnel = log.tunnels[group >> 32]
        assert tunnel is not None
        bearer, leg, uplink = tunnel
        day = group & 0xFFFFFFFF
        counts = bearer.legs.get(leg) or bearer.legs.setdefault(leg, LegCounts())
        (counts.up if uplink else counts.down)[day] += int(total_)
        counts.last_us[day] = max(counts.last_us.get(day, last), last)
        counts.packets += count
    # the route of a session: its earliest uplink T-PDU (closed network or internet)
    owners, first = np.unique(owner, return_index=True)
    records_counted = chosen[counted]
    for tunnel_id, at in zip(owners.tolist(), first.tolist(), strict=True):
        tunnel = log.tunnels[tunnel_id]
        assert tunnel is not None
        bearer, _, uplink = tunnel
        session = bearer.session
        if uplink and int(index[at]) < session.route_at:
            record = records_counted[at]
            session.route = "closed" if _closed_at(view, int(tpdu[record])) else "internet"
            session.route_at = int(index[at])


def _take_odd(core: Core, fragments: Fragments, index: int, record: Frame | str) -> None:
    """A record the columns do not carry: a frame read one by one, or why it could not be read."""
    if isinstance(record, str):
        core.skipped[record] += 1
    else:
        core.user.position = index
        take_frame(core, fragments, *record)


def _closed_at(view: npt.NDArray[np.uint8], tpdu: int) -> bool:
    """Whether the inner packet at ``tpdu`` goes to private space (its destination address)."""
    if view[tpdu] >> 4 == 4:
        return _closed(bytes(view[tpdu + 16 : tpdu + 20]))
    return _closed(bytes(view[tpdu + 24 : tpdu + 40]))
