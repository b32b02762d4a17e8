"""The scheduled operations of a scenario: one typed record per operation, one table of them all.

A scenario's ``[[operations]]`` entry names its operation with ``do = "…"``; :data:`OPERATIONS`
maps that name to the record of its arguments (a frozen dataclass, so an engine reads
``operation.arguments.fleet``, not a string key), the checks of each argument (which the scenario
reader resolves against the scenario's gateways, fleets and accounts) and the handler that carries
it out on the :class:`~simulator.world.World`. Adding an operation is one record, one handler and
one entry here (and the differential test's drawing of it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from simulator.world import World


@dataclass(frozen=True, slots=True)
class GatewayOperation:
    """``gateway.create`` (Art. 41: the fee starts) or ``gateway.delete``."""

    gateway: str


@dataclass(frozen=True, slots=True)
class GatewaySetting:
    """``gateway.power``, ``gateway.internet`` or ``gateway.switch``: turn the setting on or off."""

    gateway: str
    value: bool


@dataclass(frozen=True, slots=True)
class FleetOperation:
    """``sim.register``, ``sim.delete`` or ``device.swap`` for the first ``count`` SIMs of a fleet that qualify."""

    fleet: str
    count: int


@dataclass(frozen=True, slots=True)
class DevicePower:
    """``device.power``: power the first ``count`` devices of a fleet on or off."""

    fleet: str
    count: int
    value: bool


@dataclass(frozen=True, slots=True)
class OptionChange:
    """``option.enable`` or ``option.disable``: a sub-option of the tariff for a target (Art. 42)."""

    account: str
    option: str
    target: str


@dataclass(frozen=True, slots=True)
class PointsPurchase:
    """``points.buy``: an account buys prepaid points (PT-4)."""

    account: str
    points: int


Arguments = GatewayOperation | GatewaySetting | FleetOperation | DevicePower | OptionChange | PointsPurchase
"""The arguments of any operation."""


@dataclass(frozen=True, slots=True)
class OperationKind:
    """One kind of operation: its arguments' record, how each argument is checked, its handler.

    Attributes:
        arguments: The record of its arguments (its fields are the operation's keys).
        checks: Per argument, the name of its check: ``gateway``, ``fleet``, ``account`` (must
            name one of the scenario's), ``positive``, ``option``, ``name``; none for booleans.
        handler: Carries the operation out on the world, now.
    """

    arguments: type[Arguments]
    checks: dict[str, str]
    handler: Callable[[World, str, Arguments], None]

    def typed_keys(self) -> tuple[tuple[str, type], ...]:
        """The operation's keys and their TOML types, in the record's order."""
        kinds = {"str": str, "int": int, "bool": bool}
        return tuple((field.name, kinds[str(field.type)]) for field in fields(self.arguments))


def _create(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, GatewayOperation)
    world.create_gateway(arguments.gateway)


def _delete(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, GatewayOperation)
    world.delete_gateway(arguments.gateway)


def _setting(world: World, action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, GatewaySetting)
    world.set_gateway(action, arguments.gateway, arguments.value)


def _register(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, FleetOperation)
    waiting = [device for device in world.fleet_devices(arguments.fleet) if not world.registered[device.iccid]]
    world.register(waiting[: arguments.count])


def _unregister(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, FleetOperation)
    present = [device for device in world.fleet_devices(arguments.fleet) if world.registered[device.iccid]]
    world.delete(present[: arguments.count])


def _swap(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, FleetOperation)
    world.swap_devices(arguments.fleet, arguments.count)


def _power(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, DevicePower)
    world.power_devices(arguments.fleet, arguments.count, arguments.value)


def _option(world: World, action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, OptionChange)
    world.change_option(action == "option.enable", arguments.account, arguments.option, arguments.target)


def _points(world: World, _action: str, arguments: Arguments) -> None:
    assert isinstance(arguments, PointsPurchase)
    world.buy_points(arguments.account, arguments.points)


_GATEWAY: Final = {"gateway": "gateway"}
_SETTING: Final = {"gateway": "gateway"}
_FLEET: Final = {"fleet": "fleet", "count": "positive"}
_OPTION: Final = {"account": "account", "option": "option", "target": "name"}
OPERATIONS: Final[dict[str, OperationKind]] = {
    "gateway.create": OperationKind(GatewayOperation, _GATEWAY, _create),
    "gateway.delete": OperationKind(GatewayOperation, _GATEWAY, _delete),
    "gateway.power": OperationKind(GatewaySetting, _SETTING, _setting),
    "gateway.internet": OperationKind(GatewaySetting, _SETTING, _setting),
    "gateway.switch": OperationKind(GatewaySetting, _SETTING, _setting),
    "sim.register": OperationKind(FleetOperation, _FLEET, _register),
    "sim.delete": OperationKind(FleetOperation, _FLEET, _unregister),
    "device.swap": OperationKind(FleetOperation, _FLEET, _swap),
    "device.power": OperationKind(DevicePower, _FLEET, _power),
    "option.enable": OperationKind(OptionChange, _OPTION, _option),
    "option.disable": OperationKind(OptionChange, _OPTION, _option),
    "points.buy": OperationKind(PointsPurchase, {"account": "account", "points": "positive"}, _points),
}
"""Every operation a scenario may schedule, by its ``do = "…"`` name."""
