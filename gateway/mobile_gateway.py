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
from collections.abc import Callable, Mapping, Sequence
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
        sims: ICCIDs registered to it.
        hosts: ICCID → host number of its IP address (IP address assignment, in registration order).
        next_host: The host number the next SIM gets.
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
    sims: frozenset[str] = frozenset()
    hosts: Mapping[str, int] = field(default_factory=dict)
    next_host: int = 16
    imei_locks: Mapping[str, str] = field(default_factory=dict)
    dns: str = "10.0.0.53"
    mass_traffic: MassTrafficPolicy | None = field(default=None)
    traffic_control: TrafficControl | None = field(default=None)

    def apply(self, command: GatewayCommand, sims: Sequence[str] = (), imeis: Sequence[str] = ()) -> MobileGateway:
        """Apply one command.

        Args:
            command: The command.
            sims: The ICCIDs of SIM and IMEI-lock commands (several at once: registering a fleet
                is one command).
            imeis: For ``LOCK_IMEI``, the IMEI of each SIM.

        Raises:
            IllegalGatewayCommand: When the command is not possible in the gateway's state, or a
                SIM command does not fit the registry (the gateway is then unchanged).
        """
        handler = TRANSITIONS.get((self.state, command))
        if handler is None:
            raise IllegalGatewayCommand(f"{command.value} is not possible on gateway {self.id} ({self.state.value})")
        return handler(self, tuple(sims), tuple(imeis))

    def address_of(self, sim: str) -> str:
        """The IP address the gateway assigned to a registered SIM (IP address assignment)."""
        return str(ipaddress.IPv4Address("10.128.0.0") + self.hosts[sim])

    def locked_imei(self, sim: str) -> str | None:
        """The IMEI a SIM is locked to, if terminal lock applies to it."""
        return self.imei_locks.get(sim)

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


Handler = Callable[[MobileGateway, tuple[str, ...], tuple[str, ...]], MobileGateway]


def _set(**changes: object) -> Handler:
    return lambda gateway, _sims, _imeis: replace(gateway, **changes)  # type: ignore[arg-type]


def _add_sims(gateway: MobileGateway, sims: tuple[str, ...], _imeis: tuple[str, ...]) -> MobileGateway:
    present = [sim for sim in sims if sim in gateway.sims]
    if present or len(set(sims)) != len(sims):
        raise IllegalGatewayCommand(f"SIM {(present or sims)[0]} is already registered to gateway {gateway.id}")
    hosts = dict(gateway.hosts)
    hosts.update((sim, gateway.next_host + offset) for offset, sim in enumerate(sims))
    return replace(gateway, sims=gateway.sims | frozenset(sims), hosts=hosts, next_host=gateway.next_host + len(sims))


def _remove_sims(gateway: MobileGateway, sims: tuple[str, ...], _imeis: tuple[str, ...]) -> MobileGateway:
    missing = [sim for sim in sims if sim not in gateway.sims]
    if missing:
        raise IllegalGatewayCommand(f"SIM {missing[0]} is not registered to gateway {gateway.id}")
    gone = frozenset(sims)
    hosts = {sim: host for sim, host in gateway.hosts.items() if sim not in gone}
    locks = {sim: imei for sim, imei in gateway.imei_locks.items() if sim not in gone}
    return replace(gateway, sims=gateway.sims - gone, hosts=hosts, imei_locks=locks)


def _lock(gateway: MobileGateway, sims: tuple[str, ...], imeis: tuple[str, ...]) -> MobileGateway:
    if len(sims) != len(imeis) or not all(imeis) or any(sim not in gateway.sims for sim in sims):
        raise IllegalGatewayCommand(f"terminal lock needs SIMs registered to gateway {gateway.id} and their IMEIs")
    return replace(gateway, imei_locks={**gateway.imei_locks, **dict(zip(sims, imeis, strict=True))})


def _unlock(gateway: MobileGateway, sims: tuple[str, ...], _imeis: tuple[str, ...]) -> MobileGateway:
    gone = frozenset(sims)
    return replace(gateway, imei_locks={sim: imei for sim, imei in gateway.imei_locks.items() if sim not in gone})


_ANY_TIME: Final[dict[GatewayCommand, Handler]] = {
    GatewayCommand.CONNECT_SWITCH: _set(switch=True),
    GatewayCommand.DISCONNECT_SWITCH: _set(switch=False),
    GatewayCommand.ENABLE_INTERNET: _set(internet=True),
    GatewayCommand.DISABLE_INTERNET: _set(internet=False),
    GatewayCommand.ADD_SIM: _add_sims,
    GatewayCommand.REMOVE_SIM: _remove_sims,
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
