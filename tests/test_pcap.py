"""GTP captures: tshark is the independent check of what ``mgwsim run --pcap`` writes, and
``mgwsim meter-pcap`` must read back exactly the volumes of the event log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT

from devices.carrier import imsi_of
from gateway.pcap import MAX_TPDU, CaptureSession, Transfer, templates, tpdu_sizes, write_capture
from gateway.pcap_reader import read_capture
from metering.eventlog import read_event_log
from simulator.capture import capture_sessions

TSHARK = shutil.which("tshark")


def require_tshark() -> str:
    if TSHARK is None:
        if os.environ.get("MGWSIM_REQUIRE_TOOLS"):
            pytest.fail("tshark is required (apt-get install tshark)")
        pytest.skip("tshark is not installed")
    return TSHARK


def mgwsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def tshark_fields(capture: Path, display_filter: str, *fields: str) -> list[list[str]]:
    command = [require_tshark(), "-r", str(capture), "-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    for name in fields:
        command += ["-e", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("pcap")
    capture, log = out / "core.pcap", out / "events.jsonl"
    done = mgwsim(
        "run", ROOT / "scenarios/tunnel-coverage.toml", "--pcap", capture, "--pcap-sims", "4", "--events", log
    )
    assert done.returncode == 0, done.stderr
    return capture, log


def test_tshark_counts_packets_and_bytes_per_teid_as_the_event_log_has_them(captured: tuple[Path, Path]) -> None:
    capture, log = captured
    sessions = capture_sessions(read_event_log(log), 4)
    assert len({session.imsi for session in sessions}) == 4 and len(sessions) > 20
    expected_bytes: Counter[int] = Counter()
    expected_packets: Counter[int] = Counter()
    for session in sessions:
        teids = session.teids()
        for transfer in session.transfers:
            for teid, volume in ((teids["pgw_u"], transfer.up), (teids["sgw_u"], transfer.down)):
                expected_bytes[teid] += volume
                full, tails = tpdu_sizes(volume)
                expected_packets[teid] += full + len(tails)
    got_bytes: Counter[int] = Counter()
    got_packets: Counter[int] = Counter()
    for teid_text, lengths in tshark_fields(capture, "gtp.message == 0xff", "gtp.teid", "ip.len"):
        inner_ip_length = int(lengths.split(",")[-1])  # the T-PDU: the inner IPv4 packet, header included
        got_bytes[int(teid_text, 16)] += inner_ip_length
        got_packets[int(teid_text, 16)] += 1
    assert got_bytes == +expected_bytes
    assert got_packets == +expected_packets


def test_tshark_dissects_the_sessions_without_complaint(captured: tuple[Path, Path]) -> None:
    capture, log = captured
    sessions = capture_sessions(read_event_log(log), 4)
    requests = tshark_fields(capture, "gtpv2.message_type == 32", "e212.imsi", "gtpv2.apn", "gtpv2.mei")
    assert [row[0].split(",")[0] for row in requests] == [session.imsi for session in sessions]
    assert {row[1] for row in requests} == {"sakura"}
    assert [row[2] for row in requests] == [session.mei for session in sessions]
    counts = Counter(int(row[0]) for row in tshark_fields(capture, "gtpv2", "gtpv2.message_type"))
    assert counts == {32: len(sessions), 33: len(sessions), 36: len(sessions), 37: len(sessions)}
    assert tshark_fields(capture, "_ws.malformed || _ws.expert.severity >= warning", "frame.number") == []
    checksums = tshark_fields(capture, "ip", "ip.checksum.status")
    assert checksums  # every IPv4 header checksum tshark can verify is good (1)
    command = [require_tshark(), "-o", "ip.check_checksum:TRUE", "-r", str(capture), "-Y", "ip.checksum.status == 0"]
    assert subprocess.run(command, capture_output=True, text=True, check=True).stdout == ""


def test_meter_pcap_reads_back_the_volumes_of_every_session(captured: tuple[Path, Path], tmp_path: Path) -> None:
    capture, log = captured
    out = tmp_path / "metered.jsonl"
    done = mgwsim("meter-pcap", capture, "--account", "acct-1", "--sims", f"{capture}.sims.csv", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stderr
    original = [event for event in read_event_log(log) if event.type == "sim.traffic"]
    chosen = {session.imsi for session in capture_sessions(read_event_log(log), 4)}
    wanted: Counter[tuple[str, str]] = Counter()
    for event in original:
        if event.sim is not None and imsi_of(event.sim) in chosen:
            wanted[(event.sim, "up")] += event.up_bytes or 0
            wanted[(event.sim, "down")] += event.down_bytes or 0
    metered: Counter[tuple[str, str]] = Counter()
    for event in read_event_log(out):
        if event.type == "sim.traffic":
            assert event.sim is not None
            metered[(event.sim, "up")] += event.up_bytes or 0
            metered[(event.sim, "down")] += event.down_bytes or 0
    assert metered == wanted


def test_a_sim_map_header_is_matched_whatever_its_case_and_spacing(captured: tuple[Path, Path], tmp_path: Path) -> None:
    """A SIM map from another system (``IMSI, ICCID, Registered_At``) meters as mgwsim's own; was refused."""
    capture, _ = captured
    outputs = {}
    for name, header in (("own", None), ("other", " IMSI , ICCID,Registered_At")):
        lines = Path(f"{capture}.sims.csv").read_text(encoding="utf-8").splitlines()
        sim_map = tmp_path / f"{name}.csv"
        sim_map.write_text("\n".join([header or lines[0], *lines[1:]]) + "\n", encoding="utf-8")
        outputs[name] = tmp_path / f"{name}.jsonl"
        done = mgwsim("meter-pcap", capture, "--account", "acct-1", "--sims", sim_map, "--out", outputs[name])
        assert done.returncode == 0, done.stderr
    assert outputs["other"].read_bytes() == outputs["own"].read_bytes()
    twice = tmp_path / "twice.csv"
    twice.write_text("imsi,IMSI,iccid\n", encoding="utf-8")
    done = mgwsim("meter-pcap", capture, "--account", "acct-1", "--sims", twice, "--out", tmp_path / "x.jsonl")
    assert done.returncode == 2 and f"{twice}:1: column imsi twice (the SIM map)" in done.stderr, done.stderr


def test_the_same_run_writes_the_same_capture(captured: tuple[Path, Path], tmp_path: Path) -> None:
    capture, _ = captured
    again = tmp_path / "again.pcap"
    done = mgwsim("run", ROOT / "scenarios/tunnel-coverage.toml", "--pcap", again, "--pcap-sims", "4")
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == capture.read_bytes()


def test_broken_packets_are_counted_not_fatal(tmp_path: Path) -> None:
    transfers = (Transfer(1_767_193_230_000_000, 3000, 100),)
    session = CaptureSession(
        1, "440511234567890", "817012345678901", "350000000000001", "10.128.0.9", "internet",
        1_767_193_200_000_000, 1_767_193_260_000_000, transfers,
    )  # fmt: skip
    whole = tmp_path / "whole.pcap"
    write_capture([session], whole)
    data = bytearray(whole.read_bytes())
    # corrupt the first G-PDU's inner IPv4 version, then cut the file in the middle of the last packet
    sizes = {name: len(template.data) for name, template in templates().items()}
    first_gpdu = 24 + 16 + sizes["create_request"] + 16 + sizes["create_response"] + 16
    data[first_gpdu + 36] = 0x75  # version 7: no IP
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(bytes(data[:-10]))
    contents = read_capture(broken)
    assert contents.skipped == {"inner packet not IP": 1, "truncated packet": 1}
    (found,) = contents.sessions
    assert found.imsi == "440511234567890" and found.route == "internet"
    assert sum(found.up.values()) == 3000 - MAX_TPDU and sum(found.down.values()) == 100
    assert found.end_us == 1_767_193_260_000_000  # the delete request survived; its response was cut
    sim_map = tmp_path / "sims.csv"
    sim_map.write_text("imsi,iccid\n440511234567890,8981300000000000001\n", encoding="utf-8")
    done = mgwsim("meter-pcap", tmp_path / "missing.pcap", "--account", "acct-1", "--sims", sim_map)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "missing.pcap" in done.stderr
    done = mgwsim("meter-pcap", broken, "--account", "acct-1", "--sims", whole)  # a capture is not a SIM map
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "SIM map" in done.stderr
    done = mgwsim("meter-pcap", broken, "--account", "acct-1", "--sims", sim_map)
    assert done.returncode == 0, done.stderr
    assert (
        "skipped 1 packet(s): inner packet not IP" in done.stderr
        and "skipped 1 packet(s): truncated packet" in done.stderr
    )


def test_a_sim_map_that_does_not_fit_the_capture_is_named(tmp_path: Path) -> None:
    """One line naming the capture, the session (IMSI, when created) and the SIM map; exit 2, nothing written."""
    session = CaptureSession(
        1, "440511234567890", "817012345678901", "350000000000001", "10.128.0.9", "internet",
        1_767_193_200_000_000, 1_767_193_260_000_000, (Transfer(1_767_193_230_000_000, 3000, 100),),
    )  # fmt: skip
    capture = tmp_path / "core.pcap"
    write_capture([session], capture)
    out = tmp_path / "events.jsonl"
    cases = {
        "other.csv": (
            "imsi,iccid\n440519999999999,8981300000000000001\n",
            "core.pcap: the session of IMSI 440511234567890 created 2026-01-01T00:00:00+09:00 has no row in the "
            "SIM map",
        ),
        "late.csv": (
            "imsi,iccid,registered_at\n440511234567890,8981300000000000001,2026-01-02T00:00:00+09:00\n",
            "core.pcap: SIM 8981300000000000001: its first session, created 2026-01-01T00:00:00+09:00, is before "
            "its registered_at 2026-01-02T00:00:00+09:00 in the SIM map",
        ),
        "latin1.csv": ("imsi,iccid\n# caf\xe9\n", "not UTF-8 text (byte 16) (the SIM map)"),
    }
    for name, (text, reason) in cases.items():
        sim_map = tmp_path / name
        sim_map.write_bytes(text.encode("latin-1"))
        done = mgwsim("meter-pcap", capture, "--account", "acct-1", "--sims", sim_map, "--out", out)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        (line,) = done.stderr.splitlines()
        assert reason in line and str(sim_map) in line, line
        assert not out.exists()
    for sim_map, reason in ((tmp_path / "missing.csv", "no such file"), (tmp_path, "is a folder, not a file")):
        done = mgwsim("meter-pcap", capture, "--account", "acct-1", "--sims", sim_map)
        said = f"mgwsim: error: {sim_map}: {reason} (the SIM map)"
        assert done.returncode == 2 and done.stderr.strip() == said, done.stderr
