"""The device machine (devices/device.py): its table, its timers, and nothing of SimPy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.device import (
    T3402_S,
    T3411_S,
    TRANSITIONS,
    DeviceEvent,
    DeviceMachine,
    DeviceState,
    IllegalDeviceEvent,
    attach_cycle_s,
    attach_retry_delay,
)

DEVICES = Path(__file__).resolve().parent.parent / "devices"


def test_a_device_attaches_after_its_pin_and_searches_again_after_a_session() -> None:
    machine = DeviceMachine()
    for event, state in (
        (DeviceEvent.POWER_ON, DeviceState.PIN_ENTRY),
        (DeviceEvent.PIN_REJECTED, DeviceState.PIN_ENTRY),
        (DeviceEvent.PIN_BLOCKED, DeviceState.PUK_WAIT),
        (DeviceEvent.PUK_ACCEPTED, DeviceState.SEARCHING),
        (DeviceEvent.ATTACH_REFUSED, DeviceState.BACKING_OFF),
        (DeviceEvent.RETRY, DeviceState.SEARCHING),
        (DeviceEvent.SESSION_OPENED, DeviceState.IN_SESSION),
        (DeviceEvent.SESSION_CLOSED, DeviceState.SEARCHING),
        (DeviceEvent.POWER_OFF, DeviceState.OFF),
    ):
        machine = machine.apply(event)
        assert machine.state is state, event


def test_an_illegal_event_raises_and_changes_nothing() -> None:
    machine = DeviceMachine().apply(DeviceEvent.POWER_ON)
    with pytest.raises(IllegalDeviceEvent, match="pin_entry cannot take session_opened"):
        machine.apply(DeviceEvent.SESSION_OPENED)
    assert machine == DeviceMachine(DeviceState.PIN_ENTRY)
    with pytest.raises(IllegalDeviceEvent):
        DeviceMachine().apply(DeviceEvent.POWER_OFF)  # already off


def test_back_off_follows_t3411_and_t3402_and_a_session_resets_it() -> None:
    """TS 24.301: T3411 (10 s) after a refusal, T3402 (12 min) after the fifth in a row."""
    machine = DeviceMachine(DeviceState.SEARCHING)
    delays = []
    for _ in range(11):
        machine = machine.apply(DeviceEvent.ATTACH_REFUSED)
        delays.append(machine.retry_delay())
        machine = machine.apply(DeviceEvent.RETRY)
    assert (T3411_S, T3402_S) == (10, 720)
    assert delays == [10, 10, 10, 10, 720, 10, 10, 10, 10, 720, 10]
    assert sum(delays[:5]) == attach_cycle_s() == 760
    machine = machine.apply(DeviceEvent.SESSION_OPENED)
    assert machine.refusals == 0 and attach_retry_delay(1) == 10


@given(st.lists(st.sampled_from(list(DeviceEvent)), max_size=40))
def test_every_step_goes_where_the_table_says_or_nowhere(events: list[DeviceEvent]) -> None:
    machine = DeviceMachine()
    for event in events:
        target = TRANSITIONS.get((machine.state, event))
        if target is None:
            with pytest.raises(IllegalDeviceEvent):
                machine.apply(event)
            continue
        machine = machine.apply(event)
        assert machine.state is target


def test_every_state_but_off_can_lose_power_and_every_state_is_reached() -> None:
    assert {state for state in DeviceState if (state, DeviceEvent.POWER_OFF) in TRANSITIONS} == set(DeviceState) - {
        DeviceState.OFF
    }
    assert set(TRANSITIONS.values()) == set(DeviceState)


def test_nothing_in_devices_imports_simpy() -> None:
    for path in DEVICES.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not any(name.split(".")[0] == "simpy" for name in names), path.name
