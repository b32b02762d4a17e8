"""``mgwsim bench pcap``: capture writing beside building the same packets one by one with scapy.

The workload is a day of a fleet device per session (telemetry every 10 minutes, a 50 kB daily
upload, a 5 MB firmware download for one session in 90), written as one capture. In the same run
a sample of the same G-PDUs (the same sizes, in the same proportion) is built packet by packet
with scapy, the way a capture tool without templates would; the report gives both rates and their
ratio.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from gateway.pcap import MAX_TPDU, MIN_TPDU, SERVERS, CaptureSession, Transfer, tpdu_sizes, write_capture
from metering.bench import figures_table

DAY_US = 86_400_000_000
START_US = 1_767_193_200_000_000  # 2026-01-01 00:00 JST


def workload(sessions: int, seed: int = 1) -> list[CaptureSession]:
    """``sessions`` sessions of one day each, with a fleet device's traffic."""
    rng = np.random.default_rng(seed)
    found = []
    for number in range(sessions):
        start = START_US + number * 1_000
        up = 144 * 200 + int(rng.integers(45_000, 55_000))
        down = 144 * 100 + (5_000_000 if number % 90 == 0 else 0)
        found.append(
            CaptureSession(
                number=number,
                imsi=f"44051{number:010d}",
                msisdn=f"8170{number:011d}",
                mei=f"35{number:013d}",
                address=f"10.{128 + number // 65_536 % 64}.{number // 256 % 256}.{number % 256}",
                route="closed",
                start_us=start,
                end_us=start + DAY_US - 1_000_000,
                transfers=(Transfer(start + DAY_US // 2, up, down),),
            )
        )
    return found


def packet_sizes(sessions: list[CaptureSession]) -> list[int]:
    """The UDP payload size of every G-PDU's T-PDU of the sessions (what scapy is asked to build)."""
    sizes = []
    for session in sessions:
        for transfer in session.transfers:
            for volume in (transfer.up, transfer.down):
                full, tails = tpdu_sizes(volume)
                sizes += [size - MIN_TPDU for size in [MAX_TPDU] * full + tails]
    return sizes


def scapy_rate(sizes: list[int], sample: int) -> tuple[float, int]:
    """G-PDUs per second built one by one with scapy, over an evenly spread sample of ``sizes``."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    step = max(1, len(sizes) // sample)
    chosen = sizes[::step][:sample]
    began = time.perf_counter()
    for position, size in enumerate(chosen):
        packet = (
            IP(src="10.255.0.1", dst="10.255.0.2", id=0, flags=0)
            / UDP(sport=2152, dport=2152, chksum=0)
            / GTP_U_Header(teid=0x40000000 | position, gtp_type=255)
            / IP(src="10.128.0.1", dst=SERVERS["closed"], id=0, flags=0)
            / UDP(sport=40000, dport=9, chksum=0)
            / Raw(bytes(size))
        )
        bytes(packet)
    return len(chosen) / (time.perf_counter() - began), len(chosen)


@dataclass
class PcapBenchReport:
    """The figures of one ``mgwsim bench pcap`` run."""

    sessions: int
    packets: int
    megabytes: float
    seconds: float
    scapy_per_second: float
    scapy_sample: int

    def table(self) -> Table:
        """The report as a rich table."""
        rate = self.packets / self.seconds
        return figures_table(
            f"mgwsim bench pcap: {self.sessions:,} sessions, {self.packets:,} packets",
            [
                ("capture written", f"{self.megabytes:,.0f} MB in {self.seconds:.2f} s"),
                ("packets per second (templates, bulk)", f"{rate:,.0f}"),
                (f"scapy, one by one ({self.scapy_sample:,} of the same G-PDUs)", f"{self.scapy_per_second:,.0f} /s"),
                ("templates / scapy", f"{rate / self.scapy_per_second:,.0f}x"),
            ],
        )


def run_pcap_bench(sessions: int, sample: int, directory: Path | None = None) -> PcapBenchReport:
    """Write the workload's capture (timed), then build a sample of its G-PDUs with scapy (timed)."""
    chosen = workload(sessions)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        path = Path(scratch) / "bench.pcap"
        began = time.perf_counter()
        packets = write_capture(chosen, path)
        seconds = time.perf_counter() - began
        megabytes = path.stat().st_size / 1e6
    per_second, built = scapy_rate(packet_sizes(chosen), sample)
    return PcapBenchReport(sessions, packets, megabytes, seconds, per_second, built)


@dataclass
class MqttBenchReport:
    """The figures of one ``mgwsim bench mqtt`` run."""

    broker: str
    messages: int
    seconds: float
    publishes: int

    def table(self) -> Table:
        """The report as a rich table."""
        return figures_table(
            f"mgwsim bench mqtt: {self.messages:,} platform messages at QoS 1 to {self.broker}",
            [
                ("wall time (every PUBACK received)", f"{self.seconds:.2f} s"),
                ("messages per second", f"{self.messages / self.seconds:,.0f}"),
                ("publishes (more than messages after a reconnect)", f"{self.publishes:,}"),
            ],
        )


def mosquitto_binary() -> str | None:
    """Where mosquitto is (Debian puts it in /usr/sbin, not on every PATH), or ``None``."""
    import shutil

    return next(
        (path for path in ("/usr/sbin/mosquitto", shutil.which("mosquitto")) if path and Path(path).exists()), None
    )


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_mosquitto(config: Path, port: int) -> subprocess.Popen[bytes]:
    """Start mosquitto with ``config`` and wait until it listens on ``port``.

    Raises:
        FileNotFoundError: If mosquitto is not installed.
        RuntimeError: If it does not listen within 10 seconds.
    """
    import socket

    binary = mosquitto_binary()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto), and no --broker was given")
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError("mosquitto did not start")


def local_mosquitto(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a mosquitto on a free loopback port (for the benchmark); return the process and port."""
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n", encoding="utf-8")
    return start_mosquitto(config, port), port


def run_mqtt_bench(count: int, broker_url: str | None) -> MqttBenchReport:
    """Publish ``count`` platform messages at QoS 1 and time it (a local mosquitto unless a URL is given)."""
    import asyncio

    from gateway.mqtt import Broker, PlatformMessage, publish_messages

    messages = [
        PlatformMessage(f"bench/{number}#1", "acct-1", f"89813000000{number % 100_000:08d}", START_US + number)
        for number in range(count)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        process = None
        if broker_url is None:
            process, port = local_mosquitto(Path(scratch))
            broker_url = f"mqtt://127.0.0.1:{port}/bench"
        try:
            broker = Broker.from_url(broker_url)
            began = time.perf_counter()
            publishes = asyncio.run(publish_messages(broker, messages))
            seconds = time.perf_counter() - began
        finally:
            if process is not None:
                process.terminate()
    return MqttBenchReport(broker.describe(), count, seconds, publishes)


def _read_in_child(path: str, engine: str, queue: Any) -> None:
    import gateway.pcap_fast  # noqa: F401 - imported (with numpy) before the clock starts
    from gateway.pcap_reader import read_capture
    from metering.bench import _peak_rss_mb

    began = time.perf_counter()
    contents = read_capture(Path(path), engine=engine)
    queue.put({"seconds": time.perf_counter() - began, "packets": contents.packets, "peak_mb": _peak_rss_mb()})


@dataclass
class MeterPcapBenchReport:
    """The figures of one ``mgwsim bench meter-pcap`` run."""

    sessions: int
    packets: int
    megabytes: float
    fast: dict[str, float]
    reference: dict[str, float] | None
    tshark_seconds: float | None
    pcapng: dict[str, float] | None = None
    """The fast reader on the same packets as pcapng (written by Wireshark's editcap)."""

    def table(self) -> Table:
        """The report as a rich table."""
        rate = self.packets / self.fast["seconds"]
        rows = [
            ("capture", f"{self.packets:,} packets, {self.megabytes:,.0f} MB"),
            ("meter-pcap reader (fast): wall time", f"{self.fast['seconds']:.2f} s", ""),
            ("  packets per second", f"{rate:,.0f}", "≥ 1,000,000"),
            ("  peak memory", f"{self.fast['peak_mb']:,.0f} MB", "independent of the size"),
        ]
        rows = [(row[0], row[1], row[2] if len(row) > 2 else "") for row in rows]
        if self.pcapng is not None:
            rows.append(("the same as pcapng (editcap -F pcapng)", f"{self.pcapng['seconds']:.2f} s", ""))
            rows.append(("  packets per second", f"{self.packets / self.pcapng['seconds']:,.0f}", ""))
        if self.reference is not None:
            rows.append(("reference reader (one by one)", f"{self.reference['seconds']:.2f} s", ""))
            rows.append(("  fast / reference speed", f"{self.reference['seconds'] / self.fast['seconds']:.1f}x", ""))
        if self.tshark_seconds is not None:
            rows.append(("tshark -T fields -e gtp.teid -e ip.len", f"{self.tshark_seconds:.2f} s", ""))
            rows.append(("  fast / tshark speed", f"{self.tshark_seconds / self.fast['seconds']:.1f}x", "≥ 15x"))
        return figures_table(f"mgwsim bench meter-pcap: {self.sessions:,} sessions", rows, goals=True)


def run_meter_pcap_bench(
    sessions: int, directory: Path | None = None, reference: bool = True, tshark: bool = True
) -> MeterPcapBenchReport:
    """Write the workload's capture, then read it with both readers and tshark, each timed in its own process."""
    import shutil
    import subprocess

    from metering.bench import in_child_process

    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        path = Path(scratch) / "bench.pcap"
        packets = write_capture(workload(sessions), path)
        megabytes = path.stat().st_size / 1e6
        fast = in_child_process(_read_in_child, str(path), "fast")
        slow = in_child_process(_read_in_child, str(path), "reference") if reference else None
        pcapng = None
        editcap = shutil.which("editcap")
        if tshark and editcap is not None:
            converted = path.with_suffix(".pcapng")
            subprocess.run([editcap, "-F", "pcapng", str(path), str(converted)], check=True)
            pcapng = in_child_process(_read_in_child, str(converted), "fast")
            converted.unlink()
        tshark_seconds = None
        program = shutil.which("tshark")
        if tshark and program is not None:
            began = time.perf_counter()
            subprocess.run(
                [program, "-r", str(path), "-n", "-T", "fields", "-e", "gtp.teid", "-e", "ip.len"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            tshark_seconds = time.perf_counter() - began
    return MeterPcapBenchReport(sessions, packets, megabytes, fast, slow, tshark_seconds, pcapng)
