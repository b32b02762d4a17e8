"""Scheduled operations: one typed record per operation, read from the scenario with one error form."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_simulator_runs import TINY

from simulator.operations import OPERATIONS, DevicePower, FleetOperation, GatewaySetting, PointsPurchase
from simulator.scenario import ScenarioError, scenario_from_text

OPERATION = """
[[operations]]
at = "2026-01-02T00:00:00+09:00"
do = "{action}"
{keys}
"""
VALUES = {"gateway": '"gw"', "fleet": '"f"', "count": "1", "value": "false", "account": '"a"', "points": "20000"}


def with_operation(action: str, keys: str) -> str:
    return TINY.format(gateway="", fleet="", profile="telemetry") + OPERATION.format(action=action, keys=keys)


@pytest.mark.parametrize("action", sorted(set(OPERATIONS) - {"option.enable", "option.disable"}))
def test_every_operation_reads_into_its_typed_record(action: str) -> None:
    kind = OPERATIONS[action]
    keys = "\n".join(f"{key} = {VALUES[key]}" for key, _ in kind.typed_keys())
    if action == "gateway.create":
        text = with_operation(action, keys).replace("switch = true", "switch = true\ncreate = false")
    else:
        text = with_operation(action, keys)
    (operation,) = scenario_from_text(text, "ops.toml").operations
    assert type(operation.arguments) is kind.arguments and operation.action == action
    assert operation.at == 86_400


def test_typed_arguments_carry_their_values() -> None:
    text = with_operation("device.power", 'fleet = "f"\ncount = 1\nvalue = true')
    assert scenario_from_text(text, "ops.toml").operations[0].arguments == DevicePower("f", 1, True)
    text = with_operation("sim.delete", 'fleet = "f"\ncount = 1')
    assert scenario_from_text(text, "ops.toml").operations[0].arguments == FleetOperation("f", 1)
    text = with_operation("gateway.internet", 'gateway = "gw"\nvalue = true')
    assert scenario_from_text(text, "ops.toml").operations[0].arguments == GatewaySetting("gw", True)
    text = with_operation("points.buy", 'account = "a"\npoints = 40000')
    assert scenario_from_text(text, "ops.toml").operations[0].arguments == PointsPurchase("a", 40_000)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('fleet = "f"', "ops.toml:25: key 'operations[0].count': is required"),  # the table's line
        ('fleet = "f"\ncount = 0', "ops.toml:29: key 'operations[0].count': must be > 0"),
        ('fleet = "nope"\ncount = 1', "ops.toml:28: key 'operations[0].fleet': must be one of f"),
        ('fleet = "f"\ncount = "1"', "ops.toml:29: key 'operations[0].count': must be an integer"),
        ('fleet = "f"\ncount = 1\ncolour = 1', "ops.toml:30: key 'operations[0].colour': unknown key"),
    ],
)
def test_a_bad_operation_names_the_line_of_its_key(keys: str, message: str) -> None:
    with pytest.raises(ScenarioError) as raised:
        scenario_from_text(with_operation("sim.register", keys), "ops.toml")
    assert str(raised.value) == message


def test_every_operation_and_its_errors_name_the_line_of_its_own_table() -> None:
    """The n-th ``[[operations]]`` table's line, for each of many (a scenario's tables share one index of headers)."""
    keys = 'fleet = "f"\ncount = 1'
    text = with_operation("sim.register", keys) + "".join(OPERATION.format(action="sim.delete", keys=keys) * 5)
    lines = text.splitlines()
    expected = [number for number, line in enumerate(lines, start=1) if line.startswith("do = ")]
    assert [operation.line for operation in scenario_from_text(text, "ops.toml").operations] == expected
    bad = text + OPERATION.format(action="sim.delete", keys='fleet = "f"\ncount = 0')
    counts = [number for number, line in enumerate(bad.splitlines(), start=1) if line == "count = 0"]
    with pytest.raises(ScenarioError, match=rf"^ops\.toml:{counts[-1]}: key 'operations\[6\]\.count': must be > 0$"):
        scenario_from_text(bad, "ops.toml")


def test_the_differential_test_draws_every_operation() -> None:
    """An operation the drawn scenarios never schedule would not be held to one log by both engines."""
    import test_engine_differential

    source = Path(test_engine_differential.__file__).read_text()
    assert all(f'"{action}"' in source or f"'{action}'" in source for action in OPERATIONS), [
        action for action in OPERATIONS if action not in source
    ]
