"""The MQTT service adapter on a real mosquitto started by the test on a free loopback port."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

from gateway.bench import free_port, mosquitto_binary, start_mosquitto
from gateway.mqtt import (
    Broker,
    MqttAdapterError,
    PlatformMessage,
    check_ca_file,
    platform_messages,
    publish_messages,
)
from metering.eventlog import read_event_log
from simulator.runner import run_scenario
from simulator.scenario import load_scenario

MOSQUITTO = mosquitto_binary()

USER = getpass.getuser()
"""mosquitto started as root drops to the user ``mosquitto``, who could not read or write the
test's private directory (persistence, password file): it stays who we are."""


@dataclass
class Mosquitto:
    """A broker process with persistence, that can be restarted on the same port."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\nuser {USER}\n"
            f"persistence_location {self.directory}/\nmax_queued_messages 0\nautosave_interval 1\n",
            encoding="utf-8",
        )
        self.process = start_mosquitto(config, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence database
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        if os.environ.get("MGWSIM_REQUIRE_TOOLS"):
            pytest.fail("mosquitto is required (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(tmp_path / "broker", free_port())
    broker.directory.mkdir()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def meter_command(broker: Mosquitto, out: Path, expect: int, client: str, idle: float = 60) -> list[str]:
    command = [sys.executable, "-m", "simulator.cli", "meter-mqtt", "--broker", broker.url, "--topic", "mono/#"]
    return [*command, "--out", str(out), "--expect", str(expect), "--client-id", client, "--idle", str(idle)]


def stream(prefix: str, count: int) -> list[PlatformMessage]:
    """``count`` platform messages of 50 devices, a microsecond apart."""
    return [
        PlatformMessage(
            f"{prefix}/{number}#1", "acct-1", f"89813000000000{number % 50:05d}", 1_767_193_200_000_000 + number
        )
        for number in range(count)
    ]


def start_meter(broker: Mosquitto, out: Path, expect: int, client: str) -> subprocess.Popen[str]:
    command = meter_command(broker, out, expect, client)
    meter = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    assert meter.stderr is not None
    assert "subscribed" in meter.stderr.readline()
    return meter


def test_every_platform_message_of_a_run_arrives_and_meters_the_same(mosquitto: Mosquitto, tmp_path: Path) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "mono.jsonl"
    sent = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", ROOT / "scenarios/quickstart.toml", "--events", log],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sent.returncode == 0
    wanted: Counter[str] = Counter()
    for event in read_event_log(log):
        if event.type == "mono.message" and event.sim is not None:
            wanted[event.sim] += event.count or 1
    assert sum(wanted.values()) > 1000
    meter = start_meter(mosquitto, out, sum(wanted.values()), "e2e")
    command = [sys.executable, "-m", "simulator.cli", "run", str(ROOT / "scenarios/quickstart.toml")]
    run = subprocess.run([*command, "--mqtt", f"{mosquitto.url}/mono"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert meter.wait(timeout=120) == 0
    metered: Counter[str] = Counter()
    for event in read_event_log(out):
        assert event.type == "mono.message" and event.sim is not None
        metered[event.sim] += event.count or 1
    assert metered == wanted


def test_a_broker_restart_in_the_middle_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    count = 20_000
    messages = stream("m", count)
    out = tmp_path / "mono.jsonl"
    meter = start_meter(mosquitto, out, count, "restart")
    acknowledged: list[int] = []
    restarted = threading.Event()

    def restart_when_under_way() -> None:
        deadline = time.monotonic() + 60
        while not acknowledged and time.monotonic() < deadline:
            time.sleep(0.01)
        mosquitto.restart()
        restarted.set()

    watcher = threading.Thread(target=restart_when_under_way)
    watcher.start()
    broker = Broker.from_url(f"{mosquitto.url}/mono", attempts=20)
    publishes = asyncio.run(publish_messages(broker, messages, progress=acknowledged.append))
    watcher.join()
    assert restarted.is_set() and acknowledged[0] < count, "the broker restarted while messages were in flight"
    assert meter.wait(timeout=120) == 0, meter.stderr.read() if meter.stderr else ""
    received = [event.id for event in read_event_log(out)]
    assert len(received) == len(set(received)) == count
    assert publishes >= count


def test_no_broker_at_start_is_a_clear_error_after_the_retries_asked_for(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "simulator.cli", "run", str(ROOT / "scenarios/quickstart.toml")]
    run = subprocess.run(
        [*command, "--mqtt", f"mqtt://127.0.0.1:{port}/mono", "--mqtt-retries", "3", "--mqtt-backoff", "0.2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 3
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr and f"mqtt://127.0.0.1:{port}" in lines[-1], lines[-3:]
    assert "gave up after 3 attempts" in lines[-1]
    retries = [line for line in lines if "attempt" in line and "gave up" not in line]
    assert [line.rsplit(";", 1)[1] for line in retries] == [" attempt 2 of 3 in 0.2 s", " attempt 3 of 3 in 0.4 s"]


def test_a_broker_that_comes_up_during_the_back_off_gets_every_message(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The broker is down when the run starts publishing and the subscriber is away: both retry."""
    scenario = ROOT / "scenarios/quickstart.toml"
    expected = len(list(platform_messages(run_scenario(load_scenario(scenario)).events)))
    meter = start_meter(mosquitto, tmp_path / "mono.jsonl", expected, "back-off")
    mosquitto.stop()
    command = [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--mqtt", f"{mosquitto.url}/mono"]
    command += ["--mqtt-retries", "10", "--mqtt-backoff", "0.5"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        assert run.stderr is not None
        first = run.stderr.readline()
        assert "attempt 2 of 10 in 0.5 s" in first, first
        mosquitto.start()
        rest = run.stderr.read()
        assert run.wait(timeout=120) == 0, rest
        assert f"{expected:,} platform messages published" in rest
        assert meter.wait(timeout=120) == 0
        assert len(list(read_event_log(tmp_path / "mono.jsonl"))) == expected > 0
    finally:
        run.kill()
        meter.kill()


def test_object_json_is_what_the_platform_sends() -> None:
    body = json.loads(PlatformMessage("x/1#3", "acct-1", "8981300000000000001", 1_767_193_200_000_000).payload())
    assert body["type"] == "object" and body["device_id"] == "8981300000000000001" and body["id"] == "x/1#3"
    assert body["timestamp_platform"] == "2025-12-31T15:00:00Z"
    assert [entry["tag"] for entry in body["payload"]] == ["seq", "data"]
    assert all({"tag", "type", "value"} <= set(entry) for entry in body["payload"])


def test_user_name_and_password_and_a_wrong_password(tmp_path: Path) -> None:
    if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None:
        if os.environ.get("MGWSIM_REQUIRE_TOOLS"):
            pytest.fail("mosquitto and mosquitto_passwd are required")
        pytest.skip("mosquitto is not installed")
    directory = tmp_path / "broker"
    directory.mkdir()
    passwords = directory / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "meter", "s3cret-Pa55"], check=True)
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\nuser {USER}\n", encoding="utf-8"
    )
    process = start_mosquitto(config, port)
    try:
        command = [sys.executable, "-m", "simulator.cli", "run", str(ROOT / "scenarios/pin-lockout.toml")]
        command += ["--mqtt", f"mqtt://127.0.0.1:{port}/mono", "--mqtt-username", "meter"]
        for password, status in (("s3cret-Pa55", 0), ("wrong-Pa55word", 3)):
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "COLUMNS": "200", "MGWSIM_MQTT_PASSWORD": password},
            )
            assert done.returncode == status, done.stderr
            assert password not in done.stdout + done.stderr
            assert "Traceback" not in done.stderr
        assert "refused the user name or password" in done.stderr
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_tls_with_a_test_ca(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if MOSQUITTO is None or openssl is None:
        if os.environ.get("MGWSIM_REQUIRE_TOOLS"):
            pytest.fail("mosquitto and openssl are required")
        pytest.skip("mosquitto or openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mgwsim test CA",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n", encoding="utf-8")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {USER}\ncafile {tmp_path}/ca.crt\n"
        f"certfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n",
        encoding="utf-8",
    )
    process = start_mosquitto(config, port)
    try:
        messages = [
            PlatformMessage(f"tls/{n}#1", "acct-1", "8981300000000000001", 1_767_193_200_000_000) for n in range(50)
        ]
        check_ca_file(tmp_path / "ca.crt")  # --mqtt-ca's check passes a CA file; a key is no certificate
        with pytest.raises(MqttAdapterError, match=r"server\.key: no CA certificate TLS can load"):
            check_ca_file(tmp_path / "server.key")
        trusted = Broker.from_url(f"mqtts://127.0.0.1:{port}/mono", ca_file=tmp_path / "ca.crt")
        assert asyncio.run(publish_messages(trusted, messages)) == 50
        untrusted = Broker.from_url(f"mqtts://127.0.0.1:{port}/mono", attempts=1)  # the system CAs only
        with pytest.raises(MqttAdapterError, match=f"mqtts://127.0.0.1:{port}"):
            asyncio.run(publish_messages(untrusted, messages))
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_meter_killed_at_random_points_loses_and_doubles_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """SIGKILL three times while 20,000 messages stream in; each rerun with the client id resumes."""
    import random
    import signal

    count = 20_000
    messages = stream("k", count)
    out = tmp_path / "mono.jsonl"
    env = {**os.environ, "COLUMNS": "200"}
    meter = start_meter(mosquitto, out, count, "killed")
    publisher = threading.Thread(
        target=lambda: asyncio.run(publish_messages(Broker.from_url(f"{mosquitto.url}/mono", attempts=20), messages))
    )
    publisher.start()
    rng = random.Random(11)
    journal = tmp_path / "mono.jsonl.journal.jsonl"
    kills = 0
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.2))
        if meter.poll() is not None:
            break
        meter.send_signal(signal.SIGKILL)
        meter.wait(timeout=30)
        kills += 1
        assert not out.exists(), "a killed meter wrote no final log"
        meter = subprocess.Popen(
            meter_command(mosquitto, out, count, "killed"), stderr=subprocess.PIPE, text=True, env=env
        )
    publisher.join(timeout=300)
    _, errors = meter.communicate(timeout=300)
    assert meter.returncode == 0, errors
    assert kills >= 2, "the meter was killed while messages were streaming"
    assert "resuming the journal" in errors
    received = [event.id for event in read_event_log(out)]
    assert len(received) == len(set(received)) == count, "every message exactly once"
    assert sorted(received) == sorted(f"mqtt|acct-1|{m.device_id}|{m.id}" for m in messages)
    assert not journal.exists(), "the journal is compacted into the log and removed"


def publish_raw(broker: Mosquitto, items: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        async with Broker.from_url(f"{broker.url}/mono").client() as client:
            for topic, payload in items:
                await client.publish(topic, payload, qos=1)

    asyncio.run(go())


def test_bad_payloads_become_dead_letters_and_change_nothing_around_them(mosquitto: Mosquitto, tmp_path: Path) -> None:
    good = [
        PlatformMessage(f"g/{number}#1", "acct-1", "8981300000000000001", 1_767_193_200_000_000 + number)
        for number in range(200)
    ]
    deep = b'{"id": "deep", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ancient = good[0].payload().replace(b"2025-12-31T15:00:00Z", b"0001-01-01T00:00:00Z").replace(b"g/0#1", b"old")
    huge = b'{"id": "huge", "pin": "8675309", "x": "' + b"0" * (10 * 2**20) + b'"}'
    dup = b'{"id": "d", "id": "e"}'
    items = [(m.topic("mono"), m.payload()) for m in good[:100]]
    items += [("mono/acct-1/x/object", deep), ("mono/acct-1/x/object", ancient), ("mono/acct-1/x/object", huge)]
    items += [("mono/acct-1/x/object", dup), ("mono/acct-1/x/object", b"\xff\xfe not json")]
    items += [(m.topic("mono"), m.payload()) for m in good[100:]]
    out = tmp_path / "mono.jsonl"
    meter = start_meter(mosquitto, out, 200, "dead")
    publish_raw(mosquitto, items)
    _, errors = meter.communicate(timeout=120)
    assert meter.returncode == 0, errors
    assert "Traceback" not in errors and "5 refused" in errors
    assert sorted(event.id for event in read_event_log(out)) == sorted(
        f"mqtt|acct-1|{m.device_id}|{m.id}" for m in good
    )
    letters = [json.loads(line) for line in (tmp_path / "mono.jsonl.dead-letters.jsonl").read_text().splitlines()]
    reasons = [letter["reason"] for letter in letters]
    assert len(letters) == 5
    assert "JSON nested too deeply" in reasons[0]
    assert "timestamp_platform" in reasons[1] and "outside" in reasons[1]
    assert "larger than a platform message" in reasons[2] and letters[2]["bytes"] > 10 * 2**20
    assert "appears twice" in reasons[3] and "not JSON" in reasons[4]
    assert "8675309" not in (tmp_path / "mono.jsonl.dead-letters.jsonl").read_text(), "no payload is kept"


def test_the_same_id_from_another_account_or_device_and_long_ids(mosquitto: Mosquitto, tmp_path: Path) -> None:
    stamp = 1_767_193_200_000_000
    long_a, long_b = "x" * 196 + "aaaa", "x" * 196 + "bbbb"
    messages = [
        PlatformMessage("same#1", "acct-1", "8981300000000000001", stamp),
        PlatformMessage("same#1", "acct-2", "8981300000000000001", stamp),
        PlatformMessage("same#1", "acct-1", "8981300000000000002", stamp),
        PlatformMessage(f"{long_a}#1", "acct-1", "8981300000000000001", stamp),
        PlatformMessage(f"{long_b}#1", "acct-1", "8981300000000000001", stamp),
    ]
    out = tmp_path / "mono.jsonl"
    meter = start_meter(mosquitto, out, len(messages), "ids")
    asyncio.run(publish_messages(Broker.from_url(f"{mosquitto.url}/mono"), messages + messages[:2]))
    _, errors = meter.communicate(timeout=120)
    assert meter.returncode == 0, errors
    events = list(read_event_log(out))
    assert len(events) == 5 == len({event.id for event in events}), "distinct by account, device and id"
    assert {(event.account, event.sim) for event in events} == {
        ("acct-1", "8981300000000000001"),
        ("acct-2", "8981300000000000001"),
        ("acct-1", "8981300000000000002"),
    }


def test_sigterm_ends_the_meter_cleanly_and_a_rerun_goes_on(mosquitto: Mosquitto, tmp_path: Path) -> None:
    import signal

    messages = [
        PlatformMessage(f"t/{n}#1", "acct-1", "8981300000000000001", 1_767_193_200_000_000 + n) for n in range(300)
    ]
    out = tmp_path / "mono.jsonl"
    meter = start_meter(mosquitto, out, 600, "term")
    asyncio.run(publish_messages(Broker.from_url(f"{mosquitto.url}/mono"), messages[:150]))
    time.sleep(1.0)
    meter.send_signal(signal.SIGTERM)
    _, errors = meter.communicate(timeout=60)
    assert meter.returncode == 0, errors
    assert "stopped by a signal" in errors and "Traceback" not in errors
    assert len(list(read_event_log(out))) == 150
    asyncio.run(publish_messages(Broker.from_url(f"{mosquitto.url}/mono"), messages[150:]))
    again = subprocess.run(
        meter_command(mosquitto, out, 300, "term", idle=3), capture_output=True, text=True, timeout=120
    )
    assert len({event.id for event in read_event_log(out)}) == 150, "a finished log is a new subscription's"
    assert again.returncode == 1, "fewer than --expect arrived before the idle time: said, and exit 1"
    assert "expected 300 distinct messages, got 150 (none arrived for 3 s)" in again.stderr
