"""SimPy runs: exact traces of small scenarios, determinism, goldens, online metering = bill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from metering.eventlog import read_event_log
from metering.fast import rate_fast
from simulator.engine import Engine
from simulator.runner import check_expectations, compare_golden, run_scenario, write_outputs
from simulator.scenario import ScenarioError, load_scenario, scenario_from_text

SCENARIOS = sorted(
    path for path in (ROOT / "scenarios").glob("*.toml") if (ROOT / "scenarios/golden" / path.stem).is_dir()
)
"""The scenarios with golden invoices (the load scenarios are benchmarks, not CI cases)."""

TINY = """
[scenario]
name = "tiny"
start = "2026-01-01T00:00:00+09:00"
months = 1
seed = 1

[[accounts]]
id = "a"

[[gateways]]
id = "gw"
account = "a"
switch = true
{gateway}

[[fleets]]
name = "f"
account = "a"
gateway = "gw"
count = 1
profile = "{profile}"
{fleet}
"""


def tiny(gateway: str = "", fleet: str = "", profile: str = "telemetry") -> Engine:
    return Engine(scenario_from_text(TINY.format(gateway=gateway, fleet=fleet, profile=profile), "tiny.toml"))


def trace(engine: Engine) -> list[tuple[str, int]]:
    start = engine.scenario.start_us
    return [(event.type, (event.ts - start) // 1_000_000) for event in engine.run()]


def test_pin_lockout_and_puk_trace() -> None:
    events = trace(tiny(fleet='pin = "misconfigured"\npuk = "correct"\npuk_after_hours = 1'))
    assert events[:7] == [
        ("gateway.created", 0),
        ("sim.registered", 0),
        ("sim.pin_failed", 0),
        ("sim.pin_failed", 10),
        ("sim.pin_failed", 20),
        ("sim.locked", 20),
        ("sim.unlocked", 3620),
    ]
    assert events[7] == ("session.created", 3620)


def test_wrong_puk_ten_times_kills_the_sim() -> None:
    engine = tiny(fleet='pin = "misconfigured"\npuk = "wrong"\npuk_after_hours = 2')
    events = trace(engine)
    assert ("sim.dead", 20 + 7200 + 9 * 60) in events
    assert not any(kind == "session.created" for kind, _ in events)
    assert engine.devices[0].status == "dead"


def test_attach_back_off_when_the_gateway_is_off() -> None:
    """T3411 (10 s) between refused attempts, T3402 (12 min) after every fifth: seen on the device's machine."""
    from devices.device import DeviceEvent

    engine = tiny(gateway="power = false")
    attempts: list[int] = []
    stepped = engine.step

    def step(device: Any, event: DeviceEvent) -> None:
        if event is DeviceEvent.ATTACH_REFUSED:
            attempts.append(int(engine.env.now))
        stepped(device, event)

    engine.step = step  # type: ignore[method-assign]
    events = trace(engine)
    assert attempts[:12] == [0, 10, 20, 30, 40, 760, 770, 780, 790, 800, 1520, 1530]
    assert [kind for kind, _ in events].count("session.deleted") == 1, "one refusal diagnostic per cause"


def test_power_cycle_ends_the_session_and_asks_for_the_pin_again() -> None:
    operations = """
[[operations]]
at = "2026-01-02T00:00:00+09:00"
do = "device.power"
fleet = "f"
count = 1
value = false

[[operations]]
at = "2026-01-03T00:00:00+09:00"
do = "device.power"
fleet = "f"
count = 1
value = true
"""
    from devices.device import DeviceEvent, DeviceState

    engine = Engine(
        scenario_from_text(TINY.format(gateway="", fleet='pin = "correct"', profile="telemetry") + operations, "t.toml")
    )
    steps: list[tuple[int, DeviceEvent]] = []
    stepped = engine.step

    def step(device: Any, event: DeviceEvent) -> None:
        steps.append((int(engine.env.now), event))
        stepped(device, event)

    engine.step = step  # type: ignore[method-assign]
    events = engine.run()
    closed = [json.loads(event.extra)["cause"] for event in events if event.type == "session.deleted"]
    assert closed == ["power_off", "end_of_run"]
    opened = [(event.ts - engine.scenario.start_us) // 1_000_000 for event in events if event.type == "session.created"]
    assert opened == [0, 2 * 86_400]
    powered = [(at, event) for at, event in steps if event in (DeviceEvent.POWER_ON, DeviceEvent.CARD_READY)]
    on_again = 2 * 86_400
    expected = [(0, DeviceEvent.POWER_ON), (0, DeviceEvent.CARD_READY)]
    expected += [(on_again, DeviceEvent.POWER_ON), (on_again, DeviceEvent.CARD_READY)]
    assert powered == expected, "the card was powered on twice and the PIN verified twice"
    assert (86_400, DeviceEvent.POWER_OFF) in steps
    assert engine.devices[0].machine.state is DeviceState.SEARCHING, "the last session closed at the end of the run"
    assert engine.devices[0].card.state.value == "ready"


def test_secrets_stay_in_the_card() -> None:
    engine = tiny(fleet='pin = "misconfigured"\npuk = "correct"\npuk_after_hours = 1')
    text = "\n".join(repr(event) for event in engine.run())
    secrets = engine.devices[0].card.secrets
    for value in (secrets.puk, secrets.passcode):
        assert value not in text


def test_the_same_seed_gives_the_same_log_and_another_seed_another() -> None:
    scenario = load_scenario(ROOT / "scenarios/tunnel-coverage.toml")
    first, second = Engine(scenario).run(), Engine(scenario).run()
    assert first == second
    from dataclasses import replace

    assert Engine(replace(scenario, seed=scenario.seed + 1)).run() != first


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario_matches_its_golden_invoices_and_expectations(path: Path) -> None:
    assert len(SCENARIOS) >= 6
    result = run_scenario(load_scenario(path))
    assert compare_golden(result, ROOT / "scenarios/golden" / path.stem, update=False) == []
    assert check_expectations(result) == []


def test_online_metering_equals_bill_on_the_written_log(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios/quickstart.toml")
    result = run_scenario(scenario)
    write_outputs(result, tmp_path / "out", tmp_path / "events.parquet")
    written = list(read_event_log(tmp_path / "out/events.jsonl"))
    assert written == result.events
    for log in (tmp_path / "out/events.jsonl", tmp_path / "events.parquet"):
        billed = rate_fast([log], None, scenario.tariff, scenario.billing_months)
        for month, document in billed.documents.items():
            assert document.dumps() == result.rating.documents[month].dumps()
    command = [sys.executable, "-m", "simulator.cli", "bill", str(tmp_path / "out/events.jsonl"), "-m", "2026-01"]
    printed = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert printed == json.loads((tmp_path / "out/invoices/2026-01.json").read_text())
    assert (tmp_path / "out/report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_reports_drift(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    result = run_scenario(load_scenario(ROOT / "scenarios/pin-lockout.toml"))
    compare_golden(result, golden, update=True)
    document = json.loads((golden / "2026-04.json").read_text())
    document["invoices"][0]["total"] = "1"
    document["invoices"][0]["lines"][0]["quantity"] += 1
    (golden / "2026-04.json").write_text(json.dumps(document))
    drift = compare_golden(result, golden, update=False)
    assert any("total 1 became" in line for line in drift)
    assert any("quantity" in line for line in drift)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("count = 1", "count = 0"), "tiny.toml:21: key 'fleets[0].count': must be 1..9,999,999"),
        (('profile = "telemetry"', 'profile = "warp"'), "key 'fleets[0].profile': must be one of"),
        (("switch = true", 'switch = "yes"'), "tiny.toml:14: key 'gateways[0].switch': must be true or false"),
        (("months = 1", 'months = 1\ncolour = "red"'), "tiny.toml:6: key 'scenario.colour': unknown key"),
        (('start = "2026-01-01T00:00:00+09:00"', 'start = "2026-01-01T00:00:00"'), "no UTC offset"),
        (('gateway = "gw"\ncount', 'gateway = "gw2"\ncount'), "key 'fleets[0].gateway': must be one of gw"),
    ],
)
def test_scenario_errors_name_key_and_line(change: tuple[str, str], message: str) -> None:
    text = TINY.format(gateway="", fleet="", profile="telemetry").replace(*change)
    with pytest.raises(ScenarioError) as raised:
        scenario_from_text(text, "tiny.toml")
    assert message in str(raised.value)
