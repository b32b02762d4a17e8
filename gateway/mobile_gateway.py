"""The mobile gateway as a pure state machine, and who may communicate through it (Art. 34).

A gateway is an immutable value. :meth:`MobileGateway.apply` takes a :class:`GatewayCommand`
and returns the next gateway; every legal (state, command) pair is in :data:`TRANSITIONS`, and
anything else raises :class:`IllegalGatewayCommand` leaving the gateway unchanged.

:meth:`MobileGateway.admit` decides whether a SIM may open a data session, and on which route:

* closed network: SIM registered in the system AND registered to this gateway AND the gateway
  connected to a switch AND powered on (Art. 34(1), (2));
* internet: SIM registered AND registered to this gateway AND powered on AND internet enabled
  (Art. 34(3), 46);
* terminal (IMEI) lock: a SIM locked to an IMEI is refused from any other IMEI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

from gateway.policy import MassTrafficPolicy, TrafficControl


class GatewayState(Enum):
    """Lifecycle of a gateway."""

    OFF = "off"
    ON = "on"
    DELETED = "deleted"


class GatewayCommand(Enum):
    """What the user (or a scenario operation) can do to a gateway."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    CONNECT_SWITCH = "connect_switch"
    DISCONNECT_SWITCH = "disconnect_switch"
    ENABLE_INTERNET = "enable_internet"
    DISABLE_INTERNET = "disable_internet"
    ADD_SIM = "add_sim"
    REMOVE_SIM = "remove_sim"
    LOCK_IMEI = "lock_imei"
    UNLOCK_IMEI = "unlock_imei"
    DELETE = "delete"


class IllegalGatewayCommand(Exception):
    """A command the gateway cannot take in its state; the gateway is unchanged."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a session may open, on which route, or why not.

    Attributes:
        ok: Whether the session may open.
        route: ``closed`` or ``internet`` when admitted.
        cause: Why not (``not_registered``, ``gateway_off``, ``no_route``, ``imei_mismatch``).
    """

    ok: bool
    route: str = ""
    cause: str = ""


@dataclass(frozen=True, slots=True)
class MobileGateway:
    """A mobile gateway.

    Attributes:
        id: Gateway id.
        account: Owning account.
        state: Lifecycle state.
        switch: Whether it is connected to a switch (closed network).
        internet: Whether internet breakout is enabled.
        sims: ICCIDs registered to it, in registration order.
        imei_locks: ICCID → IMEI for SIMs under terminal lock.
        dns: DNS server given to devices.
        mass_traffic: The Art. 49(2) interruption policy, if any.
        traffic_control: Monthly quota and bandwidth limit, if any.
    """

    id: str
    account: str
    state: GatewayState = GatewayState.OFF
    switch: bool = False
    internet: bool = False
    sims: tuple[str, ...] = ()
    imei_locks: tuple[tuple[str, str], ...] = ()
    dns: str = "10.0.0.53"
    mass_traffic: MassTrafficPolicy | None = field(default=None)
    traffic_control: TrafficControl | None = field(default=None)

    def apply(self, command: GatewayCommand, argument: str = "", imei: str = "") -> MobileGateway:
        """Apply one command (``argument``: the ICCID for SIM and IMEI-lock commands).

        Raises:
            IllegalGatewayCommand: When the command is not possible in the gateway's state.
        """
        handler = TRANSITIONS.get((self.state, command))
        if handler is None:
            raise IllegalGatewayCommand(f"{command.value} is not possible on gateway {self.id} ({self.state.value})")
        return handler(self, argument, imei)

    def address_of(self, sim: str) -> str:
        """The IP address the gateway assigns to a registered SIM (IP address assignment)."""
        index = self.sims.index(sim)
        return str(ipaddress.IPv4Address("10.128.0.0") + 16 + index)

    def locked_imei(self, sim: str) -> str | None:
        """The IMEI a SIM is locked to, if terminal lock applies to it."""
        return dict(self.imei_locks).get(sim)

    def admit(self, sim: str, imei: str, destination: str, registered: bool) -> Admission:
        """May ``sim`` (in a device with ``imei``) open a session towards ``destination``? (Art. 34)."""
        if not registered or sim not in self.sims or self.state is GatewayState.DELETED:
            return Admission(False, cause="not_registered")
        if self.state is not GatewayState.ON:
            return Admission(False, cause="gateway_off")
        locked = self.locked_imei(sim)
        if locked is not None and locked != imei:
            return Admission(False, cause="imei_mismatch")
        available = {"closed": self.switch, "internet": self.internet}
        if not available.get(destination, False):
            return Admission(False, cause="no_route")
        return Admission(True, route=destination)


Handler = Callable[[MobileGateway, str, str], MobileGateway]


def _set(**changes: object) -> Handler:
    return lambda gateway, _argument, _imei: replace(gateway, **changes)  # type: ignore[arg-type]


def _add_sim(gateway: MobileGateway, sim: str, _imei: str) -> MobileGateway:
    if sim in gateway.sims:
        raise IllegalGatewayCommand(f"SIM {sim} is already registered to gateway {gateway.id}")
    return replace(gateway, sims=(*gateway.sims, sim))


def _remove_sim(gateway: MobileGateway, sim: str, _imei: str) -> MobileGateway:
    if sim not in gateway.sims:
        raise IllegalGatewayCommand(f"SIM {sim} is not registered to gateway {gateway.id}")
    locks = tuple(pair for pair in gateway.imei_locks if pair[0] != sim)
    return replace(gateway, sims=tuple(s for s in gateway.sims if s != sim), imei_locks=locks)


def _lock(gateway: MobileGateway, sim: str, imei: str) -> MobileGateway:
    if sim not in gateway.sims or not imei:
        raise IllegalGatewayCommand(f"terminal lock needs a SIM registered to gateway {gateway.id} and an IMEI")
    locks = tuple(pair for pair in gateway.imei_locks if pair[0] != sim)
    return replace(gateway, imei_locks=(*locks, (sim, imei)))


def _unlock(gateway: MobileGateway, sim: str, _imei: str) -> MobileGateway:
    return replace(gateway, imei_locks=tuple(pair for pair in gateway.imei_locks if pair[0] != sim))


_ANY_TIME: Final[dict[GatewayCommand, Handler]] = {
    GatewayCommand.CONNECT_SWITCH: _set(switch=True),
    GatewayCommand.DISCONNECT_SWITCH: _set(switch=False),
    GatewayCommand.ENABLE_INTERNET: _set(internet=True),
    GatewayCommand.DISABLE_INTERNET: _set(internet=False),
    GatewayCommand.ADD_SIM: _add_sim,
    GatewayCommand.REMOVE_SIM: _remove_sim,
    GatewayCommand.LOCK_IMEI: _lock,
    GatewayCommand.UNLOCK_IMEI: _unlock,
    GatewayCommand.DELETE: _set(state=GatewayState.DELETED),
}

TRANSITIONS: Final[dict[tuple[GatewayState, GatewayCommand], Handler]] = {
    (GatewayState.OFF, GatewayCommand.POWER_ON): _set(state=GatewayState.ON),
    (GatewayState.ON, GatewayCommand.POWER_OFF): _set(state=GatewayState.OFF),
    **{(GatewayState.OFF, command): handler for command, handler in _ANY_TIME.items()},
    **{(GatewayState.ON, command): handler for command, handler in _ANY_TIME.items()},
}
"""Every legal (state, command) pair; a deleted gateway takes no command."""
