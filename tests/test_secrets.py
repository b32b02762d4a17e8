"""Secrets: every scenario, every output on (verbose log too), and not one SIM's PIN, PUK or PASSCODE in them.

The SIM secrets are made 10 digits long and random-looking for this test (the card takes any
digits), so that a hit is a leak and not a coincidence of a 4-digit PIN with a byte count.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from conftest import ROOT
from rich.console import Console

import simulator.world
from devices.sim_card import SimSecrets
from gateway.mqtt import platform_messages
from gateway.pcap import write_capture
from simulator.capture import capture_sessions, write_sim_map
from simulator.runner import run_scenario, write_outputs
from simulator.scenario import load_scenario
from simulator.summary import summary_tables

SCENARIOS = sorted(path for path in (ROOT / "scenarios").glob("*.toml") if not path.stem.startswith("load-"))


def distinctive(index: int, salt: int) -> str:
    return f"{(index * 2_654_435_761 + salt * 97_531 + 1_234_567) % 10**10:010d}"


def distinctive_secrets(seed: int, indexes: list[int]) -> list[SimSecrets]:
    return [SimSecrets(distinctive(i, 1), distinctive(i, 2), distinctive(i, 3)) for i in indexes]


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_no_secret_in_any_output(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(simulator.world, "secrets_of", distinctive_secrets)
    caplog.set_level(logging.DEBUG)  # what `mgwsim -vv` logs
    scenario = load_scenario(path)
    secrets = {
        code
        for found in distinctive_secrets(scenario.seed, list(range(scenario.sim_count)))
        for code in (found.pin, found.puk, found.passcode)
    }
    result = run_scenario(scenario)
    written = write_outputs(result, tmp_path / "out", tmp_path / "events.parquet")
    if scenario.traffic_records == "session":
        sessions = [  # a few SIMs' sessions, leaving out the gigabytes of runaway floods
            session
            for session in capture_sessions(result.events, 3)
            if sum(transfer.up + transfer.down for transfer in session.transfers) < 20_000_000
        ]
        write_capture(sessions[:300], tmp_path / "core.pcap")
        write_sim_map(result.events, tmp_path / "core.pcap.sims.csv")
        written += [tmp_path / "core.pcap", tmp_path / "core.pcap.sims.csv"]
    payloads = b"\n".join(message.payload() for message in platform_messages(result.events))
    printed = io.StringIO()
    console = Console(file=printed, width=200)
    for table in summary_tables(result):
        console.print(table)
    blobs = {str(file): file.read_bytes() for file in written}
    blobs["mqtt payloads"] = payloads
    blobs["summary tables"] = printed.getvalue().encode()
    blobs["verbose log"] = caplog.text.encode()
    if any(fleet.pin != "disabled" for fleet in scenario.fleets):
        assert "PIN entered" in caplog.text, "the PIN flows are in the verbose log"
    blobs["repr of the run"] = repr(result.stats).encode() + repr(result.sim_states).encode()
    assert len(blobs) >= 6
    pattern = re.compile(rb"(?<![0-9])(" + b"|".join(code.encode() for code in secrets) + rb")(?![0-9])")
    for name, blob in blobs.items():
        leak = pattern.search(blob)
        assert leak is None, f"a SIM secret appears in {name} at byte {leak.start() if leak else 0}"
