"""The fast engine: SimPy for the rare control events, sessions and volumes derived in bulk.

The engine *has* a :class:`~simulator.world.World` — the SIMs, gateways, scheduled operations, SMS
and census it shares with the reference engine by composition (neither engine subclasses the
other) — and records, through the world's callbacks, every change of the gateways and
registrations as it happens. SimPy runs only what is rare: the world's operations, SMS and
census, and the PIN flows of PIN-enabled SIMs, which this engine derives at once from the
device's timers (:mod:`devices.device`) and waits in SimPy only for the status changes. Then, per
device, the sessions follow from the intervals in which it can communicate:

* admission (Art. 34, terminal lock, registration, power) is piecewise constant between the
  recorded change instants; within an admitted stretch the sessions are the gaps between coverage
  outages, found with numpy in one step, and their traffic per JST day is counted arithmetically
  (telemetry ticks in an interval, the daily upload and firmware instants that fall inside);
* whatever needs the bursts themselves — a gateway whose mass-traffic policy the profile could
  trip, traffic control, platform messages — is stepped session by session
  (:class:`~simulator.engine.SessionSteps`); refused attaches follow the device's back-off timers
  arithmetically (:func:`devices.device.attach_retry_delay`, whole T3402 cycles at once).

For the same scenario and seed the event log equals the reference engine's as a multiset (and so
the invoices are byte-identical); a differential test demands it.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import simpy

from devices.coverage import NO_OUTAGES, Outages, route_outages
from devices.device import ATTACH_ATTEMPTS, PIN_RETRY_S, PUK_RETRY_S, attach_cycle_s, attach_retry_delay, wrong_code
from devices.sim_card import CardState, Command
from devices.traffic import DAY, TrafficProfile, all_device_phases, month_starts, session_bursts
from gateway.mobile_gateway import Admission, MobileGateway
from metering.compact import CompactLog
from metering.eventlog import run_log_order
from metering.events import Event
from simulator.bulk_traffic import daily_records, piece_traffic
from simulator.daily_columns import ROUTE_CODES, ColumnarDailyTraffic
from simulator.engine import DailyTraffic, SessionSteps
from simulator.heap import keep_freed_blocks
from simulator.operations import DevicePower
from simulator.scenario import FleetSpec, Scenario
from simulator.world import Device, RunStats, SimProcess, World, WorldWatch, record_value, value_at

LOG: Final = logging.getLogger(__name__)
IntArray = npt.NDArray[np.int64]
FOREVER: Final = 2**62


def window_bound(profile: TrafficProfile, window_s: int) -> int:
    """An upper bound of the bytes a profile can send within any ``window_s`` seconds."""
    total = 0
    if profile.telemetry_interval_s:
        total += (window_s // profile.telemetry_interval_s + 1) * (profile.telemetry_up + profile.telemetry_down)
    if profile.daily_upload_bytes:
        total += (window_s // DAY + 2) * int(profile.daily_upload_bytes * 1.1 + 1)
    if profile.firmware_bytes:
        total += (window_s // (28 * DAY) + 1) * profile.firmware_bytes
    if profile.platform_messages_per_day:
        total += (window_s * profile.platform_messages_per_day // DAY + 2) * profile.platform_message_bytes
    if profile.runaway_bytes_per_minute:
        total += (window_s // 60 + 1) * profile.runaway_bytes_per_minute
    return total


@dataclass
class Timeline:
    """The recorded history of what decides a device's admission.

    Every list holds ``(instant, value)`` pairs in time order; the value holds from its instant on
    (after all operations at that instant): see :func:`~simulator.engine.value_at` and
    :func:`~simulator.engine.record_value`.
    """

    gateways: dict[str, list[tuple[int, MobileGateway | None]]] = field(default_factory=dict)
    registered: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CutSession:
    """A session cut for mass traffic, relative to its start.

    Attributes:
        length: Seconds from its start to the cut.
        offsets: Seconds from its start of each burst it carried.
        up: Uplink bytes before each burst, and in all (prefix sums, one longer than ``offsets``).
        down: Downlink bytes likewise.

    Plain tuples of ints: a session across a midnight is split by bisecting them, one session at a
    time, where a numpy call's overhead would be most of the work.
    """

    length: int
    offsets: tuple[int, ...]
    up: tuple[int, ...]
    down: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BulkCauses:
    """Why the sessions of a stretch ended.

    The first ``coverage_lost`` sessions lost coverage; the last one, if it ended with the
    stretch rather than at an outage, ended for ``last``.
    """

    coverage_lost: int
    last: str | None

    def listed(self) -> list[str]:
        """One cause per session, in order."""
        return ["coverage_lost"] * self.coverage_lost + ([self.last] if self.last is not None else [])


BULK_BATCH_PIECES: Final = 100_000
"""About how many session pieces wait before their traffic is counted in one numpy pass.

Small enough that the pass's arrays (eight bytes a piece each) stay in a core's cache between its
steps, large enough that numpy's cost per call is spread over many sessions: measured on load-100k,
2,000,000 pieces took about a fifth longer to simulate."""


class FastEngine:
    """Runs one scenario: control events in SimPy, sessions in bulk per device."""

    def __init__(self, scenario: Scenario, accounts: frozenset[str] | None = None) -> None:
        """Build the world at the scenario start (of all accounts, or of a shard's)."""
        self.scenario = scenario
        self.timeline = Timeline(gateways={spec.id: [] for spec in scenario.gateways})
        watch = WorldWatch(self.gateway_changed, self.registration_changed, self.power_changed)
        self.world = World(scenario, accounts, outages=self.initial_outages, watch=watch)
        self.writer = self.world.writer
        self.env = self.world.env
        self.horizon = self.world.horizon
        self.origin_jst_s = self.world.origin_jst_s
        self.stats: RunStats = self.world.stats
        self.devices: list[Device] = self.world.devices
        self.settings_changes: dict[str, list[int]] = {}
        """Per gateway: the instants its own settings changed (see :meth:`change_instants`)."""
        self.usable: dict[int, list[tuple[int, int]]] = {device.index: [] for device in self.devices}
        powered = {op.arguments.fleet for op in scenario.operations if isinstance(op.arguments, DevicePower)}
        self.controlled = [d for d in self.devices if d.fleet.pin != "disabled" or d.fleet.name in powered]
        self.daily_traffic: DailyTraffic = (
            ColumnarDailyTraffic() if scenario.traffic_records == "daily" else DailyTraffic()
        )
        self.steps = SessionSteps(self.world, self.daily_traffic, self.session_created)
        self.phase_table = np.asfortranarray(all_device_phases(scenario.seed, scenario.sim_count))
        """Every device's phases (as :func:`~devices.traffic.device_phases` gives them), drawn at once."""
        self.firmware_month_starts: dict[int, IntArray] = {}
        self.bulk: dict[TrafficProfile, list[tuple[int, int, IntArray, IntArray]]] = {}
        """Per profile: sessions planned in bulk whose traffic is yet to be counted (daily records)."""
        self.bulk_sessions_waiting = 0
        self.first_day = self.origin_jst_s // DAY
        self.day_traffic = np.zeros(self.horizon // DAY + 2, dtype=np.int64)
        """Bytes per JST day of the sessions planned in bulk (added to the run's figures at the end)."""

    @property
    def events(self) -> list[Event]:
        """The events written so far (besides daily traffic kept as columns)."""
        return self.writer.events

    def initial_outages(self, fleet: FleetSpec, index: int) -> Outages:
        """None yet, unless the control run needs them (SMS delivery); drawn when the device is planned.

        A year of tunnel outages is thousands of intervals per device: holding them for a whole
        fleet at once would cost gigabytes, so each device's are drawn, used and dropped in turn.
        """
        if fleet.profile.sms_per_day:
            return route_outages(fleet.route, self.scenario.seed, index, self.scenario.horizon_s)
        return NO_OUTAGES

    # -- recording the control run ----------------------------------------------------------------

    def gateway_changed(self, gateway: str) -> None:
        """Record the gateway's state after a change."""
        record_value(self.timeline.gateways[gateway], int(self.env.now), self.world.gateways.get(gateway))

    def registration_changed(self, devices: list[Device], registered: bool) -> None:
        """Record registrations and deletions."""
        for device in devices:
            record_value(self.timeline.registered.setdefault(device.iccid, []), int(self.env.now), registered)

    def power_changed(self, device: Device, powered: bool) -> None:
        """Wake the device's control process: its usable stretch begins or ends."""
        if device.power_changed is not None and not device.power_changed.triggered:
            device.power_changed.succeed()

    def device(self, device: Device) -> SimProcess:
        """Control only: power-on, the PIN flow, power cycles; records when the device is usable."""
        yield self.env.timeout(device.index % 60)
        while self.env.now < self.horizon:
            if device.powered:
                usable = yield from self.pin_entry(device)
                if not usable:
                    return
                if device.powered:  # a PUK entered hours later may find the device switched off meanwhile
                    since = int(self.env.now)
                    device.power_changed = self.env.event()
                    yield device.power_changed | self.env.timeout(self.horizon - self.env.now)
                    self.usable[device.index].append((since, int(self.env.now) if not device.powered else FOREVER))
                    if device.powered:
                        return
            if device.card.powered:
                device.card, _ = device.card.apply(Command.POWER_OFF)
            device.power_changed = self.env.event()
            yield device.power_changed | self.env.timeout(self.horizon - self.env.now)

    def pin_entry(self, device: Device) -> Generator[simpy.Event, Any, bool]:
        """The firmware's PIN (and PUK) entry, derived at once: every attempt's instant from the timers.

        The card answers every attempt now (it is a pure machine); the ``sim.pin_failed`` events
        carry their own instants, and SimPy waits only for the status changes the census counts
        (locked, then unlocked or dead). False if the SIM is out.
        """
        fleet, account, iccid = device.fleet, device.fleet.account, device.iccid
        now = int(self.env.now)
        device.card, _ = device.card.apply(Command.POWER_ON)
        if device.card.state is not CardState.PIN_REQUIRED:
            return device.card.state is CardState.READY
        secrets = device.card.secrets
        if fleet.pin == "correct":
            device.card, answer = device.card.apply(Command.VERIFY_PIN, secrets.pin)
            LOG.debug("SIM %s: PIN entered, card answered %s", iccid, answer.status.name)
            return device.card.state is CardState.READY
        tries = device.card.pin_tries
        for attempt in range(1, tries + 1):
            device.card, answer = device.card.apply(Command.VERIFY_PIN, wrong_code(secrets.pin))
            LOG.debug("SIM %s: wrong PIN entered, %d tries left", iccid, answer.tries_left)
            at = now + (attempt - 1) * PIN_RETRY_S
            self.writer.emit(
                at, "sim.pin_failed", account, f"{iccid}/pin/{attempt}", sim=iccid, tries_left=answer.tries_left
            )
        locked_at = now + (tries - 1) * PIN_RETRY_S
        yield self.env.timeout(locked_at - now)
        self.writer.emit(locked_at, "sim.locked", account, f"{iccid}/locked", sim=iccid)
        self.world.set_status(device, "locked")
        if fleet.puk == "none" or locked_at + fleet.puk_after_s >= self.horizon:
            return False
        yield self.env.timeout(fleet.puk_after_s)
        if fleet.puk == "correct":
            new_pin = wrong_code(wrong_code(secrets.pin))
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, secrets.puk, new_pin)
            LOG.debug("SIM %s: unblocked with the PUK and a new PIN, card answered %s", iccid, answer.status.name)
            self.writer.emit(self.env.now, "sim.unlocked", account, f"{iccid}/unlocked", sim=iccid)
            self.world.set_status(device, "unlocked")
            return True
        tries = device.card.puk_tries
        for _ in range(tries):
            device.card, answer = device.card.apply(Command.UNBLOCK_PIN, wrong_code(secrets.puk), "0000")
            LOG.debug("SIM %s: wrong PUK entered, %d tries left", iccid, answer.tries_left)
        yield self.env.timeout((tries - 1) * PUK_RETRY_S)
        self.writer.emit(self.env.now, "sim.dead", account, f"{iccid}/dead", sim=iccid)
        self.world.set_status(device, "dead")
        return False

    # -- admission ------------------------------------------------------------------------------

    def admission_at(self, device: Device, instant: int) -> Admission:
        """What the reference engine's ``admit`` answers at ``instant``."""
        gateway = value_at(self.timeline.gateways[device.fleet.gateway], instant, None)
        if gateway is None:
            return Admission(False, cause="gateway_off")
        registered = value_at(self.timeline.registered.get(device.iccid, []), instant, False)
        imei = device.imei_at(instant)
        admission: Admission = gateway.admit(device.iccid, imei, device.fleet.profile.destination, registered)
        return admission

    def next_change(self, device: Device, after: int) -> int:
        """The first recorded change after ``after`` that could change this device's admission."""
        instants = self.change_instants(device, after)
        return instants[0] if instants else FOREVER

    def change_instants(self, device: Device, after: int) -> list[int]:
        """Instants after ``after`` at which this device's admission may change, in time order.

        The reference engine re-checks a session at every change of its gateway; the answer for
        this device can only differ where the gateway's own settings changed (created, deleted,
        power, switch, internet) or this SIM was registered or deleted (which adds it to or
        removes it from the gateway, with its terminal lock) or its device was swapped. Changes
        that concern only other SIMs are skipped.
        """
        settings = self.settings_changes[device.fleet.gateway]
        candidates = settings[bisect.bisect_right(settings, after) :]
        own = [instant for instant, _ in self.timeline.registered.get(device.iccid, ())]
        own += [instant for instant, _ in device.imeis]
        if not any(instant > after for instant in own):
            return candidates
        return sorted({*candidates, *(instant for instant in own if instant > after)})

    def record_settings_changes(self) -> None:
        """Find, once the control run is over, where each gateway's own settings changed."""
        for gateway, history in self.timeline.gateways.items():
            instants, before = [], None
            for instant, state in history:
                settings = None if state is None else (state.state, state.switch, state.internet)
                if settings != before:
                    instants.append(instant)
                before = settings
            self.settings_changes[gateway] = instants

    def stretch_end(self, device: Device, start: int, admission: Admission, power_off: int) -> tuple[int, str]:
        """When an admitted stretch from ``start`` ends, and the cause a session open then gets."""
        for instant in self.change_instants(device, start):
            if instant >= self.horizon:
                break
            if instant >= power_off:
                return power_off, "power_off"
            again = self.admission_at(device, instant)
            if not again.ok or again.route != admission.route:
                return instant, again.cause or "route_changed"
        if power_off < self.horizon:
            return power_off, "power_off"
        return self.horizon, "end_of_run"

    # -- sessions -------------------------------------------------------------------------------

    def needs_bursts(self, device: Device) -> bool:
        """Whether this device's sessions must be stepped burst by burst."""
        spec = self.world.specs[device.fleet.gateway]
        profile = device.fleet.profile
        if spec.traffic_control is not None or profile.platform_messages_per_day or profile.runaway_bytes_per_minute:
            return True
        return spec.mass_traffic is not None and window_bound(profile, spec.mass_traffic.window_s) > (
            spec.mass_traffic.threshold_bytes
        )

    def periodic(self, device: Device) -> int:
        """The period of a device's bursts when its sessions repeat under a mass-traffic policy (else 0).

        A profile of telemetry and a runaway flood only (no daily, monthly or platform parts) sends
        the same bursts relative to a session's start whenever the start is the same modulo the
        period, so a session cut for mass traffic is the same session: it is computed once.
        """
        spec = self.world.specs[device.fleet.gateway]
        profile = device.fleet.profile
        if spec.mass_traffic is None or spec.traffic_control is not None or not profile.runaway_bytes_per_minute:
            return 0
        if profile.daily_upload_bytes or profile.firmware_bytes or profile.platform_messages_per_day:
            return 0
        return math.lcm(60, profile.telemetry_interval_s or 60)

    def plan(self, device: Device) -> None:
        """All sessions of one device, as the reference engine's ``attached_life`` would have them."""
        drawn_now = device.outages is NO_OUTAGES and bool(device.fleet.route)
        if drawn_now:
            device.outages = route_outages(device.fleet.route, self.scenario.seed, device.index, self.horizon)
        try:
            self.plan_stretches(device)
        finally:
            if drawn_now:
                device.outages = NO_OUTAGES
        if isinstance(self.daily_traffic, ColumnarDailyTraffic):
            self.daily_traffic.device_done(device)
            if self.bulk_sessions_waiting >= BULK_BATCH_PIECES:  # only between devices: a device's days stay whole
                self.flush_bulk()

    def plan_stretches(self, device: Device) -> None:
        """The sessions of each stretch in which the device is powered and its PIN flow is done."""
        detailed = self.needs_bursts(device)
        period = self.periodic(device)
        cache: dict[int, CutSession | None] = {}
        for since, power_off in self.usable[device.index]:
            now, failures, last_refusal = since, 0, ""
            while now < self.horizon and now < power_off:
                outage, change = device.outages.state_at(now)
                if outage:
                    now = min(change, self.horizon)
                    continue
                admission = self.admission_at(device, now)
                if not admission.ok:
                    if admission.cause != last_refusal:
                        self.note_refusal(device, admission.cause, now)
                    last_refusal = admission.cause
                    # nothing can change before the next recorded change, outage or power-off: the
                    # attempts until then are refused the same way, so only their times are stepped
                    calm_until = min(self.next_change(device, now), device.outages.state_at(now)[1], power_off)
                    calm_until = min(calm_until, self.horizon)
                    failures += 1
                    now += min(attach_retry_delay(failures), self.horizon - now)
                    if now < calm_until:  # whole back-off cycles: 5 attempts in 760 s, whatever the phase
                        cycles = (calm_until - 1 - now) // attach_cycle_s()
                        now += cycles * attach_cycle_s()
                        failures += cycles * ATTACH_ATTEMPTS
                    while now < calm_until:
                        failures += 1
                        now += min(attach_retry_delay(failures), self.horizon - now)
                    continue
                failures, last_refusal = 0, ""
                end, cause = self.stretch_end(device, now, admission, power_off)
                if period:
                    if self.scenario.traffic_records == "daily":
                        now = self.chained_sessions(device, admission, now, end, cause, period, cache)
                    else:
                        now = self.repeated_sessions(device, admission, now, end, cause, period, cache)
                elif detailed:
                    now = self.one_session(device, admission, now, end, cause)
                else:
                    now = self.bulk_sessions(device, admission, now, end, cause)

    def one_session(self, device: Device, admission: Admission, start: int, stretch_end: int, cause: str) -> int:
        """One session stepped like the reference: it ends by itself or when the stretch ends."""
        session = self.steps.open_session(device, admission, start)
        if stretch_end < session.planned_end:
            end, why = stretch_end, cause
        else:
            end, why = session.planned_end, session.cause
        self.steps.close_session(device, admission, session, end, why)
        return end

    def repeated_sessions(
        self,
        device: Device,
        admission: Admission,
        start: int,
        stretch_end: int,
        cause: str,
        period: int,
        cache: dict[int, CutSession | None],
    ) -> int:
        """Back-to-back sessions cut for mass traffic, each known from the start's phase in the period.

        Sessions that would reach an outage, the end of the stretch or of the run, or cross a JST
        midnight are stepped like the reference (:meth:`one_session`).
        """
        fleet = device.fleet
        daily = self.scenario.traffic_records == "daily"
        origin = self.origin_jst_s
        now = start
        while now < stretch_end:
            outage, coverage_ends = device.outages.state_at(now)
            if outage:
                return now
            limit = min(coverage_ends, self.horizon, stretch_end)
            known = self.cut_session(device, now, cache, period)
            if known is None:
                return self.one_session(device, admission, now, stretch_end, cause)
            length, up, down = known.length, known.up[-1], known.down[-1]
            end = now + length
            day = (origin + now) // DAY
            if end >= limit or (origin + end - 1) // DAY != day:
                now = self.one_session(device, admission, now, stretch_end, cause)
                if now >= stretch_end or device.outages.state_at(now)[0]:
                    return now
                continue
            device.sessions += 1
            session_id = f"{device.iccid}-{device.sessions}"
            self.stats.sessions += 1
            self.stats.closures["mass_traffic"] += 1
            self.stats.interruptions_per_day[(origin + end) // DAY] += 1
            if up + down:
                self.stats.traffic_per_day[day] += up + down
                if daily:
                    self.daily_traffic.add(device, day, up, down, end - 1, admission.route, fleet.gateway)
            if not daily:
                gateway = value_at(self.timeline.gateways[fleet.gateway], now, None)
                self.writer.session_created(now, device, session_id, admission.route, gateway)
                if up + down:
                    self.writer.session_traffic(
                        end - 1, device, session_id, day, up, down, admission.route, fleet.gateway
                    )
                self.writer.session_deleted(device, session_id, now, end, "mass_traffic")
            now = end
        return now

    def cut_session(
        self, device: Device, start: int, cache: dict[int, CutSession | None], period: int
    ) -> CutSession | None:
        """The session that starts at ``start`` and is cut for mass traffic (by its phase in the period).

        ``None`` when such a session is not cut within four days (it is then stepped instead).
        Shared by :meth:`repeated_sessions` and :meth:`chained_sessions` (one cache per device).
        """
        phase = start % period
        if phase not in cache:
            fleet = device.fleet
            spec = self.world.specs[fleet.gateway]
            assert spec.mass_traffic is not None
            bursts = session_bursts(
                fleet.profile, self.scenario.seed, device.index, start, start + 4 * DAY, self.origin_jst_s
            )
            cut = spec.mass_traffic.cut_at(bursts.times, bursts.volume())
            if cut is None:
                cache[phase] = None
            else:
                kept = bursts.cut(cut + 1)
                offsets = kept.times - start
                cache[phase] = CutSession(
                    int(offsets[-1]) + 1,
                    tuple(offsets.tolist()),
                    tuple(np.concatenate(([0], np.cumsum(kept.up))).tolist()),
                    tuple(np.concatenate(([0], np.cumsum(kept.down))).tolist()),
                )
        return cache[phase]

    def chained_sessions(
        self,
        device: Device,
        admission: Admission,
        start: int,
        stretch_end: int,
        cause: str,
        period: int,
        cache: dict[int, CutSession | None],
    ) -> int:
        """Back-to-back sessions cut for mass traffic, all at once (daily records).

        Each session starts when the previous was cut, and its length follows from its start's
        phase in the period; the phases run into a cycle, so the whole chain up to the next outage
        (or the end of the stretch) is a cumulative sum. The session that would reach that limit is
        stepped like the reference (:meth:`one_session`); so is everything when a phase's session
        is not cut (:meth:`repeated_sessions`).
        """
        now = start
        while now < stretch_end:
            outage, coverage_ends = device.outages.state_at(now)
            if outage:
                return now
            limit = min(coverage_ends, self.horizon, stretch_end)
            orbit: list[CutSession] = []
            position: dict[int, int] = {}
            at = now
            while at % period not in position:
                known = self.cut_session(device, at, cache, period)
                if known is None or known.length > DAY:  # cut only after a day or more (rare): stepped instead
                    return self.repeated_sessions(device, admission, now, stretch_end, cause, period, cache)
                position[at % period] = len(orbit)
                orbit.append(known)
                at += known.length
            # the chain as positions in the orbit: its prefix once, then its cycle over and over
            cycle_start = position[at % period]
            cycle_length = sum(item.length for item in orbit[cycle_start:])
            repeats = (limit - now) // cycle_length + 2
            chain = np.concatenate(
                (np.arange(cycle_start), np.tile(np.arange(cycle_start, len(orbit)), repeats))
            ).astype(np.int64)
            lengths = np.array([item.length for item in orbit], dtype=np.int64)[chain]
            ends = now + np.cumsum(lengths)
            count = int(np.searchsorted(ends, limit, side="left"))  # sessions that end before the limit
            if count:
                self.record_chain(device, admission, orbit, chain[:count], ends[:count] - lengths[:count], ends[:count])
                now = int(ends[count - 1])
            now = self.one_session(device, admission, now, stretch_end, cause)
            if now >= stretch_end or device.outages.state_at(now)[0]:
                return now
        return now

    def record_chain(
        self,
        device: Device,
        admission: Admission,
        orbit: list[CutSession],
        chain: IntArray,
        starts: IntArray,
        ends: IntArray,
    ) -> None:
        """Count a chain of cut sessions (positions in ``orbit``) and add their traffic to the daily records."""
        count = len(chain)
        device.sessions += count
        self.stats.sessions += count
        self.stats.closures["mass_traffic"] += count
        origin = self.origin_jst_s
        for day, cuts in zip(*np.unique((origin + ends) // DAY, return_counts=True), strict=True):
            self.stats.interruptions_per_day[int(day)] += int(cuts)
        ups = np.array([item.up[-1] for item in orbit], dtype=np.int64)[chain]
        downs = np.array([item.down[-1] for item in orbit], dtype=np.int64)[chain]
        start_day, end_day = (origin + starts) // DAY, (origin + ends - 1) // DAY
        whole = (start_day == end_day) & (ups + downs > 0)
        columns = self.daily_traffic
        assert isinstance(columns, ColumnarDailyTraffic)
        days, first = np.unique(start_day[whole], return_index=True)
        if len(days):
            day_ups = np.add.reduceat(ups[whole], first)
            day_downs = np.add.reduceat(downs[whole], first)
            stamps = np.maximum.reduceat(ends[whole], first) - 1
            carrying = day_ups + day_downs > 0
            np.add.at(self.day_traffic, days[carrying] - self.first_day, (day_ups + day_downs)[carrying])
            columns.add_rows(
                device, days[carrying], day_ups[carrying], day_downs[carrying], stamps[carrying], admission.route
            )
        # sessions across a JST midnight: split per day like the reference's record_traffic
        for index in np.flatnonzero(start_day != end_day).tolist():
            item, begin, finish = orbit[int(chain[index])], int(starts[index]), int(ends[index])
            for day in range(int(start_day[index]), int(end_day[index]) + 1):
                low = max(begin, day * DAY - origin) - begin
                high = min(finish, (day + 1) * DAY - origin) - begin
                first_burst = bisect.bisect_left(item.offsets, low)
                last_burst = bisect.bisect_left(item.offsets, high)
                up = item.up[last_burst] - item.up[first_burst]
                down = item.down[last_burst] - item.down[first_burst]
                if up + down:
                    self.day_traffic[day - self.first_day] += up + down
                    columns.add(device, day, up, down, begin + high - 1, admission.route, device.fleet.gateway)

    def bulk_sessions(self, device: Device, admission: Admission, start: int, stretch_end: int, cause: str) -> int:
        """Every session of an admitted stretch at once: the gaps between coverage outages."""
        outages = device.outages
        first = int(np.searchsorted(outages.starts, start, side="right"))
        outage_starts, outage_ends = outages.starts[first:], outages.ends[first:]
        # an outage starting exactly when the stretch ends ends the session first (as the reference's timer)
        inside = outage_starts <= stretch_end
        starts = np.concatenate(([start], outage_ends[inside]))
        ends = np.concatenate((outage_starts[inside], [stretch_end]))
        keep = starts < np.minimum(ends, self.horizon)
        starts, ends = starts[keep], np.minimum(ends[keep], self.horizon)
        # every session ends by losing coverage, except the stretch's last, which ends with the stretch
        last_kept = bool(keep[-1])
        causes = BulkCauses(len(starts) - int(last_kept), cause if last_kept else None)
        self.record_bulk(device, admission, starts, ends, causes)
        if not keep[-1]:
            return int(min(outage_ends[inside][-1], self.horizon)) if inside.any() else stretch_end
        return int(ends[-1]) if len(ends) else stretch_end

    def record_bulk(
        self, device: Device, admission: Admission, starts: IntArray, ends: IntArray, causes: BulkCauses
    ) -> None:
        """Sessions and their traffic per JST day, counted arithmetically."""
        fleet = device.fleet
        profile = fleet.profile
        first_number = device.sessions + 1
        device.sessions += len(starts)
        self.stats.sessions += len(starts)
        if causes.coverage_lost:
            self.stats.closures["coverage_lost"] += causes.coverage_lost
        if causes.last is not None:
            self.stats.closures[causes.last] += 1
        if self.scenario.traffic_records == "daily":
            # planned together with other devices of the profile (see flush_bulk)
            self.bulk.setdefault(profile, []).append((device.index, ROUTE_CODES[admission.route], starts, ends))
            self.bulk_sessions_waiting += len(starts) + int((ends[-1] - starts[0]) // DAY) if len(starts) else 0
            return
        pieces = piece_traffic(
            profile,
            self.scenario.seed,
            self.origin_jst_s,
            np.full(len(starts), device.index, dtype=np.int64),
            starts,
            ends,
            self.phase_table,
            self.firmware_starts(profile),
        )
        volume = pieces.up + pieces.down
        for position in np.flatnonzero(volume > 0).tolist():
            traffic_day = int(pieces.day[position])
            self.stats.traffic_per_day[traffic_day] += int(volume[position])
            session_id = f"{device.iccid}-{first_number + int(pieces.session[position])}"
            up, down = int(pieces.up[position]), int(pieces.down[position])
            end = int(pieces.end[position]) - 1
            self.writer.session_traffic(end, device, session_id, traffic_day, up, down, admission.route, fleet.gateway)
        if self.scenario.traffic_records == "session":
            self.session_events(device, admission, first_number, starts, ends, causes.listed())

    def firmware_starts(self, profile: TrafficProfile) -> IntArray:
        """Scenario seconds of the starts of the months with a firmware download of ``profile``."""
        every = profile.firmware_every_months
        if every not in self.firmware_month_starts:
            starts = month_starts(self.origin_jst_s, -7 * DAY, self.horizon, every)
            self.firmware_month_starts[every] = np.array(starts, dtype=np.int64)
        return self.firmware_month_starts[every]

    def flush_bulk(self) -> None:
        """Count the traffic of the waiting bulk sessions, profile by profile, into daily records."""
        assert isinstance(self.daily_traffic, ColumnarDailyTraffic)
        for profile, waiting in self.bulk.items():
            if not waiting:
                continue
            lengths = [len(starts) for _, _, starts, _ in waiting]
            sims = np.repeat(np.array([index for index, _, _, _ in waiting], dtype=np.int64), lengths)
            routes = np.repeat(np.array([route for _, route, _, _ in waiting], dtype=np.int64), lengths)
            starts = np.concatenate([starts for _, _, starts, _ in waiting])
            ends = np.concatenate([ends for _, _, _, ends in waiting])
            waiting.clear()
            pieces = piece_traffic(
                profile,
                self.scenario.seed,
                self.origin_jst_s,
                sims,
                starts,
                ends,
                self.phase_table,
                self.firmware_starts(profile),
            )
            sim, day, up, down, stamp, route = daily_records(routes, pieces)
            self.day_traffic += np.bincount(day - self.first_day, weights=up, minlength=len(self.day_traffic)).astype(
                np.int64
            ) + np.bincount(day - self.first_day, weights=down, minlength=len(self.day_traffic)).astype(np.int64)
            self.daily_traffic.add_records(sim, day, up, down, stamp, route)
        self.bulk_sessions_waiting = 0

    def session_created(self, device: Device, session_id: str, start: int, route: str) -> None:
        """Write ``session.created`` with the address the gateway gave, as it was at ``start``.

        The control run is over when sessions are planned, so the gateway is looked up in the
        recorded timeline (the SIM may have left it since).
        """
        gateway = value_at(self.timeline.gateways[device.fleet.gateway], start, None)
        assert gateway is not None, "a session opens only on an existing gateway"
        self.writer.session_created(start, device, session_id, route, gateway)

    def note_refusal(self, device: Device, cause: str, at: int) -> None:
        """A refused attach (first of a streak with this cause): count it and write it as a diagnostic."""
        self.stats.refusals[cause] += 1
        self.writer.refusal(at, device, cause)

    def session_events(
        self,
        device: Device,
        admission: Admission,
        first_number: int,
        starts: IntArray,
        ends: IntArray,
        causes: list[str],
    ) -> None:
        """``session.created``/``session.deleted`` of bulk sessions (``traffic_records = "session"``)."""
        history = self.timeline.gateways[device.fleet.gateway]
        for offset, (start, end, why) in enumerate(zip(starts.tolist(), ends.tolist(), causes, strict=True)):
            session_id = f"{device.iccid}-{first_number + offset}"
            gateway = value_at(history, start, None)
            self.writer.session_created(start, device, session_id, admission.route, gateway)
            self.writer.session_deleted(device, session_id, start, end, why)

    # -- the run --------------------------------------------------------------------------------

    def run(self, progress: Any = None) -> Sequence[Event]:
        """Run the control events in SimPy, then every device's sessions in bulk."""
        keep_freed_blocks()
        self.world.begin()
        controlled = {device.index for device in self.controlled}
        for device in self.devices:
            if device.index in controlled:
                self.env.process(self.device(device))
            else:
                device.card, _ = device.card.apply(Command.POWER_ON)
                self.usable[device.index].append((device.index % 60, FOREVER))
        self.env.run(until=self.horizon + 1)
        self.record_settings_changes()
        LOG.info(
            "control run done: %d operations; planning the sessions of %d SIMs",
            self.world.operations_done,
            len(self.devices),
        )
        if progress is not None:
            progress(0.1)
        step = max(1, len(self.devices) // 50)
        for position, device in enumerate(self.devices):
            self.plan(device)
            if progress is not None and position % step == 0:
                progress(0.1 + 0.9 * position / len(self.devices))
        if isinstance(self.daily_traffic, ColumnarDailyTraffic):
            self.flush_bulk()
        self.steps.flush_daily()
        for offset, volume in enumerate(self.day_traffic.tolist()):
            if volume:
                self.stats.traffic_per_day[self.first_day + offset] += volume
        if progress is not None:
            progress(1.0)
        LOG.info(
            "sessions planned: %d sessions, %d events besides daily traffic", self.stats.sessions, len(self.events)
        )
        events = sorted(self.events, key=run_log_order(self.world.sim_ranks))
        if isinstance(self.daily_traffic, ColumnarDailyTraffic):
            return CompactLog(events, self.daily_traffic.compact(self.devices, self.scenario.start_us))
        return events
