"""Simulator invariants under random scenarios (the scenarios of the differential test).

Whatever hypothesis draws — gateways switched and deleted, SIMs deleted and re-registered, PIN
lockouts, coverage outages, devices swapped under terminal lock, runaways — the log the simulator
writes keeps the rules of the service:

* traffic only inside a session of a registered SIM (Art. 34), no session of a locked or dead SIM;
* a SIM under terminal lock has sessions only from the IMEI it is locked to, from the session's
  first second to its last (a swap into another device ends the session);
* a session cut for mass traffic (Art. 49(2)) was cut in the first second in which more than the
  threshold flowed within one window — recomputed here one window at a time from the device's
  bursts — so in its last window it carried at most the threshold plus that second's bursts, and
  its log holds exactly the bytes it carried up to the cut;
* no charge for a deleted SIM after its deletion month.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from test_engine_differential import RUNAWAYS_THROUGH_TUNNELS, resolve_times, scenarios

from devices.traffic import session_bursts
from metering.events import Event
from metering.fast import rate_events
from metering.timeutil import month_of_instant
from simulator.engine import US
from simulator.fast_engine import FastEngine
from simulator.scenario import ScenarioError, scenario_from_text

SWAPPED_UNDER_TERMINAL_LOCK = """
[scenario]
name = "swapped"
start = "2026-05-01T00:00:00+09:00"
months = 1
seed = 3
traffic_records = "session"

[[accounts]]
id = "a1"

[[gateways]]
id = "gw0"
account = "a1"
switch = true
internet = true
terminal_lock = true
mass_traffic = { threshold_mb = 40, window_min = 30 }

[[fleets]]
name = "meters"
account = "a1"
gateway = "gw0"
count = 3
profile = "fleet"

[[fleets]]
name = "runaways"
account = "a1"
gateway = "gw0"
count = 2
profile = "runaway"

[[operations]]
at = "2026-05-03T10:17:31+09:00"
do = "device.swap"
fleet = "meters"
count = 2

[[operations]]
at = "2026-05-05T08:00:00+09:00"
do = "device.swap"
fleet = "runaways"
count = 1

[[operations]]
at = "2026-05-09T12:00:00+09:00"
do = "sim.delete"
fleet = "meters"
count = 1

[[operations]]
at = "2026-05-10T12:00:00+09:00"
do = "sim.register"
fleet = "meters"
count = 1
"""


def fields(event: Any) -> dict[str, Any]:
    return json.loads(event.extra) if event.extra else {}


def first_second_over(times: list[int], volumes: list[int], threshold: int, window: int) -> tuple[int, int] | None:
    """The first second whose window ``(second - window, second]`` carried more than ``threshold``.

    The obvious way: one second at a time, adding up the bursts in its window. Returns the second
    and what its window carried.
    """
    for second in sorted(set(times)):
        carried = sum(volume for time, volume in zip(times, volumes, strict=True) if second - window < time <= second)
        if carried > threshold:
            return second, carried
    return None


def check_mass_traffic_cuts(engine: FastEngine, events: list[Event]) -> int:
    """Every session cut for mass traffic was cut where the rule says; returns how many were checked."""
    devices = {device.iccid: device for device in engine.devices}
    policies = {gateway.id: gateway.mass_traffic for gateway in engine.scenario.gateways}
    controlled = {gateway.id for gateway in engine.scenario.gateways if gateway.traffic_control is not None}
    starts: dict[str, int] = {}
    carried: Counter[str] = Counter()
    cuts: list[tuple[str, str, int, int]] = []  # session, gateway, start, end (scenario seconds)
    for event in events:
        if event.type == "session.created":
            starts[fields(event)["session"]] = (event.ts - engine.scenario.start_us) // US
        elif event.type == "sim.traffic" and event.session:
            carried[event.session] += (event.up_bytes or 0) + (event.down_bytes or 0)
        elif event.type == "session.deleted" and fields(event).get("cause") == "mass_traffic":
            found = fields(event)
            cuts.append(
                (
                    found["session"],
                    found["gateway"],
                    starts[found["session"]],
                    (event.ts - engine.scenario.start_us) // US,
                )
            )
    for session, gateway, start, end in cuts:
        policy = policies[gateway]
        assert policy is not None, f"{session} cut for mass traffic on {gateway}, which has no such policy"
        device = devices[session.rsplit("-", 1)[0]]
        bursts = session_bursts(
            device.fleet.profile, engine.scenario.seed, device.index, start, end, engine.origin_jst_s
        )
        times, volumes = bursts.times.tolist(), bursts.volume().tolist()
        over = first_second_over(times, volumes, policy.threshold_bytes, policy.window_s)
        assert over is not None, f"{session} was cut although no window carried more than the threshold"
        second, in_window = over
        assert second == end - 1, f"{session} was cut at {end - 1}, the threshold was crossed at {second}"
        last_second = sum(volume for time, volume in zip(times, volumes, strict=True) if time == second)
        assert in_window <= policy.threshold_bytes + last_second
        if gateway in controlled:
            assert carried[session] <= sum(volumes), f"{session} logged more than it carried"
        else:
            assert carried[session] == sum(volumes), f"{session} logged {carried[session]}, carried {sum(volumes)}"
    return len(cuts)


@settings(
    max_examples=int(os.environ.get("MGWSIM_DIFFERENTIAL_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
@example(SWAPPED_UNDER_TERMINAL_LOCK)
def test_the_log_keeps_the_rules_of_the_service(text: str) -> None:
    text = text.replace('traffic_records = "daily"', 'traffic_records = "session"')
    try:
        scenario = scenario_from_text(resolve_times(text), "drawn.toml")
    except ScenarioError as exc:
        assume(not any(word in str(exc) for word in ("exist then", "exists then", "enabled then")))
        raise
    engine = FastEngine(scenario)
    events = list(engine.run())
    registered: dict[str, bool] = {}
    blocked: dict[str, str] = {}
    open_sessions: dict[str, tuple[str, str | None]] = {}  # session -> (sim, the IMEI it is locked to)
    deleted_in: dict[str, int] = {}
    for event in events:  # in log order
        if event.type == "sim.registered" and event.sim:
            registered[event.sim] = True
            deleted_in.pop(event.sim, None)
        elif event.type == "sim.deleted" and event.sim:
            registered[event.sim] = False
            deleted_in[event.sim] = month_of_instant(event.ts)
        elif event.type in ("sim.locked", "sim.dead"):
            blocked[fields(event)["sim"]] = event.type
        elif event.type == "sim.unlocked":
            blocked.pop(fields(event)["sim"], None)
        elif event.type == "session.created":
            found = fields(event)
            sim = found["sim"]
            assert registered.get(sim), f"session of unregistered {sim}"
            assert sim not in blocked, f"session of a {blocked.get(sim)} SIM {sim}"
            locked = found.get("locked_imei")
            assert locked in (None, found["imei"]), f"{sim} locked to {locked} has a session from {found['imei']}"
            open_sessions[found["session"]] = (sim, locked)
        elif event.type == "session.deleted" and "session" in fields(event):
            found = fields(event)
            _, locked = open_sessions.pop(found["session"])
            assert locked in (None, found["imei"]), f"{found['session']} went on in another device ({found['imei']})"
        elif event.type == "sim.traffic":
            assert event.session in open_sessions, f"traffic outside a session: {event.id}"
            assert registered.get(event.sim or ""), f"traffic of an unregistered SIM: {event.id}"
    check_mass_traffic_cuts(engine, events)
    rating = rate_events(events, scenario.tariff, scenario.billing_months)
    assert not rating.errors
    for month, document in rating.documents.items():
        for invoice in document.invoices:
            for line in invoice.lines:
                if line.subject in deleted_in:
                    assert month <= deleted_in[line.subject], f"{line.subject} charged after its deletion"


def test_the_examples_exercise_the_lock_and_the_cuts() -> None:
    """The fixed examples really contain what the invariants are about (so the test can fail)."""
    scenario = scenario_from_text(SWAPPED_UNDER_TERMINAL_LOCK, "swapped.toml")
    engine = FastEngine(scenario)
    events = list(engine.run())
    created = [fields(event) for event in events if event.type == "session.created"]
    assert all("locked_imei" in found for found in created)
    assert engine.stats.refusals["imei_mismatch"] > 0, "swapped devices are refused"
    ended = Counter(found["cause"] for found in map(fields, events) if "session" in found and "cause" in found)
    assert ended["imei_mismatch"] == 3, "the swaps end the sessions that were open (2 meters, 1 runaway)"
    relocked = {found["locked_imei"] for found in created if found["locked_imei"].startswith("36")}
    assert len(relocked) == 1, "the swapped meter deleted and registered again is locked to its new device"
    assert check_mass_traffic_cuts(engine, events) > 100

    runaways = scenario_from_text(RUNAWAYS_THROUGH_TUNNELS.replace('"daily"', '"session"'), "runaways.toml")
    engine = FastEngine(runaways)
    assert check_mass_traffic_cuts(engine, list(engine.run())) > 2 * 24 * 50
