"""The reference engine: one SimPy process per device, one event per session and state change.

SimPy only waits and feeds commands into the pure state machines (:mod:`devices.sim_card`,
:mod:`gateway.mobile_gateway`); the traffic inside a session is drawn in bulk
(:func:`devices.traffic.session_bursts`) and checked by the gateway's policies
(:mod:`gateway.policy`). Everything that happens is written as events of the ``mgwsim.events/1``
log; the metering core rates them afterwards, exactly as ``mgwsim bill`` would.

Processes (small generator functions, as in SimPy's own examples):

* :meth:`Engine.device` — power on, the PIN flow, then attach / session / back-off until the end;
* :meth:`Engine.session` — one data session until coverage is lost, the gateway changes, the
  mass-traffic policy cuts it, or the run ends;
* :meth:`Engine.operations` — the scenario's scheduled operations;
* :meth:`Engine.sms` — SMS the accounts send to their devices each day.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import simpy
from simpy.events import URGENT

from devices.coverage import Outages, route_outages
from devices.keyed_random import STREAM_FLEET, keyed_uniform
from devices.sim_card import CardState, Command, SimCard, SimSecrets
from devices.traffic import DAY, Bursts, session_bursts
from gateway.mobile_gateway import Admission, GatewayCommand, GatewayState, MobileGateway
from metering.events import BILLED_TYPES, Event, encode_extra
from metering.timeutil import format_instant
from simulator.scenario import FleetSpec, Scenario

LOG: Final = logging.getLogger(__name__)
"""Operations at INFO; each SIM's PIN and PUK flow at DEBUG (what the card answered, never a code)."""
US: Final = 1_000_000
JST_S: Final = 9 * 3600
PIN_RETRY_S: Final = 10
PUK_RETRY_S: Final = 60
ATTACH_RETRY_S: Final = 10
ATTACH_BACKOFF_S: Final = 12 * 60
ATTACH_FAILURES_BEFORE_BACKOFF: Final = 5

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
    status: str = "active"
    sessions: int = 0
    registrations: int = 0
    powered: bool = True
    power_cycles: int = 0
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
    attach_attempts: list[tuple[str, int]] = field(default_factory=list)
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
            attach_attempts=sorted(self.attach_attempts + other.attach_attempts, key=lambda attempt: attempt[1]),
            status_per_day={
                day: self.status_per_day.get(day, Counter()) + other.status_per_day.get(day, Counter()) for day in days
            },
        )


@dataclass
class DailyTraffic:
    """Per SIM and JST day (and hour, for platform messages): traffic summed over sessions."""

    days: dict[tuple[int, int], list[Any]] = field(default_factory=dict)
    hours: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    devices: dict[int, Device] = field(default_factory=dict)

    def add(self, device: Device, day: int, up: int, down: int, stamp: int, route: str, gateway: str) -> None:
        """Add one session's part of a day."""
        self.devices[device.index] = device
        entry = self.days.setdefault((device.index, day), [0, 0, stamp, route, gateway])
        entry[0] += up
        entry[1] += down
        entry[2] = max(entry[2], stamp)

    def add_messages(self, device: Device, hour: int, count: int, size: int, stamp: int) -> None:
        """Add one session's platform messages of an hour."""
        self.devices[device.index] = device
        entry = self.hours.setdefault((device.index, hour), [0, 0, stamp])
        entry[0] += count
        entry[1] += size
        entry[2] = max(entry[2], stamp)


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


def back_off(failures: int) -> int:
    """Seconds to the next attach attempt after ``failures`` consecutive refusals (10 s; 12 min after 5)."""
    return ATTACH_BACKOFF_S if failures % ATTACH_FAILURES_BEFORE_BACKOFF == 0 else ATTACH_RETRY_S


@dataclass(frozen=True)
class OpenSession:
    """A session as it opens: id, start, its bursts, and the end it would reach by itself."""

    session_id: str
    start: int
    bursts: Bursts
    planned_end: int
    cause: str


def _secrets_of(seed: int, indexes: list[int]) -> list[SimSecrets]:
    """The SIM secrets of SIM numbers ``indexes``: 20 keyed digits each (PIN 4, PUK 8, PASSCODE 8)."""
    sims = np.array(indexes, dtype=np.int64)
    periods = np.ones(len(indexes), dtype=np.int64)
    draws = np.stack([keyed_uniform(seed, STREAM_FLEET, sims, periods, draw) for draw in range(20)], axis=1)
    rows = ("".join(map(str, row)) for row in (draws * 10).astype(np.int64).tolist())
    return [SimSecrets(pin=digits[:4], puk=digits[4:12], passcode=digits[12:20]) for digits in rows]


def _described(arguments: Any) -> str:
    """An operation's arguments as ``key=value`` words (none of them is a secret)."""
    return " ".join(f"{key}={value}" for key, value in sorted(arguments.items()))


def _wrong(code: str) -> str:
    """A code of the same length that is not ``code`` (what a misconfigured firmware sends)."""
    return "".join(str((int(digit) + 1) % 10) for digit in code)


class Engine:
    """Runs one scenario with one SimPy process per device."""

    def __init__(self, scenario: Scenario, accounts: frozenset[str] | None = None) -> None:
        """Build the world at the scenario start (nothing has happened yet).

        Args:
            scenario: The scenario.
            accounts: Simulate only these accounts (a shard); ``None``: all. Accounts share
                nothing, and SIM numbers, ICCIDs and operation numbers stay those of the whole
                scenario, so the shards of a scenario together write exactly its events.
        """
        self.scenario = scenario
        self.accounts = frozenset(scenario.accounts) if accounts is None else accounts
        self.env = simpy.Environment()
        self.horizon = scenario.horizon_s
        self.origin_jst_s = scenario.start_us // US + JST_S
        self.events: list[Event] = []
        self.stats = RunStats()
        self.gateways: dict[str, MobileGateway] = {}
        self.changed: dict[str, simpy.Event] = {spec.id: self.env.event() for spec in scenario.gateways}
        self.registered: dict[str, bool] = {}
        self.month_usage: Counter[tuple[str, int]] = Counter()
        self.daily_traffic = DailyTraffic()
        self.operations_done = 0
        self.devices: list[Device] = []
        numbers = {account: number for number, account in enumerate(scenario.accounts)}
        index = 0
        for fleet in scenario.fleets:
            if fleet.account not in self.accounts:
                index += fleet.count
                continue
            secrets = _secrets_of(scenario.seed, list(range(index, index + fleet.count)))
            for position in range(fleet.count):
                iccid = fleet.iccid(position, numbers[fleet.account])
                card = SimCard(iccid, secrets[position], pin_enabled=fleet.pin != "disabled")
                imei = f"35{index:013d}"
                outages = self.initial_outages(fleet, index)
                self.devices.append(Device(index, fleet, numbers[fleet.account], iccid, imei, card, outages))
                self.registered[iccid] = False
                index += 1
        self.registered_count = 0
        self.status_counts: Counter[str] = Counter(device.status for device in self.devices)
        self.fleets: dict[str, list[Device]] = {}
        for device in self.devices:
            self.fleets.setdefault(device.fleet.name, []).append(device)

    def set_status(self, device: Device, status: str) -> None:
        """Change a device's status, keeping the counts per status (for the daily census)."""
        self.status_counts[device.status] -= 1
        self.status_counts[status] += 1
        device.status = status

    def initial_outages(self, fleet: FleetSpec, index: int) -> Outages:
        """The coverage outages a device starts with: all of them, drawn now."""
        return route_outages(fleet.route, self.scenario.seed, index, self.horizon)

    # -- events ---------------------------------------------------------------------------------

    def instant(self, at: float) -> int:
        """Epoch microseconds of scenario second ``at``."""
        return self.scenario.start_us + int(at) * US

    def emit(self, at: float, event_type: str, account: str, event_id: str, **values: Any) -> None:
        """Record one event at scenario second ``at``.

        Billed types carry their values as event fields; diagnostic types carry them as the
        event's extra fields (as the log reader would read them back).
        """
        if event_type in BILLED_TYPES:
            event = Event(ts=self.instant(at), type=event_type, account=account, id=event_id, **values)
        else:
            extra = encode_extra(values)
            event = Event(ts=self.instant(at), type=event_type, account=account, id=event_id, extra=extra)
        self.events.append(event)

    def notify(self, gateway: str) -> None:
        """Wake the sessions on ``gateway``: something about it changed."""
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
        spec = next(spec for spec in self.scenario.gateways if spec.id == gateway_id)
        now = self.env.now
        self.gateways[gateway_id] = MobileGateway(
            spec.id, spec.account, mass_traffic=spec.mass_traffic, traffic_control=spec.traffic_control
        )
        tag = f"{int(now)}.{self.operations_done}"
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
            if any(spec.terminal_lock for spec in self.scenario.gateways if spec.id == gateway_id):
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
            if self.operation_account(operation.action, operation.arguments) in self.accounts:
                self.operate(operation.action, operation.arguments)
            else:
                self.operations_done += 1  # another shard's: numbered all the same

    def operation_account(self, action: str, arguments: Any) -> str:
        """The account an operation concerns."""
        if action.startswith("gateway."):
            return next(spec.account for spec in self.scenario.gateways if spec.id == arguments["gateway"])
        if "fleet" in arguments:
            return next(fleet.account for fleet in self.scenario.fleets if fleet.name == arguments["fleet"])
        return str(arguments["account"])

    def operate(self, action: str, arguments: Any) -> None:
        """Carry out one operation now (its events' ids carry the operation's number)."""
        self.operations_done += 1
        now = self.env.now
        tag = f"{int(now)}.{self.operations_done}"
        LOG.info("%s: %s %s", format_instant(self.instant(now)), action, _described(arguments))
        if action == "gateway.create":
            self.create_gateway(arguments["gateway"])
        elif action == "gateway.delete":
            gateway = self.gateways[arguments["gateway"]]
            self.command(gateway.id, GatewayCommand.DELETE)
            self.emit(now, "gateway.deleted", gateway.account, f"{gateway.id}/deleted/{tag}", gateway=gateway.id)
            if any(spec.terminal_lock for spec in self.scenario.gateways if spec.id == gateway.id):
                self.emit(
                    now,
                    "option.disabled",
                    gateway.account,
                    f"{gateway.id}/terminal_lock-off/{tag}",
                    option="terminal_lock",
                    target=gateway.id,
                )
        elif action in ("gateway.power", "gateway.internet", "gateway.switch"):
            gateway = self.gateways[arguments["gateway"]]
            on = bool(arguments["value"])
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
            if already != on:  # setting what is already set changes nothing
                self.command(gateway.id, command)
            self.emit(
                now,
                action,
                gateway.account,
                f"{gateway.id}/{action}/{tag}",
                gateway=gateway.id,
                state="on" if on else "off",
            )
        elif action == "sim.register":
            waiting = [device for device in self.fleet_devices(arguments["fleet"]) if not self.registered[device.iccid]]
            self.register(waiting[: arguments["count"]])
        elif action == "sim.delete":
            present = [device for device in self.fleet_devices(arguments["fleet"]) if self.registered[device.iccid]]
            self.delete(present[: arguments["count"]])
        elif action == "device.power":
            for device in self.fleet_devices(arguments["fleet"])[: arguments["count"]]:
                device.powered = bool(arguments["value"])
                if device.powered and device.power_changed is not None and not device.power_changed.triggered:
                    device.power_changed.succeed()
                self.notify(device.fleet.gateway)
        elif action == "device.swap":
            for device in self.fleet_devices(arguments["fleet"])[: arguments["count"]]:
                device.swap(int(now), f"36{device.index:013d}")
                self.notify(device.fleet.gateway)
        elif action in ("option.enable", "option.disable"):
            kind = "option.enabled" if action == "option.enable" else "option.disabled"
            option, target = arguments["option"], arguments["target"]
            self.emit(now, kind, arguments["account"], f"{option}:{target}/{kind}/{tag}", option=option, target=target)
        elif action == "points.buy":
            self.emit(now, "points.purchased", arguments["account"], f"points/{tag}", points=arguments["points"])

    # -- devices --------------------------------------------------------------------------------

    def pin_flow(self, device: Device) -> Generator[simpy.Event, Any, bool]:
        """Power the card on and enter the PIN as the fleet's firmware does; False if the SIM is out."""
        fleet, account = device.fleet, device.fleet.account
        device.card, _ = device.card.apply(Command.POWER_ON)
        device.power_cycles += 1
        if device.card.state is CardState.READY:
            return True
        if device.card.state in (CardState.BLOCKED, CardState.DEAD):
            return False
        secrets = device.card.secrets
        if fleet.pin == "correct":
            device.card, answer = device.card.apply(Command.VERIFY_PIN, secrets.pin)
            LOG.debug("SIM %s: PIN entered, card answered %s", device.iccid, answer.status.name)
            return device.card.state is CardState.READY
        attempt = 0
        while device.card.state is CardState.PIN_REQUIRED:
            attempt += 1
            device.card, answer = device.card.apply(Command.VERIFY_PIN, _wrong(secrets.pin))
            LOG.debug("SIM %s: wrong PIN entered, %d tries left", device.iccid, answer.tries_left)
            self.emit(
                self.env.now,
                "sim.pin_failed",
                account,
                f"{device.iccid}/pin/{attempt}",
                sim=device.iccid,
                tries_left=answer.tries_left,
            )
            if device.card.state is CardState.PIN_REQUIRED:
                yield self.env.timeout(PIN_RETRY_S)
        self.emit(self.env.now, "sim.locked", account, f"{device.iccid}/locked", sim=device.iccid)
        self.set_status(device, "locked")
        if fleet.puk == "none" or self.env.now + fleet.puk_after_s >= self.horizon:
            return False
        yield self.env.timeout(fleet.puk_after_s)
        if fleet.puk == "correct":
            new_pin = _wrong(_wrong(secrets.pin))
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, secrets.puk, new_pin)
            LOG.debug(
                "SIM %s: unblocked with the PUK and a new PIN, card answered %s", device.iccid, answer.status.name
            )
            self.emit(self.env.now, "sim.unlocked", account, f"{device.iccid}/unlocked", sim=device.iccid)
            self.set_status(device, "unlocked")
            return True
        while device.card.state is CardState.BLOCKED:
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, _wrong(secrets.puk), "0000")
            LOG.debug("SIM %s: wrong PUK entered, %d tries left", device.iccid, answer.tries_left)
            if device.card.state is CardState.BLOCKED:
                yield self.env.timeout(PUK_RETRY_S)
        self.emit(self.env.now, "sim.dead", account, f"{device.iccid}/dead", sim=device.iccid)
        self.set_status(device, "dead")
        return False

    def note_refusal(self, device: Device, cause: str, at: int) -> None:
        """A refused attach (first of a streak with this cause): count it and write it as a diagnostic."""
        self.stats.refusals[cause] += 1
        self.emit(
            at, "session.deleted", device.fleet.account, f"{device.iccid}/refused/{at}", sim=device.iccid, cause=cause
        )

    def admit(self, device: Device) -> Admission:
        """Ask the device's gateway for a session (Art. 34, terminal lock)."""
        gateway = self.gateways.get(device.fleet.gateway)
        if gateway is None:
            return Admission(False, cause="gateway_off")
        return gateway.admit(device.iccid, device.imei, device.fleet.profile.destination, self.registered[device.iccid])

    def device(self, device: Device) -> SimProcess:
        """A device from power-on to the end of the run (and through any power cycles)."""
        yield self.env.timeout(device.index % 60)
        while self.env.now < self.horizon:
            if device.powered:
                usable = yield from self.pin_flow(device)
                if usable:
                    yield from self.attached_life(device)
            if device.powered or self.env.now >= self.horizon:
                return
            if device.card.powered:
                device.card, _ = device.card.apply(Command.POWER_OFF)
            device.power_changed = self.env.event()
            yield device.power_changed | self.env.timeout(self.horizon - self.env.now)

    def attached_life(self, device: Device) -> SimProcess:
        """Attach, keep a session, re-attach with back-off, until power-off or the end of the run."""
        failures, last_refusal = 0, ""
        while self.env.now < self.horizon and device.powered:
            outage, change = device.outages.state_at(int(self.env.now))
            if outage:
                yield self.env.timeout(min(change, self.horizon) - self.env.now)
                continue
            admission = self.admit(device)
            self.stats.attach_attempts.append((device.iccid, int(self.env.now)))
            if not admission.ok:
                if admission.cause != last_refusal:
                    self.note_refusal(device, admission.cause, int(self.env.now))
                last_refusal = admission.cause
                failures += 1
                yield self.env.timeout(min(back_off(failures), self.horizon - self.env.now))
                continue
            failures, last_refusal = 0, ""
            yield from self.session(device, admission)

    def session_created(self, device: Device, session_id: str, start: int, route: str) -> None:
        """Write ``session.created`` (with the address and DNS the gateway gives the device)."""
        gateway = self.gateways.get(device.fleet.gateway)
        self.emit_session_created(device, session_id, start, route, gateway)

    def emit_session_created(
        self, device: Device, session_id: str, start: int, route: str, gateway: MobileGateway | None
    ) -> None:
        """Write ``session.created`` for a session that opened on ``gateway`` as it was at ``start``.

        Besides the address and DNS the gateway gave, it names the IMEI of the device the SIM was
        in and, under terminal lock, the IMEI the gateway locked the SIM to (for disputes).
        """
        assert gateway is not None, "a session opens only on an existing gateway"
        locked = gateway.locked_imei(device.iccid)
        self.emit(
            start,
            "session.created",
            device.fleet.account,
            f"{session_id}/created",
            sim=device.iccid,
            gateway=gateway.id,
            session=session_id,
            route=route,
            address=gateway.address_of(device.iccid),
            dns=gateway.dns,
            imei=device.imei_at(start),
            **({} if locked is None else {"locked_imei": locked}),
        )

    def session_deleted(self, device: Device, session_id: str, start: int, end: int, cause: str) -> None:
        """Write ``session.deleted`` with its cause and the IMEI of the device in its last second."""
        self.emit(
            end,
            "session.deleted",
            device.fleet.account,
            f"{session_id}/deleted",
            sim=device.iccid,
            gateway=device.fleet.gateway,
            session=session_id,
            cause=cause,
            imei=device.imei_at(max(start, end - 1)),
        )

    def open_session(self, device: Device, admission: Admission, start: int) -> OpenSession:
        """Open a session at ``start``: its id, its bursts, and when and why it would end by itself."""
        fleet = device.fleet
        gateway = self.gateways[fleet.gateway]
        device.sessions += 1
        session_id = f"{device.iccid}-{device.sessions}"
        self.stats.sessions += 1
        if self.scenario.traffic_records == "session":
            self.session_created(device, session_id, start, admission.route)
        _, coverage_ends = device.outages.state_at(start)
        limit = min(coverage_ends, self.horizon)
        natural = "coverage_lost" if coverage_ends < self.horizon else "end_of_run"
        policy = gateway.mass_traffic
        if policy is None:
            bursts = session_bursts(fleet.profile, self.scenario.seed, device.index, start, limit, self.origin_jst_s)
            return OpenSession(session_id, start, bursts, limit, natural)
        # look for the mass-traffic cut in growing prefixes: a cut only looks back one window
        reach = start + 2 * policy.window_s
        while True:
            until = min(limit, reach)
            bursts = session_bursts(fleet.profile, self.scenario.seed, device.index, start, until, self.origin_jst_s)
            cut = policy.cut_at(bursts.times, bursts.volume())
            if cut is not None:
                return OpenSession(session_id, start, bursts, int(bursts.times[cut]) + 1, "mass_traffic")
            if until == limit:
                return OpenSession(session_id, start, bursts, limit, natural)
            reach = start + 4 * (reach - start)

    def close_session(self, device: Device, admission: Admission, session: OpenSession, end: int, cause: str) -> None:
        """Close a session at ``end``: count it, account its traffic, write its end."""
        self.stats.closures[cause] += 1
        if cause == "mass_traffic":
            self.stats.interruptions_per_day[(self.origin_jst_s + end) // DAY] += 1
        bursts = session.bursts
        kept = bursts.cut(int(np.searchsorted(bursts.times, end, side="left")))
        self.record_traffic(device, session.session_id, end, kept, admission.route)
        if self.scenario.traffic_records == "session":
            self.session_deleted(device, session.session_id, session.start, end, cause)

    def session(self, device: Device, admission: Admission) -> SimProcess:
        """One data session: open, wait for its end or a change of the gateway, close."""
        session = self.open_session(device, admission, int(self.env.now))
        cause = session.cause
        while self.env.now < session.planned_end:
            timer = self.env.timeout(session.planned_end - self.env.now)
            yield timer | self.changed[device.fleet.gateway]
            if timer.processed:
                break
            if not device.powered:
                cause = "power_off"
                break
            again = self.admit(device)
            if not again.ok or again.route != admission.route:
                cause = again.cause or "route_changed"
                break
        self.close_session(device, admission, session, int(self.env.now), cause)

    def record_traffic(self, device: Device, session_id: str, end: int, bursts: Bursts, route: str) -> None:
        """Account a session's traffic: per JST day (and platform messages per JST hour).

        A day's record is stamped at the last second the session spent in that day, so it always
        lies inside the session (and so inside the SIM's registration). With ``traffic_records =
        "session"`` every session writes its own records; with ``"daily"`` the records of a SIM are
        summed per day (and hour) and written when the run ends.
        """
        if not len(bursts):
            return
        fleet = device.fleet
        gateway = self.gateways[fleet.gateway]
        up, down = bursts.up, bursts.down
        jst = self.origin_jst_s + bursts.times
        if gateway.traffic_control is not None:
            up, down = self.throttle(device, gateway.traffic_control, jst, up, down)
        days = jst // DAY
        daily = self.scenario.traffic_records == "daily"
        for day in np.unique(days).tolist():
            rows = days == day
            day_up, day_down = int(up[rows].sum()), int(down[rows].sum())
            if not day_up + day_down:
                continue
            stamp = min(end, (day + 1) * DAY - self.origin_jst_s) - 1
            self.month_usage[(device.iccid, int(self.month_index(np.array([day * DAY]))[0]))] += day_up + day_down
            self.stats.traffic_per_day[day] += day_up + day_down
            if daily:
                self.daily_traffic.add(device, day, day_up, day_down, stamp, route, gateway.id)
            else:
                self.emit(
                    stamp,
                    "sim.traffic",
                    fleet.account,
                    f"{session_id}/{day}",
                    sim=device.iccid,
                    up_bytes=day_up,
                    down_bytes=day_down,
                    route=route,
                    session=session_id,
                    gateway=gateway.id,
                )
        if fleet.mono and bursts.messages.any():
            hours = jst // 3600
            carrying = bursts.messages > 0
            for hour in np.unique(hours[carrying]).tolist():
                rows = carrying & (hours == hour)
                count = int(bursts.messages[rows].sum())
                size = int(bursts.up[rows].sum() + bursts.down[rows].sum())
                stamp = int(bursts.times[rows][-1])
                if daily:
                    self.daily_traffic.add_messages(device, hour, count, size, stamp)
                else:
                    self.emit(
                        stamp,
                        "mono.message",
                        fleet.account,
                        f"{session_id}/m/{hour}",
                        sim=device.iccid,
                        count=count,
                        bytes=size,
                    )

    def throttle(self, device: Device, control: Any, jst: Any, up: Any, down: Any) -> tuple[Any, Any]:
        """Apply the gateway's traffic control to a session's bursts, month by month."""
        months = self.month_index(jst)
        up, down = up.copy(), down.copy()
        throttled = False
        for month in np.unique(months).tolist():
            rows = months == month
            volume = up[rows] + down[rows]
            allowed, hit = control.apply(volume, self.month_usage[(device.iccid, month)])
            scale = np.where(volume > 0, allowed / np.maximum(volume, 1), 0)
            up[rows] = (up[rows] * scale).astype(np.int64)
            down[rows] = allowed - up[rows]
            throttled |= hit
        self.stats.throttled_sessions += int(throttled)
        return up, down

    @staticmethod
    def month_index(jst_seconds: Any) -> Any:
        """JST month indexes (year * 12 + month - 1) of JST epoch seconds."""
        return np.asarray(jst_seconds, dtype="datetime64[s]").astype("datetime64[M]").astype(np.int64) + 1970 * 12

    def flush_daily(self) -> None:
        """Write the per-day traffic and per-hour message records of ``traffic_records = "daily"``."""
        for (index, day), (up, down, stamp, route, gateway) in sorted(self.daily_traffic.days.items()):
            device = self.daily_traffic.devices[index]
            self.emit(
                stamp,
                "sim.traffic",
                device.fleet.account,
                f"{device.iccid}/d/{day}",
                sim=device.iccid,
                up_bytes=up,
                down_bytes=down,
                route=route,
                gateway=gateway,
            )
        for (index, hour), (count, size, stamp) in sorted(self.daily_traffic.hours.items()):
            device = self.daily_traffic.devices[index]
            self.emit(
                stamp,
                "mono.message",
                device.fleet.account,
                f"{device.iccid}/m/{hour}",
                sim=device.iccid,
                count=count,
                bytes=size,
            )

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

    def run(self, progress: Any = None) -> Sequence[Event]:
        """Run to the end of the last month; return the events in log order.

        The log is ordered by time; events at the same instant keep the order in which they
        happened (a registration before the traffic it allows), which is the tie order the
        metering core reads.

        Args:
            progress: Called with the fraction of simulated time done, about once a simulated day.
        """
        self.start()
        self.env.process(self.operations())
        self.env.process(self.sms())
        self.env.process(self.census())
        for device in self.devices:
            self.env.process(self.device(device))
        step = DAY
        at = step
        while at < self.horizon:
            self.env.run(until=at)
            if progress is not None:
                progress(at / self.horizon)
            at += step
        self.env.run(until=self.horizon + 1)  # sessions still open close at the horizon
        self.flush_daily()
        if progress is not None:
            progress(1.0)
        return sorted(self.events, key=lambda event: event.ts)
