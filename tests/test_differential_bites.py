"""The differential test bites: a one-line fault in either engine makes the two logs differ.

The fast engine and the reference engine share the world (:mod:`simulator.world`) and the event
writer, but not the way they derive what devices do: the reference steps the device machine
(:mod:`devices.device`) event by event, the fast engine derives sessions, back-off and the PIN
flow arithmetically. Here a fault is planted in one side at a time — in the fast derivation and in
the reference device machine — and the comparison the differential test makes must then fail. A
fault planted in both sides at once (the shared timers) must change the log without a difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from test_engine_differential import key

import devices.device
import simulator.bulk_traffic
import simulator.engine
import simulator.fast_engine
from devices.device import DeviceMachine, attach_retry_delay
from simulator.engine import Engine
from simulator.fast_engine import FastEngine
from simulator.scenario import Scenario, scenario_from_text

MIXED = """
[scenario]
name = "mixed"
start = "2026-04-01T00:00:00+09:00"
months = 1
seed = 11
traffic_records = "{records}"

[[accounts]]
id = "a1"

[[gateways]]
id = "gw0"
account = "a1"
switch = true
internet = true

[[gateways]]
id = "gw1"
account = "a1"
switch = true
power = false

[[fleets]]
name = "meters"
account = "a1"
gateway = "gw0"
count = 3
profile = "telemetry"
route = ["tunnel"]

[[fleets]]
name = "locked"
account = "a1"
gateway = "gw0"
count = 2
profile = "telemetry"
pin = "misconfigured"
puk = "correct"
puk_after_hours = 5

[[fleets]]
name = "waiting"
account = "a1"
gateway = "gw1"
count = 2
profile = "telemetry"

[[operations]]
at = "2026-04-03T10:00:00+09:00"
do = "gateway.power"
gateway = "gw1"
value = true
"""


def scenario(records: str) -> Scenario:
    return scenario_from_text(MIXED.format(records=records), "mixed.toml")


def logs_differ(chosen: Scenario) -> bool:
    reference, fast = Engine(chosen).run(), FastEngine(chosen).run()
    return Counter(map(key, reference)) != Counter(map(key, fast))


@pytest.mark.parametrize("records", ["session", "daily"])
def test_the_engines_agree_without_a_fault(records: str) -> None:
    assert not logs_differ(scenario(records))


def _later_retry(refusals: int) -> int:
    return attach_retry_delay(refusals) + 1


def _retry_one_early(self: DeviceMachine) -> int:
    return attach_retry_delay(self.refusals + 1)


def _fast_traffic_plus_one(original: Callable[..., Any]) -> Callable[..., Any]:
    def shifted(*arguments: Any, **keywords: Any) -> Any:
        pieces = original(*arguments, **keywords)
        pieces.up[:1] += 1  # one byte more in the first piece of every batch
        return pieces

    return shifted


Fault = Callable[[pytest.MonkeyPatch], None]
"""Plants one fault with the test's monkeypatch."""
FAST_FAULTS: dict[str, Fault] = {
    "fast back-off timer": lambda patch: patch.setattr(simulator.fast_engine, "attach_retry_delay", _later_retry),
    "fast PIN retry interval": lambda patch: patch.setattr(simulator.fast_engine, "PIN_RETRY_S", 11),
    "fast bulk traffic count": lambda patch: patch.setattr(
        simulator.fast_engine, "piece_traffic", _fast_traffic_plus_one(simulator.bulk_traffic.piece_traffic)
    ),
}
REFERENCE_FAULTS: dict[str, Fault] = {
    "device machine back-off": lambda patch: patch.setattr(DeviceMachine, "retry_delay", _retry_one_early),
    "device machine transition": lambda patch: patch.setitem(
        devices.device.TRANSITIONS,
        (devices.device.DeviceState.PIN_ENTRY, devices.device.DeviceEvent.PIN_REJECTED),
        devices.device.DeviceState.PUK_WAIT,
    ),
    "reference PIN retry interval": lambda patch: patch.setattr(simulator.engine, "PIN_RETRY_S", 11),
}


@pytest.mark.parametrize("fault", sorted({**FAST_FAULTS, **REFERENCE_FAULTS}))
def test_a_fault_in_one_engine_is_caught(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each planted fault makes the engines' logs differ (so the differential test would fail)."""
    {**FAST_FAULTS, **REFERENCE_FAULTS}[fault](monkeypatch)
    assert logs_differ(scenario("session")) or logs_differ(scenario("daily")), f"{fault} went unseen"


def test_a_fault_in_what_both_share_changes_the_log_but_not_the_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timers are one fact in devices/: changed there, both engines follow (and agree)."""
    chosen = scenario("session")
    before = Counter(map(key, Engine(chosen).run()))
    monkeypatch.setattr(devices.device, "T3411_S", 12)
    assert not logs_differ(chosen)
    assert Counter(map(key, Engine(chosen).run())) != before
