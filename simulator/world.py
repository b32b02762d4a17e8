"""The world both engines share: the scenario's SIMs and devices, gateways, operations, census.

An engine *has* a world (composition): the world owns the SimPy environment, builds the devices
and gateways at the scenario start, carries out the scheduled operations (gateway settings,
registrations, swaps, device power), sends the daily SMS and counts the SIMs by state each day.
What the devices do in between — PIN entry, attach, sessions, traffic — is each engine's own: the
reference engine (:mod:`simulator.engine`) steps every device in SimPy, the fast engine
(:mod:`simulator.fast_engine`) derives the sessions in bulk. An engine that must know of a change
as it happens (the fast engine records the gateways' and registrations' timelines) passes
callbacks (:class:`WorldWatch`).

Every event is written through the world's :class:`~simulator.event_writer.EventWriter`.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import simpy
from simpy.events import URGENT

from devices.coverage import Outages, route_outages
from devices.device import DeviceMachine
from devices.keyed_random import STREAM_FLEET, keyed_uniform
from devices.sim_card import SimCard, SimSecrets
from devices.traffic import DAY
from gateway.mobile_gateway import Admission, GatewayCommand, GatewayState, MobileGateway
from metering.timeutil import format_instant
from simulator.event_writer import EventWriter
from simulator.operations import (
    OPERATIONS,
    Arguments,
    DevicePower,
    FleetOperation,
    GatewayOperation,
    GatewaySetting,
)
from simulator.scenario import FleetSpec, GatewaySpec, Scenario

LOG: Final = logging.getLogger("simulator.engine")
"""Operations at INFO; each SIM's PIN and PUK flow at DEBUG (what the card answered, never a code)."""
US: Final = 1_000_000
JST_S: Final = 9 * 3600

SimProcess = Generator[simpy.Event, Any, None]


@dataclass
class Device:
    """One device with its SIM.

    Attributes:
        index: Global SIM number (the key of its random streams).
        fleet: Its fleet.
        account_number: Position of its account (part of the ICCID).
        iccid: The SIM's ICCID.
        imei: The device's IMEI now (changes on ``device.swap``).
        card: The SIM card state machine.
        machine: The device's own state machine (stepped by the reference engine).
        outages: Its coverage outages.
        status: ``active``, ``locked``, ``unlocked``, ``dead``.
        sessions: Sessions opened so far (numbers the session ids).
    """

    index: int
    fleet: FleetSpec
    account_number: int
    iccid: str
    imei: str
    card: SimCard
    outages: Outages
    machine: DeviceMachine = field(default_factory=DeviceMachine)
    status: str = "active"
    sessions: int = 0
    registrations: int = 0
    powered: bool = True
    power_changed: simpy.Event | None = None
    imeis: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.imeis:
            self.imeis.append((0, self.imei))

    def swap(self, instant: int, imei: str) -> None:
        """Put the SIM into the device with ``imei`` from ``instant`` on (``device.swap``)."""
        record_value(self.imeis, instant, imei)
        self.imei = imei

    def imei_at(self, instant: int) -> str:
        """The IMEI of the device the SIM was in at ``instant`` (after every swap at that instant)."""
        return str(value_at(self.imeis, instant, self.imeis[0][1]))


def value_at(history: list[tuple[int, Any]], instant: int, default: Any) -> Any:
    """The value of a history of ``(instant, value)`` pairs at ``instant`` (``default`` before its first)."""
    position = bisect.bisect_right(history, instant, key=lambda entry: entry[0]) - 1
    return history[position][1] if position >= 0 else default


def record_value(history: list[tuple[int, Any]], instant: int, value: Any) -> None:
    """Record a value from ``instant`` on (a later value at the same instant replaces it)."""
    if history and history[-1][0] == instant:
        history[-1] = (instant, value)
    else:
        history.append((instant, value))


@dataclass
class RunStats:
    """What a run did, for the summary table and the report."""

    sessions: int = 0
    closures: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    throttled_sessions: int = 0
    traffic_per_day: Counter[int] = field(default_factory=Counter)
    interruptions_per_day: Counter[int] = field(default_factory=Counter)
    status_per_day: dict[int, Counter[str]] = field(default_factory=dict)

    @property
    def interruptions(self) -> int:
        """Sessions cut by the mass-traffic policy (Art. 49(2))."""
        return self.closures["mass_traffic"]

    def merged(self, other: RunStats) -> RunStats:
        """The figures of two shards of one run together."""
        days = sorted(set(self.status_per_day) | set(other.status_per_day))
        return RunStats(
            sessions=self.sessions + other.sessions,
            closures=self.closures + other.closures,
            refusals=self.refusals + other.refusals,
            throttled_sessions=self.throttled_sessions + other.throttled_sessions,
            traffic_per_day=self.traffic_per_day + other.traffic_per_day,
            interruptions_per_day=self.interruptions_per_day + other.interruptions_per_day,
            status_per_day={
                day: self.status_per_day.get(day, Counter()) + other.status_per_day.get(day, Counter()) for day in days
            },
        )


class UrgentTimeout(simpy.events.Event):
    """A timeout processed before ordinary events of the same instant (scheduled operations).

    Operations at an instant therefore always come before what devices do at that instant, in
    every engine. Built like SimPy's own ``Timeout``, with ``URGENT`` priority.
    """

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        """Schedule the timeout ``delay`` seconds from now."""
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, URGENT, delay)


def secrets_of(seed: int, indexes: list[int]) -> list[SimSecrets]:
    """The SIM secrets of SIM numbers ``indexes``: 20 keyed digits each (PIN 4, PUK 8, PASSCODE 8)."""
    sims = np.array(indexes, dtype=np.int64)
    periods = np.ones(len(indexes), dtype=np.int64)
    draws = np.stack([keyed_uniform(seed, STREAM_FLEET, sims, periods, draw) for draw in range(20)], axis=1)
    rows = ("".join(map(str, row)) for row in (draws * 10).astype(np.int64).tolist())
    return [SimSecrets(pin=digits[:4], puk=digits[4:12], passcode=digits[12:20]) for digits in rows]


def described(arguments: Arguments) -> str:
    """An operation's arguments as ``key=value`` words (none of them is a secret)."""
    return " ".join(f"{key}={value}" for key, value in sorted(asdict(arguments).items()))


@dataclass
class WorldWatch:
    """What an engine wants to hear of the world's changes as they happen (all optional).

    Attributes:
        gateway_changed: Called with a gateway's id after any change of it (before its sessions wake).
        registration_changed: Called with SIMs and whether they are now registered.
        power_changed: Called with a device and whether it is now powered.
    """

    gateway_changed: Callable[[str], None] | None = None
    registration_changed: Callable[[list[Device], bool], None] | None = None
    power_changed: Callable[[Device, bool], None] | None = None


class World:
    """The SIMs, devices and gateways of a scenario (or of a shard's accounts), and their operations."""

    def __init__(
        self,
        scenario: Scenario,
        accounts: frozenset[str] | None = None,
        outages: Callable[[FleetSpec, int], Outages] | None = None,
        watch: WorldWatch | None = None,
    ) -> None:
        """Build the world at the scenario start (nothing has happened yet).

        Args:
            scenario: The scenario.
            accounts: Simulate only these accounts (a shard); ``None``: all. Accounts share
                nothing, and SIM numbers, ICCIDs and operation numbers stay those of the whole
                scenario, so the shards of a scenario together write exactly its events.
            outages: The coverage outages a device starts with, from its fleet and SIM number;
                default: all of them, drawn now (:meth:`all_outages`).
            watch: Callbacks of the engine on the world's changes.
        """
        self.scenario = scenario
        self.accounts = frozenset(scenario.accounts) if accounts is None else accounts
        self.env = simpy.Environment()
        self.horizon = scenario.horizon_s
        self.origin_jst_s = scenario.start_us // US + JST_S
        draw_outages = outages or self.all_outages
        self.writer = EventWriter(scenario.start_us)
        self.watch = watch or WorldWatch()
        self.stats = RunStats()
        self.gateways: dict[str, MobileGateway] = {}
        self.specs: dict[str, GatewaySpec] = {spec.id: spec for spec in scenario.gateways}
        """The scenario's gateways by id."""
        self.changed: dict[str, simpy.Event] = {spec.id: self.env.event() for spec in scenario.gateways}
        self.registered: dict[str, bool] = {}
        self.operations_done = 0
        self.devices: list[Device] = []
        numbers = {account: number for number, account in enumerate(scenario.accounts)}
        index = 0
        for fleet in scenario.fleets:
            if fleet.account not in self.accounts:
                index += fleet.count
                continue
            secrets = secrets_of(scenario.seed, list(range(index, index + fleet.count)))
            for position in range(fleet.count):
                iccid = fleet.iccid(position, numbers[fleet.account])
                card = SimCard(iccid, secrets[position], pin_enabled=fleet.pin != "disabled")
                imei = f"35{index:013d}"
                drawn = draw_outages(fleet, index)
                self.devices.append(Device(index, fleet, numbers[fleet.account], iccid, imei, card, drawn))
                self.registered[iccid] = False
                index += 1
        self.registered_count = 0
        self.status_counts: Counter[str] = Counter(device.status for device in self.devices)
        self.fleets: dict[str, list[Device]] = {}
        for device in self.devices:
            self.fleets.setdefault(device.fleet.name, []).append(device)
        self.sim_ranks: dict[str, int] = {device.iccid: device.index for device in self.devices}
        """Each SIM's device number: the order of its events among an instant's of other SIMs in the log
        (:func:`~metering.eventlog.run_log_order`)."""

    def set_status(self, device: Device, status: str) -> None:
        """Change a device's status, keeping the counts per status (for the daily census)."""
        self.status_counts[device.status] -= 1
        self.status_counts[status] += 1
        device.status = status

    def all_outages(self, fleet: FleetSpec, index: int) -> Outages:
        """All the coverage outages of device ``index`` over the run."""
        return route_outages(fleet.route, self.scenario.seed, index, self.horizon)

    # -- events ---------------------------------------------------------------------------------

    def emit(self, at: float, event_type: str, account: str, event_id: str, **values: Any) -> None:
        """Write one event at scenario second ``at`` (see :meth:`EventWriter.emit`)."""
        self.writer.emit(at, event_type, account, event_id, **values)

    def notify(self, gateway: str) -> None:
        """Wake the sessions on ``gateway``: something about it changed."""
        if self.watch.gateway_changed is not None:
            self.watch.gateway_changed(gateway)
        event = self.changed[gateway]
        self.changed[gateway] = self.env.event()
        event.succeed()

    # -- operations -----------------------------------------------------------------------------

    def command(
        self, gateway_id: str, command: GatewayCommand, sims: tuple[str, ...] = (), imeis: tuple[str, ...] = ()
    ) -> None:
        """Apply a command to a gateway and wake its sessions."""
        self.gateways[gateway_id] = self.gateways[gateway_id].apply(command, sims, imeis)
        self.notify(gateway_id)

    def create_gateway(self, gateway_id: str) -> None:
        """Create a gateway with its configured settings (Art. 41: the fee starts)."""
        spec = self.specs[gateway_id]
        now = self.env.now
        self.gateways[gateway_id] = MobileGateway(
            spec.id, spec.account, mass_traffic=spec.mass_traffic, traffic_control=spec.traffic_control
        )
        tag = self.tag()
        self.emit(now, "gateway.created", spec.account, f"{spec.id}/created/{tag}", gateway=spec.id)
        for wanted, command in (
            (spec.switch, GatewayCommand.CONNECT_SWITCH),
            (spec.internet, GatewayCommand.ENABLE_INTERNET),
            (spec.power, GatewayCommand.POWER_ON),
        ):
            if wanted:
                self.command(spec.id, command)
        if spec.terminal_lock:
            self.emit(
                now,
                "option.enabled",
                spec.account,
                f"{spec.id}/terminal_lock/{tag}",
                option="terminal_lock",
                target=spec.id,
            )
        waiting = [
            device for device in self.devices if device.fleet.gateway == spec.id and self.registered[device.iccid]
        ]
        self.join_gateways(waiting)
        self.notify(spec.id)

    def register(self, devices: list[Device]) -> None:
        """Register SIMs in the system and to their fleet's gateway (and the Mono Platform)."""
        now = self.env.now
        for device in devices:
            fleet = device.fleet
            device.registrations += 1
            self.registered_count += not self.registered[device.iccid]
            self.registered[device.iccid] = True
            number = device.registrations
            self.emit(now, "sim.registered", fleet.account, f"{device.iccid}/registered/{number}", sim=device.iccid)
            if fleet.mono:
                self.emit(
                    now, "mono.device.registered", fleet.account, f"{device.iccid}/device/{number}", sim=device.iccid
                )
        self.join_gateways(devices)
        if self.watch.registration_changed is not None:
            self.watch.registration_changed(devices, True)

    def join_gateways(self, devices: list[Device]) -> None:
        """Register SIMs to their fleet's gateway, where it exists (terminal lock to the device's IMEI)."""
        for gateway_id, group in self._by_gateway(devices).items():
            gateway = self.gateways.get(gateway_id)
            if gateway is None or gateway.state is GatewayState.DELETED:
                continue
            adding = [device for device in group if device.iccid not in gateway.sims]
            if not adding:
                continue
            self.command(gateway_id, GatewayCommand.ADD_SIM, tuple(device.iccid for device in adding))
            if self.specs[gateway_id].terminal_lock:
                self.command(
                    gateway_id,
                    GatewayCommand.LOCK_IMEI,
                    tuple(device.iccid for device in adding),
                    tuple(device.imei for device in adding),
                )

    def delete(self, devices: list[Device]) -> None:
        """Delete SIMs (Art. 38: the deletion request) and their device IDs."""
        now = self.env.now
        for device in devices:
            fleet = device.fleet
            self.registered_count -= self.registered[device.iccid]
            self.registered[device.iccid] = False
            number = device.registrations
            if fleet.mono:
                self.emit(
                    now,
                    "mono.device.deleted",
                    fleet.account,
                    f"{device.iccid}/device-deleted/{number}",
                    sim=device.iccid,
                )
            self.emit(now, "sim.deleted", fleet.account, f"{device.iccid}/deleted/{number}", sim=device.iccid)
        for gateway_id, group in self._by_gateway(devices).items():
            gateway = self.gateways.get(gateway_id)
            live = gateway is not None and gateway.state is not GatewayState.DELETED
            present = tuple(device.iccid for device in group if live and device.iccid in gateway.sims)  # type: ignore[union-attr]
            if present:
                self.command(gateway_id, GatewayCommand.REMOVE_SIM, present)
            else:
                self.notify(gateway_id)
        if self.watch.registration_changed is not None:
            self.watch.registration_changed(devices, False)

    @staticmethod
    def _by_gateway(devices: list[Device]) -> dict[str, list[Device]]:
        groups: dict[str, list[Device]] = {}
        for device in devices:
            groups.setdefault(device.fleet.gateway, []).append(device)
        return groups

    def fleet_devices(self, name: str) -> list[Device]:
        """The devices of a fleet, in order."""
        return self.fleets.get(name, [])

    def operations(self) -> SimProcess:
        """Carry out the scheduled operations at their times."""
        for operation in self.scenario.operations:
            if operation.at > self.env.now:
                yield UrgentTimeout(self.env, operation.at - self.env.now)
            if self.operation_account(operation.arguments) in self.accounts:
                self.operate(operation.action, operation.arguments)
            else:
                self.operations_done += 1  # another shard's: numbered all the same

    def operation_account(self, arguments: Arguments) -> str:
        """The account an operation concerns."""
        if isinstance(arguments, GatewayOperation | GatewaySetting):
            return self.specs[arguments.gateway].account
        if isinstance(arguments, FleetOperation | DevicePower):
            return next(fleet.account for fleet in self.scenario.fleets if fleet.name == arguments.fleet)
        return arguments.account

    def operate(self, action: str, arguments: Arguments) -> None:
        """Carry out one operation now, by its handler in :data:`~simulator.operations.OPERATIONS`."""
        self.operations_done += 1
        LOG.info("%s: %s %s", format_instant(self.writer.instant(self.env.now)), action, described(arguments))
        OPERATIONS[action].handler(self, action, arguments)

    def tag(self) -> str:
        """What makes the ids of the current operation's events unique: its second and number."""
        return f"{int(self.env.now)}.{self.operations_done}"

    def delete_gateway(self, gateway_id: str) -> None:
        """Delete a gateway (Art. 41: the fee ends), and its terminal lock."""
        now, tag = self.env.now, self.tag()
        gateway = self.gateways[gateway_id]
        self.command(gateway.id, GatewayCommand.DELETE)
        self.emit(now, "gateway.deleted", gateway.account, f"{gateway.id}/deleted/{tag}", gateway=gateway.id)
        if self.specs[gateway.id].terminal_lock:
            self.emit(
                now,
                "option.disabled",
                gateway.account,
                f"{gateway.id}/terminal_lock-off/{tag}",
                option="terminal_lock",
                target=gateway.id,
            )

    def set_gateway(self, action: str, gateway_id: str, on: bool) -> None:
        """``gateway.power``, ``gateway.internet`` or ``gateway.switch`` (setting what is set changes nothing)."""
        now, tag = self.env.now, self.tag()
        gateway = self.gateways[gateway_id]
        command = {
            "gateway.power": (GatewayCommand.POWER_ON, GatewayCommand.POWER_OFF),
            "gateway.internet": (GatewayCommand.ENABLE_INTERNET, GatewayCommand.DISABLE_INTERNET),
            "gateway.switch": (GatewayCommand.CONNECT_SWITCH, GatewayCommand.DISCONNECT_SWITCH),
        }[action][0 if on else 1]
        already = {
            "gateway.power": gateway.state is GatewayState.ON,
            "gateway.internet": gateway.internet,
            "gateway.switch": gateway.switch,
        }[action]
        if already != on:
            self.command(gateway.id, command)
        self.emit(
            now,
            action,
            gateway.account,
            f"{gateway.id}/{action}/{tag}",
            gateway=gateway.id,
            state="on" if on else "off",
        )

    def power_devices(self, fleet: str, count: int, on: bool) -> None:
        """Power the first ``count`` devices of a fleet on or off."""
        for device in self.fleet_devices(fleet)[:count]:
            device.powered = on
            if self.watch.power_changed is not None:
                self.watch.power_changed(device, device.powered)
            self.notify(device.fleet.gateway)

    def swap_devices(self, fleet: str, count: int) -> None:
        """Put the first ``count`` SIMs of a fleet into new devices (new IMEIs)."""
        for device in self.fleet_devices(fleet)[:count]:
            device.swap(int(self.env.now), f"36{device.index:013d}")
            self.notify(device.fleet.gateway)

    def change_option(self, enable: bool, account: str, option: str, target: str) -> None:
        """Enable or disable a sub-option for a target."""
        kind = "option.enabled" if enable else "option.disabled"
        event_id = f"{option}:{target}/{kind}/{self.tag()}"
        self.emit(self.env.now, kind, account, event_id, option=option, target=target)

    def buy_points(self, account: str, points: int) -> None:
        """An account buys prepaid points."""
        self.emit(self.env.now, "points.purchased", account, f"points/{self.tag()}", points=points)

    def admit(self, device: Device) -> Admission:
        """Ask the device's gateway for a session (Art. 34, terminal lock)."""
        gateway = self.gateways.get(device.fleet.gateway)
        if gateway is None:
            return Admission(False, cause="gateway_off")
        return gateway.admit(device.iccid, device.imei, device.fleet.profile.destination, self.registered[device.iccid])

    def sms(self) -> SimProcess:
        """Each day at noon JST, the accounts send their devices' daily SMS."""
        senders = [device for device in self.devices if device.fleet.profile.sms_per_day]
        if not senders:
            return
        first_day = self.origin_jst_s // DAY
        day = first_day
        while True:
            noon = day * DAY + 12 * 3600 - self.origin_jst_s
            if noon >= self.horizon:
                return
            if noon >= self.env.now:
                yield self.env.timeout(noon - self.env.now)
                for device in senders:
                    if self.registered[device.iccid]:
                        profile = device.fleet.profile
                        self.emit(
                            noon,
                            "sms.sent",
                            device.fleet.account,
                            f"{device.iccid}/sms/{day}",
                            kind=profile.sms_kind,
                            count=profile.sms_per_day,
                            delivered=device.outages.state_at(noon)[0] is False,
                        )
            day += 1

    def census(self) -> SimProcess:
        """Once a day, count the SIMs by state (for the report)."""
        day = 0
        while day * DAY < self.horizon:
            counts = +self.status_counts
            counts["registered"] = self.registered_count
            self.stats.status_per_day[day] = counts
            day += 1
            yield self.env.timeout(DAY)

    # -- the run --------------------------------------------------------------------------------

    def start(self) -> None:
        """At time 0: create the gateways and register the fleets that start registered."""
        for spec in self.scenario.gateways:
            if spec.create and spec.account in self.accounts:
                self.create_gateway(spec.id)
        self.register([device for device in self.devices if device.fleet.register])

    def begin(self) -> None:
        """At time 0: the gateways and registrations of the start, and the world's own processes."""
        self.start()
        self.env.process(self.operations())
        self.env.process(self.sms())
        self.env.process(self.census())
