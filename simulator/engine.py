"""The reference engine: one SimPy process per device, one event per session and state change.

The engine *has* a :class:`~simulator.world.World` (the SIMs, gateways, operations and census it
shares with the fast engine, by composition) and steps each device's pure state machine
(:mod:`devices.device`) event by event: power, PIN entry driving the SIM card
(:mod:`devices.sim_card`), attach with back-off, sessions. SimPy only waits; the traffic inside a
session is drawn in bulk (:func:`devices.traffic.session_bursts`) and checked by the gateway's
policies (:mod:`gateway.policy`). Everything that happens is written through the world's
:class:`~simulator.event_writer.EventWriter` as events of the ``mgwsim.events/1`` log; the
metering core rates them afterwards, exactly as ``mgwsim bill`` would.

Processes (small generator functions, as in SimPy's own examples):

* :meth:`Engine.device` — power on, the PIN flow, then attach / session / back-off until the end;
* :meth:`Engine.session` — one data session until coverage is lost, the gateway changes, the
  mass-traffic policy cuts it, or the run ends;
* the world's operations, SMS and census (:class:`~simulator.world.World`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from devices.device import PIN_RETRY_S, PUK_RETRY_S, DeviceEvent, DeviceState, wrong_code
from devices.sim_card import CardState, Command
from devices.traffic import DAY, Bursts, session_bursts
from gateway.mobile_gateway import Admission
from metering.eventlog import run_log_order
from metering.events import Event
from metering.timeutil import month_indexes
from simulator.scenario import Scenario
from simulator.world import LOG, US, Device, RunStats, SimProcess, World, WorldWatch

__all__ = ["US", "DailyTraffic", "Engine", "OpenSession", "RunStats", "SessionSteps"]


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


@dataclass(frozen=True)
class OpenSession:
    """A session as it opens: id, start, its bursts, and the end it would reach by itself."""

    session_id: str
    start: int
    bursts: Bursts
    planned_end: int
    cause: str


class Engine:
    """Runs one scenario with one SimPy process per device."""

    def __init__(self, scenario: Scenario, accounts: frozenset[str] | None = None) -> None:
        """Build the world at the scenario start (of all accounts, or of a shard's); nothing has happened yet."""
        self.world = World(scenario, accounts, watch=WorldWatch(power_changed=self.power_changed))
        self.writer = self.world.writer
        self.scenario = scenario
        self.env = self.world.env
        self.horizon = self.world.horizon
        self.origin_jst_s = self.world.origin_jst_s
        self.stats: RunStats = self.world.stats
        self.devices: list[Device] = self.world.devices
        self.daily_traffic = DailyTraffic()
        self.steps = SessionSteps(self.world, self.daily_traffic, self.session_created)

    @property
    def events(self) -> list[Event]:
        """The events written so far, in the order they happened."""
        return self.writer.events

    def power_changed(self, device: Device, powered: bool) -> None:
        """A powered-off device waits for power: wake it when it comes back."""
        if powered and device.power_changed is not None and not device.power_changed.triggered:
            device.power_changed.succeed()

    def step(self, device: Device, event: DeviceEvent) -> None:
        """Step the device's machine (an event illegal in its state is a bug and raises)."""
        device.machine = device.machine.apply(event)

    # -- devices --------------------------------------------------------------------------------

    def pin_flow(self, device: Device) -> Generator[simpy.Event, Any, bool]:
        """Power the card on and enter the PIN as the fleet's firmware does; False if the SIM is out."""
        fleet, account = device.fleet, device.fleet.account
        self.step(device, DeviceEvent.POWER_ON)
        device.card, _ = device.card.apply(Command.POWER_ON)
        if device.card.state is CardState.READY:
            self.step(device, DeviceEvent.CARD_READY)
            return True
        if device.card.state in (CardState.BLOCKED, CardState.DEAD):
            self.step(device, DeviceEvent.SIM_OUT)
            return False
        secrets = device.card.secrets
        if fleet.pin == "correct":
            device.card, answer = device.card.apply(Command.VERIFY_PIN, secrets.pin)
            LOG.debug("SIM %s: PIN entered, card answered %s", device.iccid, answer.status.name)
            ready = device.card.state is CardState.READY
            self.step(device, DeviceEvent.CARD_READY if ready else DeviceEvent.SIM_OUT)
            return ready
        attempt = 0
        while device.machine.state is DeviceState.PIN_ENTRY:
            attempt += 1
            device.card, answer = device.card.apply(Command.VERIFY_PIN, wrong_code(secrets.pin))
            LOG.debug("SIM %s: wrong PIN entered, %d tries left", device.iccid, answer.tries_left)
            self.writer.emit(
                self.env.now,
                "sim.pin_failed",
                account,
                f"{device.iccid}/pin/{attempt}",
                sim=device.iccid,
                tries_left=answer.tries_left,
            )
            if device.card.state is CardState.PIN_REQUIRED:
                self.step(device, DeviceEvent.PIN_REJECTED)
                yield self.env.timeout(PIN_RETRY_S)
            else:
                self.step(device, DeviceEvent.PIN_BLOCKED)
        self.writer.emit(self.env.now, "sim.locked", account, f"{device.iccid}/locked", sim=device.iccid)
        self.world.set_status(device, "locked")
        if fleet.puk == "none" or self.env.now + fleet.puk_after_s >= self.horizon:
            self.step(device, DeviceEvent.SIM_OUT)
            return False
        yield self.env.timeout(fleet.puk_after_s)
        if fleet.puk == "correct":
            new_pin = wrong_code(wrong_code(secrets.pin))
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, secrets.puk, new_pin)
            LOG.debug(
                "SIM %s: unblocked with the PUK and a new PIN, card answered %s", device.iccid, answer.status.name
            )
            self.step(device, DeviceEvent.PUK_ACCEPTED)
            self.writer.emit(self.env.now, "sim.unlocked", account, f"{device.iccid}/unlocked", sim=device.iccid)
            self.world.set_status(device, "unlocked")
            return True
        while device.card.state is CardState.BLOCKED:
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, wrong_code(secrets.puk), "0000")
            LOG.debug("SIM %s: wrong PUK entered, %d tries left", device.iccid, answer.tries_left)
            if device.card.state is CardState.BLOCKED:
                yield self.env.timeout(PUK_RETRY_S)
        self.step(device, DeviceEvent.SIM_OUT)
        self.writer.emit(self.env.now, "sim.dead", account, f"{device.iccid}/dead", sim=device.iccid)
        self.world.set_status(device, "dead")
        return False

    def note_refusal(self, device: Device, cause: str, at: int) -> None:
        """A refused attach (first of a streak with this cause): count it and write it as a diagnostic."""
        self.stats.refusals[cause] += 1
        self.writer.refusal(at, device, cause)

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
            if device.machine.state is not DeviceState.OFF:
                self.step(device, DeviceEvent.POWER_OFF)
            if device.card.powered:
                device.card, _ = device.card.apply(Command.POWER_OFF)
            device.power_changed = self.env.event()
            yield device.power_changed | self.env.timeout(self.horizon - self.env.now)

    def attached_life(self, device: Device) -> SimProcess:
        """Attach, keep a session, re-attach with back-off, until power-off or the end of the run."""
        last_refusal = ""
        while self.env.now < self.horizon and device.powered:
            outage, change = device.outages.state_at(int(self.env.now))
            if outage:
                yield self.env.timeout(min(change, self.horizon) - self.env.now)
                continue
            admission = self.world.admit(device)
            if not admission.ok:
                if admission.cause != last_refusal:
                    self.note_refusal(device, admission.cause, int(self.env.now))
                last_refusal = admission.cause
                self.step(device, DeviceEvent.ATTACH_REFUSED)
                yield self.env.timeout(min(device.machine.retry_delay(), self.horizon - self.env.now))
                self.step(device, DeviceEvent.RETRY)
                continue
            last_refusal = ""
            self.step(device, DeviceEvent.SESSION_OPENED)
            yield from self.session(device, admission)
            self.step(device, DeviceEvent.SESSION_CLOSED)

    def session_created(self, device: Device, session_id: str, start: int, route: str) -> None:
        """Write ``session.created`` (with the address and DNS the gateway gives the device)."""
        gateway = self.world.gateways[device.fleet.gateway]
        self.writer.session_created(start, device, session_id, route, gateway)

    def session(self, device: Device, admission: Admission) -> SimProcess:
        """One data session: open, wait for its end or a change of the gateway, close."""
        session = self.steps.open_session(device, admission, int(self.env.now))
        cause = session.cause
        while self.env.now < session.planned_end:
            timer = self.env.timeout(session.planned_end - self.env.now)
            yield timer | self.world.changed[device.fleet.gateway]
            if timer.processed:
                break
            if not device.powered:
                cause = "power_off"
                break
            again = self.world.admit(device)
            if not again.ok or again.route != admission.route:
                cause = again.cause or "route_changed"
                break
        self.steps.close_session(device, admission, session, int(self.env.now), cause)

    def run(self, progress: Any = None) -> Sequence[Event]:
        """Run to the end of the last month; return the events in log order.

        The log is ordered by account, then by time (:func:`~metering.eventlog.log_order`, the
        order of a run in shards whatever their size); an account's events of one instant keep
        the order in which they happened (a registration before the traffic it allows), which is
        the tie order the metering core reads.

        Args:
            progress: Called with the fraction of simulated time done, about once a simulated day.
        """
        self.world.begin()
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
        self.steps.flush_daily()
        if progress is not None:
            progress(1.0)
        return sorted(self.events, key=run_log_order(self.world.sim_ranks))


class SessionSteps:
    """Sessions stepped burst by burst: open (with the mass-traffic cut), close, their traffic records.

    The reference engine steps every session so; the fast engine only those whose bursts matter
    (a mass-traffic policy the profile could trip, traffic control, platform messages). Each
    engine has its own (composition); ``created`` writes a session's ``session.created`` as the
    engine knows the gateway at its start.
    """

    def __init__(
        self, world: World, daily_traffic: DailyTraffic, created: Callable[[Device, str, int, str], None]
    ) -> None:
        """Steps over ``world``, summing daily records into ``daily_traffic``."""
        self.world = world
        self.writer = world.writer
        self.scenario = world.scenario
        self.horizon = world.horizon
        self.origin_jst_s = world.origin_jst_s
        self.stats = world.stats
        self.daily_traffic = daily_traffic
        self.session_created = created
        self.month_usage: Counter[tuple[str, int]] = Counter()

    def open_session(self, device: Device, admission: Admission, start: int) -> OpenSession:
        """Open a session at ``start``: its id, its bursts, and when and why it would end by itself."""
        fleet = device.fleet
        gateway = self.world.gateways[fleet.gateway]
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
            self.writer.session_deleted(device, session.session_id, session.start, end, cause)

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
        gateway = self.world.gateways[fleet.gateway]
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
            self.month_usage[(device.iccid, int(month_indexes(np.array([day * DAY]))[0]))] += day_up + day_down
            self.stats.traffic_per_day[day] += day_up + day_down
            if daily:
                self.daily_traffic.add(device, day, day_up, day_down, stamp, route, gateway.id)
            else:
                self.writer.session_traffic(stamp, device, session_id, day, day_up, day_down, route, gateway.id)
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
                    self.writer.messages(stamp, device, f"{session_id}/m/{hour}", count, size)

    def throttle(self, device: Device, control: Any, jst: Any, up: Any, down: Any) -> tuple[Any, Any]:
        """Apply the gateway's traffic control to a session's bursts, month by month."""
        months = month_indexes(jst)
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

    def flush_daily(self) -> None:
        """Write the per-day traffic and per-hour message records of ``traffic_records = "daily"``."""
        for (index, day), (up, down, stamp, route, gateway) in sorted(self.daily_traffic.days.items()):
            device = self.daily_traffic.devices[index]
            self.writer.traffic(stamp, device, f"{device.iccid}/d/{day}", up, down, route, gateway)
        for (index, hour), (count, size, stamp) in sorted(self.daily_traffic.hours.items()):
            device = self.daily_traffic.devices[index]
            self.writer.messages(stamp, device, f"{device.iccid}/m/{hour}", count, size)
