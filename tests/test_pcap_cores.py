"""meter-pcap on whole cores and on other projects' captures, with tshark's own counts as the truth.

The tests build a capture of an EPC on one host — MME, SGW, PGW and two eNodeBs; S11 and S5/S8
control; S1-U and S5-U user plane with TEIDs 1 and 2 on every node; a handover (Modify Bearer to
the second eNodeB), a dedicated bearer, inner IPv6, inner and outer fragments — and write it as
pcapng (scapy's writer) and as Linux cooked captures. tshark dissects it; the sums of the inner
``ip.len`` (or ``ipv6.plen`` + 40) per tunnel are the expected volumes, and every case meters one
leg's T-PDU bytes per direction exactly once.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_pcap import require_tshark

from gateway.pcap_reader import CaptureReadError, _tbcd, read_capture
from metering.eventlog import read_event_log

CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "captures"
MME, SGW_C, PGW_C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
SGW_U, PGW_U = "10.0.0.12", "10.0.0.13"
ENB1, ENB2 = "10.0.1.1", "10.0.1.2"
UE, SERVER, SERVER6 = "10.45.0.2", "10.200.0.9", "fd00::9"
IMSI = "440100000000001"
ICCID = "8981300000000000077"
START = 1_767_193_200  # 2025-12-31T15:00:00Z = 2026-01-01 00:00 JST


# --- a small GTPv2-C encoder (TS 29.274), independent of the reader ----------------------------


def ie(kind: int, value: bytes, instance: int = 0) -> bytes:
    return struct.pack("!BHB", kind, len(value), instance) + value


def imsi_ie(digits: str) -> bytes:
    nibbles = [int(d) for d in digits] + [0xF] * (len(digits) % 2)
    return ie(1, bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2)))


def fteid(interface: int, teid: int, address: str, instance: int = 0) -> bytes:
    octets = bytes(int(part) for part in address.split("."))
    return ie(87, bytes([0x80 | interface]) + struct.pack("!I", teid) + octets, instance)


def ebi(number: int, instance: int = 0) -> bytes:
    return ie(73, bytes([number]), instance)


def cause(value: int = 16) -> bytes:
    return ie(2, bytes([value, 0]))


def bearer(*parts: bytes) -> bytes:
    return ie(93, b"".join(parts))


def gtpv2(kind: int, teid: int, sequence: int, *ies: bytes) -> bytes:
    body = b"".join(ies)
    return struct.pack("!BBHI", 0x48, kind, len(body) + 8, teid) + struct.pack("!I", sequence << 8) + body


def gtpv1(kind: int, teid: int, sequence: int, body: bytes) -> bytes:
    return struct.pack("!BBHIHBB", 0x32, kind, len(body) + 4, teid, sequence, 0, 0) + body


def gpdu(teid: int, tpdu: bytes, extension: bytes = b"") -> bytes:
    if extension:  # one extension header (its type, then content), then "no more"
        header = struct.pack("!BBHIHBB", 0x34, 255, len(tpdu) + 4 + len(extension) - 1, teid, 0, 0, extension[0])
        return header + extension[1:] + tpdu
    return struct.pack("!BBHI", 0x30, 255, len(tpdu), teid) + tpdu


# --- the capture ----------------------------------------------------------------------------------


def scapy_layers() -> Any:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return IP, UDP, IPv6, Ether, Raw


def inner(up: bool, size: int, six: bool = False) -> bytes:
    IP, UDP, IPv6, _, Raw = scapy_layers()
    if six:
        return bytes(
            IPv6(src="fd00::2" if up else SERVER6, dst=SERVER6 if up else "fd00::2") / UDP() / Raw(b"6" * (size - 48))
        )
    return bytes(IP(src=UE if up else SERVER, dst=SERVER if up else UE) / UDP() / Raw(b"4" * (size - 28)))


def epc_packets(s1u_only: bool = False) -> list[tuple[float, bytes]]:
    """(time, IPv4 packet) of a whole EPC's day: both control planes, both user-plane legs."""
    IP, UDP, _, _, Raw = scapy_layers()
    packets: list[tuple[float, bytes]] = []
    clock = [float(START)]

    def send(source: str, destination: str, port: int, payload: bytes) -> None:
        clock[0] += 0.01
        packets.append((clock[0], bytes(IP(src=source, dst=destination) / UDP(sport=port, dport=port) / Raw(payload))))

    def control(source: str, destination: str, message: bytes) -> None:
        send(source, destination, 2123, message)

    def user(leg_s5: bool, up: bool, teid: int, tpdu: bytes) -> None:
        if leg_s5:
            source, destination = (SGW_U, PGW_U) if up else (PGW_U, SGW_U)
        else:
            enb = user.enb  # type: ignore[attr-defined]
            source, destination = (enb, SGW_U) if up else (SGW_U, enb)
        send(source, destination, 2152, gpdu(teid, tpdu))

    user.enb = ENB1  # type: ignore[attr-defined]

    def traffic(up_size: int, down_size: int, s1u_up: int, s1u_down: int, s5_up: int, s5_down: int, **kw: Any) -> None:
        """One uplink and one downlink T-PDU, each seen on S1-U and again on S5-U (unless S1-U only)."""
        for up, size, s1u, s5 in ((True, up_size, s1u_up, s5_up), (False, down_size, s1u_down, s5_down)):
            tpdu = inner(up, size, **kw)
            user(False, up, s1u, tpdu)
            if not s1u_only:
                user(True, up, s5, tpdu)

    # attach: S11 and S5 Create Session, then the eNodeB's S1-U F-TEID in Modify Bearer
    control(MME, SGW_C, gtpv2(32, 0, 1, imsi_ie(IMSI), fteid(10, 1, MME), fteid(7, 0, PGW_C, 1), bearer(ebi(5))))
    control(SGW_C, PGW_C, gtpv2(32, 0, 2, imsi_ie(IMSI), fteid(6, 1, SGW_C), bearer(ebi(5), fteid(4, 1, SGW_U, 2))))
    control(
        PGW_C, SGW_C, gtpv2(33, 1, 2, cause(), fteid(7, 1, PGW_C, 1), bearer(ebi(5), cause(), fteid(5, 1, PGW_U, 2)))
    )
    control(
        SGW_C,
        MME,
        gtpv2(
            33, 1, 1, cause(), fteid(11, 2, SGW_C), bearer(ebi(5), cause(), fteid(1, 2, SGW_U), fteid(5, 1, PGW_U, 2))
        ),
    )
    control(MME, SGW_C, gtpv2(34, 2, 3, bearer(ebi(5), fteid(0, 1, ENB1))))
    control(SGW_C, MME, gtpv2(35, 1, 3, cause()))
    # TEIDs collide on purpose: S1-U up to SGW-U 2, S5 up to PGW-U 1, down to SGW-U 1 and eNB1 1
    for size in (100, 1400, 60):
        traffic(size, size + 200, 2, 1, 1, 1)
    traffic(300, 500, 2, 1, 1, 1, six=True)  # inner IPv6
    # inner fragments: each fragment is a T-PDU of its own size
    from scapy.layers.inet import fragment

    for piece in fragment(IP(src=UE, dst=SERVER) / UDP() / Raw(b"f" * 3000), fragsize=1200):  # type: ignore[no-untyped-call]
        tpdu = bytes(piece)
        user(False, True, 2, tpdu)
        if not s1u_only:
            user(True, True, 1, tpdu)
    # an outer-fragmented G-PDU on S5-U (GTP over fragmented UDP)
    if not s1u_only:
        big = IP(src=SGW_U, dst=PGW_U, id=777) / UDP(sport=2152, dport=2152) / Raw(gpdu(1, inner(True, 1490)))
        for piece in fragment(big, fragsize=800):  # type: ignore[no-untyped-call]
            clock[0] += 0.01
            packets.append((clock[0], bytes(piece)))
        user(False, True, 2, inner(True, 1490))  # the same T-PDU on S1-U, whole
    # handover: Modify Bearer names the second eNodeB's TEID 2
    control(MME, SGW_C, gtpv2(34, 2, 4, bearer(ebi(5), fteid(0, 2, ENB2))))
    control(SGW_C, MME, gtpv2(35, 1, 4, cause()))
    user.enb = ENB2  # type: ignore[attr-defined]
    traffic(700, 900, 2, 2, 1, 1)
    # a dedicated bearer: Create Bearer on S5 then S11, numbered EBI 6 by the responses
    control(PGW_C, SGW_C, gtpv2(95, 1, 10, ebi(5), bearer(ebi(0), fteid(5, 2, PGW_U, 1))))
    control(SGW_C, MME, gtpv2(95, 1, 11, ebi(5), bearer(ebi(0), fteid(1, 3, SGW_U))))
    control(MME, SGW_C, gtpv2(96, 2, 11, cause(), bearer(ebi(6), cause(), fteid(0, 3, ENB2), fteid(1, 3, SGW_U, 1))))
    control(
        SGW_C, PGW_C, gtpv2(96, 1, 10, cause(), bearer(ebi(6), cause(), fteid(4, 4, SGW_U, 2), fteid(5, 2, PGW_U, 3)))
    )
    traffic(400, 1200, 3, 3, 2, 4)
    # detach
    control(MME, SGW_C, gtpv2(36, 2, 5, ebi(5, 0)))
    control(SGW_C, PGW_C, gtpv2(36, 1, 6, ebi(5, 0)))
    control(PGW_C, SGW_C, gtpv2(37, 1, 6, cause()))
    control(SGW_C, MME, gtpv2(37, 1, 5, cause()))
    user(False, False, 3, inner(False, 80))  # after the deletion: a tunnel that no longer exists
    return packets


def write_pcapng(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """Written by scapy's own pcapng writer, as Ethernet frames with a QinQ pair of tags."""
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
    from scapy.utils import PcapNgWriter

    IP = scapy_layers()[0]
    writer = PcapNgWriter(str(path))
    for instant, packet in packets:
        frame = Ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IP(packet)
        frame.time = instant
        writer.write(frame)
    writer.close()


def write_cooked(path: Path, packets: list[tuple[float, bytes]], version: int) -> None:
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2
    from scapy.utils import PcapWriter

    IP = scapy_layers()[0]
    layer = CookedLinux(proto=0x0800) if version == 1 else CookedLinuxV2(proto=0x0800)
    writer = PcapWriter(str(path), linktype=113 if version == 1 else 276)
    for instant, packet in packets:
        frame = layer.copy() / IP(packet)
        frame.time = instant
        writer.write(frame)
    writer.close()


def write_raw(path: Path, packets: list[Any]) -> None:
    """A classic pcap of raw IP packets (link type 101), by scapy's own writer."""
    from scapy.utils import wrpcap

    wrpcap(str(path), packets, linktype=101)


def tshark_tunnels(capture: Path) -> Counter[tuple[str, int]]:
    """tshark's T-PDU bytes per (outer destination, TEID): inner ip.len, or ipv6.plen + 40."""
    command = [require_tshark(), "-r", str(capture), "-Y", "gtp.message == 0xff", "-T", "fields", "-E", "occurrence=a"]
    for name in ("ip.dst", "gtp.teid", "ip.len", "ipv6.plen"):
        command += ["-e", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    found: Counter[tuple[str, int]] = Counter()
    for line in done.stdout.splitlines():
        destinations, teid, lengths, six = [*line.split("\t"), "", "", "", ""][:4]
        outer = destinations.split(",")[0]
        ipv4 = [int(value) for value in lengths.split(",") if value]
        volume = int(six.split(",")[-1]) + 40 if six else ipv4[-1]
        found[(outer, int(teid, 16))] += volume
    return found


S5_UP = [(PGW_U, 1), (PGW_U, 2)]
S5_DOWN = [(SGW_U, 1), (SGW_U, 4)]
S1U_UP = [(SGW_U, 2), (SGW_U, 3)]
S1U_DOWN = [(ENB1, 1), (ENB2, 2), (ENB2, 3)]


@pytest.mark.parametrize("form", ["pcapng", "sll", "sll2"])
def test_a_whole_epc_is_metered_once_on_the_leg_nearest_the_pgw(tmp_path: Path, form: str) -> None:
    capture = tmp_path / f"epc.{form}"
    packets = epc_packets()
    if form == "pcapng":
        write_pcapng(capture, packets)
    else:
        write_cooked(capture, packets, 1 if form == "sll" else 2)
    truth = tshark_tunnels(capture)
    up, down = sum(truth[key] for key in S5_UP), sum(truth[key] for key in S5_DOWN)
    assert up == sum(truth[key] for key in S1U_UP) and up > 0, "the same packets on both legs"
    contents = read_capture(capture)
    (session,) = contents.sessions
    assert session.imsi == IMSI and session.legs == ["S5/S8"]
    assert sum(session.up.values()) == up and sum(session.down.values()) == down
    assert sorted(session.bearers) == [5, 6], "the dedicated bearer is the response's EBI 6"
    assert contents.skipped == {"G-PDU for an unknown tunnel (address, TEID)": 1}, contents.skipped
    sim_map = tmp_path / "sims.csv"
    sim_map.write_text(f"imsi,iccid,registered_at\n{IMSI},{ICCID},2025-12-01T00:00:00+09:00\n", encoding="utf-8")
    out = tmp_path / "metered.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "meter-pcap", str(capture), "--account", "acct-1", "--sims",
         str(sim_map), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = list(read_event_log(out))
    traffic = [event for event in events if event.type == "sim.traffic"]
    assert (
        sum(event.up_bytes or 0 for event in traffic) == up and sum(event.down_bytes or 0 for event in traffic) == down
    )
    created = next(event for event in events if event.type == "session.created")
    assert '"metered_on":"S5/S8"' in created.extra
    billed = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "bill", str(out), "-m", "2026-01"], capture_output=True, text=True
    )
    assert billed.returncode == 0, billed.stderr
    assert '"sim_basic_fee"' in billed.stdout and '"data_fee"' in billed.stdout


def test_without_s5_user_plane_the_s1u_leg_is_metered(tmp_path: Path) -> None:
    capture = tmp_path / "s1u.pcapng"
    write_pcapng(capture, epc_packets(s1u_only=True))
    truth = tshark_tunnels(capture)
    (session,) = read_capture(capture).sessions
    assert session.legs == ["S1-U"]
    assert sum(session.up.values()) == sum(truth[key] for key in S1U_UP)
    late = 80  # the G-PDU after the deletion: its tunnel no longer exists
    assert sum(session.down.values()) == sum(truth[key] for key in S1U_DOWN) - late


def test_gtpv1_gn_pdp_contexts_and_n3_extension_headers(tmp_path: Path) -> None:
    IP, UDP, _, _, Raw = scapy_layers()
    sgsn, ggsn = "10.1.0.1", "10.1.0.2"
    imsi = bytes([0x44, 0x10, 0, 0, 0, 0, 0, 0xF2])  # 440100000000002, TBCD
    request = (b"\x02" + imsi + b"\x10" + struct.pack("!I", 7) + b"\x11" + struct.pack("!I", 8) + b"\x14\x05"
               + b"\x85\x00\x04" + bytes([10, 1, 0, 1]) + b"\x85\x00\x04" + bytes([10, 1, 0, 1]))  # fmt: skip
    response = (b"\x01\x80" + b"\x10" + struct.pack("!I", 70) + b"\x11" + struct.pack("!I", 80)
                + b"\x85\x00\x04" + bytes([10, 1, 0, 2]) + b"\x85\x00\x04" + bytes([10, 1, 0, 2]))  # fmt: skip
    container = bytes([0x85, 1, 0x10, 0x09, 0])  # PDU Session Container: 4 octets, QFI 9, then no more
    packets = [
        IP(src=sgsn, dst=ggsn) / UDP(sport=2123, dport=2123) / Raw(gtpv1(16, 0, 1, request)),
        IP(src=ggsn, dst=sgsn) / UDP(sport=2123, dport=2123) / Raw(gtpv1(17, 8, 1, response)),
        IP(src=sgsn, dst=ggsn) / UDP(sport=2152, dport=2152) / Raw(gpdu(70, inner(True, 500))),
        IP(src=ggsn, dst=sgsn) / UDP(sport=2152, dport=2152) / Raw(gpdu(7, inner(False, 900))),
        IP(src=sgsn, dst=ggsn) / UDP(sport=2152, dport=2152) / Raw(gpdu(70, inner(True, 300), container)),
        IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=2152, dport=2152) / Raw(gpdu(1, inner(True, 640), container)),
    ]
    capture = tmp_path / "gn.pcap"
    write_raw(capture, packets)
    truth = tshark_tunnels(capture)
    contents = read_capture(capture)
    (session,) = contents.sessions
    assert session.imsi == "440100000000002" and session.legs == ["Gn"]
    assert sum(session.up.values()) == truth[(ggsn, 70)] == 800
    assert sum(session.down.values()) == truth[(sgsn, 7)] == 900
    assert contents.unattributed == {("10.9.0.2", 1): truth[("10.9.0.2", 1)]}, "N3 G-PDU read past its extension"


PUBLIC = sorted(CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []


@pytest.mark.parametrize("capture", PUBLIC, ids=[path.name for path in PUBLIC])
def test_public_captures_agree_with_tshark(capture: Path) -> None:
    """Every G-PDU tshark dissects whole is read, with the same T-PDU bytes per tunnel."""
    truth = tshark_tunnels(capture)
    contents = read_capture(capture)
    metered: Counter[tuple[str, int]] = Counter(contents.unattributed)
    for session in contents.sessions:
        for bearer_ in session.bearers.values():
            for counts in bearer_.legs.values():
                metered[("session", bearer_.ebi)] += sum(counts.up.values()) + sum(counts.down.values())
    if capture.name.startswith("zeek_gtp9"):  # malformed on purpose: what tshark reads whole, we read too
        assert set(metered) <= set(truth) and all(metered[key] <= truth[key] for key in metered)
        assert contents.skipped["truncated T-PDU"] + contents.skipped["inner packet not IP"] >= 1
        return
    assert sum(metered.values()) == sum(truth.values())
    assert "Traceback" not in repr(contents.skipped)


def test_public_control_planes_give_their_subscribers() -> None:
    if not PUBLIC:
        pytest.skip("the shared captures are not beside the repository")
    found = {path.name: [session.imsi for session in read_capture(path).sessions] for path in PUBLIC}
    assert found["ndpi_gtp_c.pcap"] == ["987654112233445"]
    assert found["zeek_gtp_create_pdp_ctx.pcap"] == ["460004100000101"]
    s11 = read_capture(CAPTURES / "ngic_cp_in.pcap")
    (session,) = s11.sessions
    assert session.imsi == "011234567891234" and session.bearers[5].endpoints, "S11 only: Modify Bearer's eNB F-TEID"


@given(st.binary(max_size=12))
@example(bytes([0x44, 0x10, 0, 0, 0, 0, 0, 0xF3]))  # 440100000000003
@example(bytes([0x1A, 0xF2]))  # a nibble above 9 before the filler
def test_tbcd_digits_are_read_low_nibble_first_up_to_the_filler(value: bytes) -> None:
    expected = ""
    for nibble in (half for byte in value for half in (byte & 0x0F, byte >> 4)):
        if nibble == 0x0F:
            break
        expected += str(nibble)
    assert _tbcd(value) == expected


def pfcp_ie(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value


def pfcp(kind: int, seid: int | None, sequence: int, *ies: bytes) -> bytes:
    body = b"".join(ies)
    if seid is None:
        return struct.pack("!BBH", 0x20, kind, len(body) + 4) + struct.pack("!I", sequence << 8) + body
    head = struct.pack("!Q", seid) + struct.pack("!I", sequence << 8)
    return struct.pack("!BBH", 0x21, kind, len(body) + len(head)) + head + body


def v4(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def test_5g_n3_sessions_from_pfcp(tmp_path: Path) -> None:
    """N4 (PFCP) gives the N3 tunnels: the UPF's F-TEID of the uplink PDR, the gNodeB's in the FAR."""
    IP, UDP, _, _, Raw = scapy_layers()
    smf, upf, upf_n3, gnb = "10.2.0.1", "10.2.0.2", "10.2.1.2", "10.2.2.1"
    imsi_tbcd = bytes([0x44, 0x10, 0, 0, 0, 0, 0, 0xF3])  # 440100000000003
    container = bytes([0x85, 1, 0x10, 0x09, 0])
    packets = []

    def n4(source: str, destination: str, message: bytes) -> None:
        packets.append(IP(src=source, dst=destination) / UDP(sport=8805, dport=8805) / Raw(message))

    def n3(up: bool, teid: int, size: int) -> None:
        source, destination = (gnb, upf_n3) if up else (upf_n3, gnb)
        packets.append(
            IP(src=source, dst=destination) / UDP(sport=2152, dport=2152) / Raw(gpdu(teid, inner(up, size), container))
        )

    for number, with_user in ((1, True), (2, False)):
        pdr = pfcp_ie(
            1,
            pfcp_ie(56, b"\x00\x01")
            + pfcp_ie(2, pfcp_ie(20, b"\x00") + pfcp_ie(21, b"\x01" + struct.pack("!I", number) + v4(upf_n3))),
        )
        far = pfcp_ie(3, pfcp_ie(108, struct.pack("!I", 1)) + pfcp_ie(4, pfcp_ie(42, b"\x00")))
        user = pfcp_ie(141, b"\x01\x08" + imsi_tbcd) if with_user else b""
        n4(
            smf,
            upf,
            pfcp(50, 0, 10 + number, pfcp_ie(57, b"\x02" + struct.pack("!Q", 100 + number) + v4(smf)), pdr, far, user),
        )
        n4(
            upf,
            smf,
            pfcp(
                51,
                100 + number,
                10 + number,
                pfcp_ie(19, b"\x01"),
                pfcp_ie(57, b"\x02" + struct.pack("!Q", 200 + number) + v4(upf)),
            ),
        )
        update = pfcp_ie(
            10,
            pfcp_ie(108, struct.pack("!I", 1))
            + pfcp_ie(11, pfcp_ie(42, b"\x00") + pfcp_ie(84, b"\x01\x00" + struct.pack("!I", number) + v4(gnb))),
        )
        n4(smf, upf, pfcp(52, 200 + number, 20 + number, update))
        n4(upf, smf, pfcp(53, 100 + number, 20 + number, pfcp_ie(19, b"\x01")))
        n3(True, number, 400 * number)
        n3(False, number, 900 * number)
    n4(smf, upf, pfcp(54, 201, 31))
    n4(upf, smf, pfcp(55, 101, 31, pfcp_ie(19, b"\x01")))
    n3(True, 1, 100)  # after the deletion
    capture = tmp_path / "n3.pcap"
    write_raw(capture, packets)
    truth = tshark_tunnels(capture)
    contents = read_capture(capture)
    (session,) = contents.sessions
    assert session.imsi == "440100000000003" and session.legs == ["N3"]
    assert sum(session.up.values()) == truth[(upf_n3, 1)] - 100 == 400
    assert sum(session.down.values()) == truth[(gnb, 1)] == 900
    assert contents.unattributed_sessions == 1
    assert sum(contents.unattributed.values()) == truth[(upf_n3, 2)] + truth[(gnb, 2)] + 100 == 2600 + 100


def contents_summary(contents: Any) -> tuple[Any, ...]:
    sessions = [
        (s.imsi, s.start_us, s.end_us, s.route, dict(s.up), dict(s.down), s.last_us, s.packets, s.legs)
        for s in contents.sessions
    ]
    return sessions, contents.packets, dict(contents.skipped), dict(contents.unattributed)


def assert_readers_agree(capture: Path) -> None:
    """Both readers count the same, or refuse the file with the same message (damage can hit its header).

    The fast reader reads the file whole and in chunks of a few records too, so that the tunnels a
    chunk's G-PDUs use were set up, moved and removed in earlier chunks.
    """
    import gateway.pcap_fast

    def outcome(engine: str) -> object:
        try:
            return contents_summary(read_capture(capture, engine=engine))
        except CaptureReadError as exc:
            return f"refused: {exc}"

    expected = outcome("reference")
    assert outcome("fast") == expected
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway.pcap_fast, "CHUNK_BYTES", 1500)
        assert outcome("fast") == expected, "in chunks of 1,500 bytes"


transfer_sizes = st.one_of(st.just(0), st.integers(28, 120_000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(st.tuples(transfer_sizes, transfer_sizes), min_size=1, max_size=4), min_size=1, max_size=5),
    st.integers(0, 2**32),
    st.integers(0, 40),
)
def test_the_fast_reader_counts_what_the_reference_counts(
    tmp_path: Path, sessions: list[list[tuple[int, int]]], seed: int, damage: int
) -> None:
    """Our captures, damaged at random bytes too: the bulk path and the one-by-one path agree on everything."""
    import random

    from gateway.pcap import CaptureSession, Transfer, write_capture

    start = 1_767_193_200_000_000
    made = [
        CaptureSession(
            number, f"44010{number:010d}", f"8170{number:011d}", f"35{number:013d}", f"10.128.0.{number + 1}",
            "internet" if number % 2 else "closed", start + number * 10**9, start + number * 10**9 + 8 * 10**8,
            tuple(Transfer(start + number * 10**9 + (k + 1) * 10**7, up, down) for k, (up, down) in enumerate(moves)),
        )
        for number, moves in enumerate(sessions)
    ]  # fmt: skip
    capture = tmp_path / "ours.pcap"
    write_capture(made, capture)
    assert_readers_agree(capture)
    data = bytearray(capture.read_bytes())
    rng = random.Random(seed)
    for _ in range(damage):
        data[rng.randrange(24, len(data))] = rng.randrange(256)
    capture.write_bytes(bytes(data))
    assert_readers_agree(capture)


def test_a_last_frame_shorter_than_the_headers_read_in_bulk_is_read_as_the_reference_reads_it(tmp_path: Path) -> None:
    """The bulk path gathers 40 bytes from every frame: past the file's end they read as its last byte."""
    from gateway.pcap import CaptureSession, Transfer, write_capture

    start = 1_767_193_200_000_000
    session = CaptureSession(
        0, "440100000000001", "817000000000001", "350000000000001", "10.128.0.1", "closed",
        start, start + 10**9, (Transfer(start + 10**7, 30_000, 5_000),),
    )  # fmt: skip
    capture = tmp_path / "short-tail.pcap"
    written = write_capture([session], capture)
    assert capture.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1" and capture.stat().st_size > 4096  # read in bulk
    with capture.open("ab") as tail:
        tail.write(struct.pack("<IIII", start // 10**6 + 2, 0, 6, 6) + b"\x45\x00\x00\x06\x00\x00")
    assert read_capture(capture).packets == written + 1
    assert_readers_agree(capture)


@pytest.mark.parametrize("form", ["ethernet", "sll", "sll2", "raw"])
def test_the_fast_reader_agrees_on_a_whole_epc_in_every_link_type(tmp_path: Path, form: str) -> None:
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.utils import PcapWriter

    packets = epc_packets() * 40  # large enough for the bulk path; the repeats are redeliveries
    capture = tmp_path / f"epc-{form}.pcap"
    if form in ("sll", "sll2"):
        write_cooked(capture, packets, 1 if form == "sll" else 2)
    elif form == "raw":
        IP = scapy_layers()[0]
        write_raw(capture, [IP(packet) for _, packet in packets])
    else:
        IP = scapy_layers()[0]
        writer = PcapWriter(str(capture), linktype=1)
        for _, packet in packets:
            writer.write(Ether() / Dot1Q(vlan=7) / IP(packet))
        writer.close()
    assert capture.stat().st_size > 4096
    assert_readers_agree(capture)


@pytest.mark.parametrize("capture", PUBLIC, ids=[path.name for path in PUBLIC])
def test_the_fast_reader_agrees_on_public_captures(capture: Path) -> None:
    assert_readers_agree(capture)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32), st.integers(0, 60))
@example(seed=275579269, damage=15)  # one of the bytes hits the file's magic: both readers refuse it alike
def test_the_fast_reader_agrees_on_pcapng_of_every_kind(tmp_path: Path, seed: int, damage: int) -> None:
    """pcapng read in bulk: every block kind and interface, damaged at random bytes too, as the reference reads it."""
    import random

    capture = tmp_path / "every-kind.pcapng"
    if damage == 0:  # tshark refuses a packet of an interface not described yet: a capture without it
        write_pcapng_of_every_kind(capture, epc_packets() * 12, premature=False)
        truth = tshark_tunnels(capture)
        sessions = read_capture(capture).sessions
        assert sum(sum(session.up.values()) for session in sessions) == sum(truth[key] for key in S5_UP) > 0
        assert sum(sum(session.down.values()) for session in sessions) == sum(truth[key] for key in S5_DOWN) > 0
    write_pcapng_of_every_kind(capture, epc_packets() * 12)
    clean = capture.read_bytes()
    assert_readers_agree(capture)
    data = bytearray(clean)
    rng = random.Random(seed)
    for _ in range(damage):
        data[rng.randrange(len(data))] = rng.randrange(256)
    capture.write_bytes(bytes(data))
    assert_readers_agree(capture)


def first_uplinks_to(packets: list[tuple[float, bytes]], first: str, later: str) -> list[tuple[float, bytes]]:
    """The packets with each session's first uplink IPv4 T-PDU sent to ``first``, every later one to ``later``.

    (The inner destination is rewritten in place; nothing here checks the inner checksum.)
    """
    found, due = [], True
    for instant, packet in packets:
        if packet[9] == 17 and struct.unpack_from("!H", packet, 22)[0] == 2123 and packet[29] == 32:
            due = True  # a Create Session Request: a session begins
        elif struct.unpack_from("!H", packet, 22)[0] == 2152 and packet[20 + 8] == 0x30 and packet[36] == 0x45:
            inner_source = ".".join(str(octet) for octet in packet[36 + 12 : 36 + 16])
            if inner_source == UE:
                destination = bytes(int(part) for part in (first if due else later).split("."))
                packet = packet[: 36 + 16] + destination + packet[36 + 20 :]
                due = False
        found.append((instant, packet))
    return found


@pytest.mark.parametrize(("first", "later", "route"), [("8.8.8.8", SERVER, "internet"), (SERVER, "8.8.8.8", "closed")])
def test_a_session_route_is_where_its_earliest_uplink_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, later: str, route: str
) -> None:
    """The route of each session is decided by its earliest uplink T-PDU, in one chunk or across many."""
    import gateway.pcap_fast

    capture = tmp_path / "routes.pcap"
    write_raw(capture, [scapy_layers()[0](packet) for _, packet in first_uplinks_to(epc_packets() * 30, first, later)])
    shown = subprocess.run(
        [require_tshark(), "-r", str(capture), "-Y", f"gtp.message == 0xff && ip.src == {UE}", "-T", "fields",
         "-E", "occurrence=l", "-e", "ip.dst"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert shown[0] == first and set(shown[1:]) == {first, later}, "tshark sees the rewritten destinations"
    for engine, chunk in (("reference", None), ("fast", None), ("fast", 1500)):
        if chunk is not None:  # many chunks: a session's later uplinks in later chunks
            monkeypatch.setattr(gateway.pcap_fast, "CHUNK_BYTES", chunk)
        sessions = read_capture(capture, engine=engine).sessions
        assert len(sessions) == 30
        assert {session.route for session in sessions} == {route}, (engine, chunk)


def pcapng_block(order: str, kind: int, body: bytes) -> bytes:
    padded = body + b"\0" * (-len(body) % 4)
    length = 12 + len(padded)
    return struct.pack(f"{order}II", kind, length) + padded + struct.pack(f"{order}I", length)


def write_pcapng_by_hand(path: Path, packets: list[tuple[float, bytes]], order: str) -> None:
    """A pcapng section in ``order``, three interfaces: Ethernet (µs), raw IP (ns), loopback (ms as 2^-10 s)."""
    section = struct.pack(f"{order}IHHq", 0x1A2B3C4D, 1, 0, -1)
    blocks = [pcapng_block(order, 0x0A0D0D0A, section)]
    resolutions = {0: None, 1: 9, 2: 0x80 | 10}  # default µs; 10^-9; 2^-10
    for link, resolution in ((1, resolutions[0]), (101, resolutions[1]), (0, resolutions[2])):
        options = b""
        if resolution is not None:
            options = struct.pack(f"{order}HH", 9, 1) + bytes([resolution]) + b"\0\0\0"
        options += struct.pack(f"{order}HH", 0, 0)
        blocks.append(pcapng_block(order, 1, struct.pack(f"{order}HHI", link, 0, 0) + options))
    for number, (instant, packet) in enumerate(packets):
        interface = number % 3
        if interface == 0:
            frame, units = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + packet, 10**6
        elif interface == 1:
            frame, units = packet, 10**9
        else:
            frame, units = struct.pack("<I", 2) + packet, 1024
        stamp = round(instant * units)
        body = struct.pack(f"{order}IIIII", interface, stamp >> 32, stamp & 0xFFFFFFFF, len(frame), len(frame)) + frame
        blocks.append(pcapng_block(order, 6, body))
    path.write_bytes(b"".join(blocks))


def interface_description(order: str, link: int, resolution: int | None = None, offset: int | None = None) -> bytes:
    options = b""
    if resolution is not None:
        options += struct.pack(f"{order}HH", 9, 1) + bytes([resolution]) + b"\0\0\0"
    if offset is not None:
        options += struct.pack(f"{order}HHq", 14, 8, offset)
    return pcapng_block(order, 1, struct.pack(f"{order}HHI", link, 0, 0) + options + struct.pack(f"{order}HH", 0, 0))


def write_pcapng_of_every_kind(path: Path, packets: list[tuple[float, bytes]], premature: bool = True) -> None:
    """Two sections (little-endian, then big-endian), every packet block kind, odd interfaces.

    Section one: Ethernet (µs), raw IP (ns), loopback (2^-10 s), raw IP at 2^-56 s (beyond the bulk
    conversion; an offset of its own keeps its stamps in 64 bits), raw IP with a 100 s offset in ms;
    Enhanced Packet Blocks (some with options), Simple and obsolete Packet Blocks, a name
    resolution block between them, an interface of an unread link type added late.
    Section two: its own interface list and byte order, a packet before its interface's description.
    """
    blocks: list[bytes] = []
    half = len(packets) // 2
    for section, (order, chosen) in enumerate((("<", packets[:half]), (">", packets[half:]))):
        blocks.append(pcapng_block(order, 0x0A0D0D0A, struct.pack(f"{order}IHHq", 0x1A2B3C4D, 1, 0, -1)))
        described = [(1, None, None), (101, 9, None), (0, 0x80 | 10, None), (101, 0x80 | 56, START - 10), (101, 3, 100)]
        for link, resolution, offset in described[: 5 if section == 0 else 2]:
            if premature and section == 1 and link == 101:  # a packet of an interface not described yet
                blocks.append(pcapng_block(order, 6, struct.pack(f"{order}IIIII", 1, 0, 0, 20, 20) + chosen[0][1][:20]))
            blocks.append(interface_description(order, link, resolution, offset))
        for number, (instant, packet) in enumerate(chosen):
            interface = number % (5 if section == 0 else 2)
            link, resolution, offset = described[interface]
            units = 10**6 if resolution is None else (2 ** (resolution & 0x7F) if resolution & 0x80 else 10**resolution)
            ethernet = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + packet
            frame = ethernet if link == 1 else struct.pack("<I", 2) + packet if link == 0 else packet
            stamp = round((instant - (offset or 0)) * units)
            if number % 11 == 5:
                blocks.append(pcapng_block(order, 3, struct.pack(f"{order}I", len(ethernet)) + ethernet))
                continue
            if number % 13 == 7:
                high, low = stamp >> 32, stamp & 0xFFFFFFFF
                head = struct.pack(f"{order}HHIIII", interface, 0, high, low, len(frame), len(frame))
                blocks.append(pcapng_block(order, 2, head + frame))
                continue
            if number % 17 == 3:
                blocks.append(pcapng_block(order, 4, struct.pack(f"{order}HH", 0, 0)))
            head = struct.pack(f"{order}IIIII", interface, stamp >> 32, stamp & 0xFFFFFFFF, len(frame), len(frame))
            padded = frame + b"\0" * (-len(frame) % 4)
            options = struct.pack(f"{order}HHI", 2, 4, 0) + struct.pack(f"{order}HH", 0, 0) if number % 3 == 0 else b""
            blocks.append(pcapng_block(order, 6, head + padded + options))
        if section == 0:
            blocks.append(interface_description(order, 147))  # an interface of a link type not read
    path.write_bytes(b"".join(blocks))


def write_pcap_by_hand(path: Path, packets: list[tuple[float, bytes]], order: str, nanoseconds: bool) -> None:
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    parts = [struct.pack(f"{order}IHHiIII", magic, 2, 4, 0, 0, 65535, 101)]
    for instant, packet in packets:
        seconds = int(instant)
        fraction = round((instant - seconds) * (10**9 if nanoseconds else 10**6))
        parts.append(struct.pack(f"{order}IIII", seconds, fraction, len(packet), len(packet)) + packet)
    path.write_bytes(b"".join(parts))


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_sections_with_interfaces_of_their_own_link_types_and_resolutions(tmp_path: Path, order: str) -> None:
    capture = tmp_path / f"epc-{'le' if order == '<' else 'be'}.pcapng"
    write_pcapng_by_hand(capture, epc_packets(), order)
    truth = tshark_tunnels(capture)
    contents = read_capture(capture)
    (session,) = contents.sessions
    assert sum(session.up.values()) == sum(truth[key] for key in S5_UP) > 0
    assert sum(session.down.values()) == sum(truth[key] for key in S5_DOWN)
    times = subprocess.run(
        [require_tshark(), "-r", str(capture), "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert abs(session.start_us - float(times[0]) * 1_000_000) <= 1, "the interface's resolution is applied"
    deletes = subprocess.run(
        [require_tshark(), "-r", str(capture), "-Y", "gtpv2.message_type == 36", "-T", "fields", "-e",
         "frame.time_epoch", "-e", "frame.interface_id"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert session.end_us is not None
    assert abs(session.end_us - float(deletes[0]) * 1_000_000) <= 1, f"interface {deletes[1]}'s resolution"


@pytest.mark.parametrize(("order", "nanoseconds"), [("<", True), (">", False), (">", True)])
def test_classic_pcap_in_both_byte_orders_and_resolutions(tmp_path: Path, order: str, nanoseconds: bool) -> None:
    capture = tmp_path / "epc.pcap"
    write_pcap_by_hand(capture, epc_packets() * 20, order, nanoseconds)
    truth = tshark_tunnels(capture)
    for engine in ("fast", "reference"):
        contents = read_capture(capture, engine=engine)
        up = sum(sum(session.up.values()) for session in contents.sessions)
        assert up == sum(truth[key] for key in S5_UP)
        assert abs(contents.sessions[0].start_us - (START * 1_000_000 + 10_000)) <= 1  # (the test writes floats)


def test_a_loopback_family_is_read_as_a_whole_word(tmp_path: Path) -> None:
    """Null link type: 2 in the family's first byte is IPv4 only when the whole word is 2 (found by damage)."""
    capture = tmp_path / "null.pcap"
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0)]
    for number, (instant, packet) in enumerate(epc_packets() * 20):
        family = bytes([2, 0, 5, 0]) if number % 7 == 0 else struct.pack("<I", 2)  # 0x00050002: not IPv4
        frame = family + packet
        parts.append(struct.pack("<IIII", int(instant), 0, len(frame), len(frame)) + frame)
    capture.write_bytes(b"".join(parts))
    assert_readers_agree(capture)
    assert read_capture(capture).skipped["outer packet not IP"] == len(epc_packets() * 20) // 7 + 1
