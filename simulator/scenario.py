"""Scenario files (TOML): what to simulate, validated with errors that name the key and line.

A scenario names its start (JST), length in months, seed and tariff; its accounts, gateways and
fleets of devices; operations scheduled at given times; and optional ``[expect]`` checks. See
``scenarios/quickstart.toml`` for a commented example. :func:`load_scenario` raises
:class:`ScenarioError` with one line: ``file:line: key 'fleets[1].count': reason``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from devices.carrier import CARRIER_PREFIXES
from devices.coverage import ZONES
from devices.traffic import PROFILES, TrafficProfile
from gateway.policy import MassTrafficPolicy, TrafficControl
from metering.events import NAME_PATTERN, OPTION_PATTERN
from metering.tariff import Tariff, TariffError, load_tariff
from metering.textfile import read_text
from metering.timeutil import TimeFormatError, month_of_instant, month_start, parse_instant
from metering.toml_table import TomlTable, parse_toml
from simulator.operations import OPERATIONS, Arguments, DevicePower, FleetOperation, OptionChange, PointsPurchase

PIN_ENTRIES: Final = ("disabled", "correct", "misconfigured")
PUK_ENTRIES: Final = ("none", "correct", "wrong")
MAX_ACCOUNTS: Final = 100
"""The most accounts a scenario may have: an account's number is two digits of its SIMs' ICCIDs (00-99)."""
MAX_FLEETS: Final = 1000
"""The most fleets a scenario may have: a fleet's number is three digits of its SIMs' ICCIDs (000-999)."""
MAX_SIMS: Final = 10_000_000
"""The most SIMs a scenario may have in all its fleets."""
EXPECT_KEYS: Final = (
    "locked_at_end",
    "unlocked_at_end",
    "ever_locked",
    "dead",
    "interruptions_min",
    "sessions_min",
    "refused_min",
    "totals",
)


class ScenarioError(Exception):
    """A bad scenario: one line naming the file, line, key and reason."""


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """A gateway of the scenario and its initial settings."""

    id: str
    account: str
    power: bool = True
    switch: bool = True
    internet: bool = False
    terminal_lock: bool = False
    create: bool = True
    mass_traffic: MassTrafficPolicy | None = None
    traffic_control: TrafficControl | None = None


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """A group of identical devices with their SIMs.

    Attributes:
        name: Fleet name.
        account: Owning account.
        gateway: Gateway the SIMs are registered to.
        count: Number of devices (one SIM each).
        profile: Traffic profile.
        carrier: ``kddi`` or ``softbank`` (the ICCID prefix).
        route: Coverage zones the devices pass through (empty: open sky).
        pin: PIN entry behaviour: ``disabled``, ``correct``, ``misconfigured`` (keeps sending a wrong PIN).
        puk: What the operator does later for a locked SIM: ``none``, ``correct``, ``wrong``.
        puk_after_s: Seconds after the lock at which the operator enters the PUK.
        mono: Whether the SIMs get Mono Platform device IDs.
        register: Whether the SIMs are registered at the start (else by an operation).
        number: Position of the fleet in the file (part of every ICCID).
    """

    name: str
    account: str
    gateway: str
    count: int
    profile: TrafficProfile
    carrier: str = "kddi"
    route: tuple[str, ...] = ()
    pin: str = "disabled"
    puk: str = "none"
    puk_after_s: int = 86_400
    mono: bool = False
    register: bool = True
    number: int = 0

    def iccid(self, index: int, account_number: int) -> str:
        """The ICCID of the fleet's ``index``-th SIM (19 digits, carrier prefix first)."""
        return f"{CARRIER_PREFIXES[self.carrier]}{account_number:02d}{self.number:03d}{index:07d}"


@dataclass(frozen=True, slots=True)
class Operation:
    """A scheduled operation.

    Attributes:
        at: Seconds after the scenario start.
        action: Its name, a key of :data:`~simulator.operations.OPERATIONS`.
        arguments: Its typed arguments (the record that :data:`~simulator.operations.OPERATIONS` names).
        line: Line in the scenario file (for messages).
    """

    at: int
    action: str
    arguments: Arguments
    line: int = 0


@dataclass(frozen=True, slots=True)
class Expectations:
    """``[expect]``: checks a run must pass (``mgwsim run`` exits 1 otherwise).

    Attributes:
        locked_at_end: SIMs whose PIN is blocked when the run ends (no PUK came, or it was due too late).
        unlocked_at_end: SIMs rescued by their PUK, in use when the run ends.
        ever_locked: SIMs whose PIN was blocked at some time (locked, unlocked or dead at the end).
        dead: SIMs killed by wrong PUKs (a dead SIM stays dead).
        interruptions_min: At least this many sessions cut for mass traffic (Art. 49(2)).
        sessions_min: At least this many sessions.
        refused_min: At least this many refused attaches (first of each streak).
        totals: Invoice totals, by ``YYYY-MM/account``.
    """

    locked_at_end: int | None = None
    unlocked_at_end: int | None = None
    ever_locked: int | None = None
    dead: int | None = None
    interruptions_min: int | None = None
    sessions_min: int | None = None
    refused_min: int | None = None
    totals: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario."""

    name: str
    source: str
    start_us: int
    months: int
    seed: int
    tariff: Tariff
    accounts: tuple[str, ...]
    gateways: tuple[GatewaySpec, ...]
    fleets: tuple[FleetSpec, ...]
    operations: tuple[Operation, ...]
    expect: Expectations
    description: str = ""
    traffic_records: str = "session"

    @property
    def first_month(self) -> int:
        """The JST month of the start."""
        return month_of_instant(self.start_us)

    @property
    def billing_months(self) -> list[int]:
        """The JST months the scenario covers."""
        return list(range(self.first_month, self.first_month + self.months))

    @property
    def horizon_s(self) -> int:
        """Seconds from the start to the end of the last month."""
        return (month_start(self.first_month + self.months) - self.start_us) // 1_000_000

    @property
    def sim_count(self) -> int:
        """SIMs in all fleets."""
        return sum(fleet.count for fleet in self.fleets)


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _one_of(choices: Collection[str]) -> Any:
    return lambda value: None if value in choices else f"must be one of {', '.join(sorted(choices))}"


def _named(value: str) -> str | None:
    return None if re.fullmatch(NAME_PATTERN, value) else "must be 1-128 characters of [A-Za-z0-9._:@/-]"


def _instant(reader: TomlTable, key: str, start_us: int | None = None) -> int:
    text = reader.get(key, str)
    try:
        instant = parse_instant(text)
    except TimeFormatError as exc:
        raise reader.error(key, str(exc)) from None
    if start_us is not None and instant < start_us:
        raise reader.error(key, "is before the scenario start")
    return instant


PROFILE_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "telemetry_interval_s": (0, 31 * 86_400),
    "telemetry_up": (0, 10**9),
    "telemetry_down": (0, 10**9),
    "daily_upload_bytes": (0, 10**12),
    "firmware_bytes": (0, 10**12),
    "firmware_every_months": (1, 120),
    "platform_messages_per_day": (0, 1_440),
    "platform_message_bytes": (0, 1 << 20),
    "sms_per_day": (0, 1_440),
    "runaway_bytes_per_minute": (0, 10**12),
}
"""Bounds of a profile's numbers: a valid-looking scenario cannot ask for more than a machine holds
(at most a platform message or an SMS a minute, a telemetry message a month at the longest)."""


def _within(low: int, high: int) -> Any:
    return lambda value: None if low <= value <= high else f"must be between {low:,} and {high:,}"


def _profiles(top: TomlTable) -> dict[str, TrafficProfile]:
    profiles = dict(PROFILES)
    table = top.table("profiles")
    known = {item.name: item for item in fields(TrafficProfile)}
    for name in sorted(table.data):
        spec = table.table(name)
        base = profiles[spec.get("base", str, "idle", check=_one_of(profiles))]
        changes: dict[str, Any] = {"name": name}
        for key in spec.data:
            if key == "base":
                continue
            if key not in known or key == "name":
                raise spec.error(key, "unknown key")
            if key in ("destination", "sms_kind"):
                choices = ("closed", "internet") if key == "destination" else ("2fa", "a2p")
                changes[key] = spec.get(key, str, check=_one_of(choices))
            else:
                changes[key] = spec.get(key, int, check=_within(*PROFILE_BOUNDS[key]))
        profiles[name] = replace(base, **changes)
        spec.finish()
    table.finish()
    return profiles


def _accounts(top: TomlTable) -> list[str]:
    """``[[accounts]]``: their ids, each once."""
    account_list = top.get("accounts", list)
    accounts: list[str] = []
    for index, entry in enumerate(account_list):
        reader = top.table("accounts", index, entry)
        account = reader.get("id", str, check=_named)
        if account in accounts:
            raise reader.error("id", f"account {account!r} appears twice")
        accounts.append(account)
        reader.finish()
    if not accounts:
        raise top.error("accounts", "needs at least one account")

    return accounts


def _gateways(top: TomlTable, accounts: list[str]) -> list[GatewaySpec]:
    """``[[gateways]]``: each with its account, settings and policies."""
    gateways: list[GatewaySpec] = []
    for index, entry in enumerate(top.get("gateways", list, [])):
        reader = top.table("gateways", index, entry)
        gateway_id = reader.get("id", str, check=_named)
        if any(existing.id == gateway_id for existing in gateways):
            raise reader.error("id", f"gateway {gateway_id!r} appears twice")
        mass = None
        if "mass_traffic" in reader.data:
            policy = reader.table("mass_traffic")
            mass = MassTrafficPolicy(
                policy.get("threshold_mb", int, check=_positive) * 1_000_000,
                policy.get("window_min", int, check=_positive) * 60,
            )
            policy.finish()
        control = None
        if "traffic_control" in reader.data:
            policy = reader.table("traffic_control")
            control = TrafficControl(
                policy.get("quota_mb", int, check=_positive) * 1_000_000,
                policy.get("throttle_kbps", int, check=_positive),
            )
            policy.finish()
        gateways.append(
            GatewaySpec(
                id=gateway_id,
                account=reader.get("account", str, check=_one_of(accounts)),
                power=reader.get("power", bool, True),
                switch=reader.get("switch", bool, True),
                internet=reader.get("internet", bool, False),
                terminal_lock=reader.get("terminal_lock", bool, False),
                create=reader.get("create", bool, True),
                mass_traffic=mass,
                traffic_control=control,
            )
        )
        reader.finish()

    return gateways


def _fleets(top: TomlTable, accounts: list[str], gateways: list[GatewaySpec]) -> list[FleetSpec]:
    """``[[fleets]]`` (with the ``[profiles]`` they name), within the bounds of a scenario."""
    profiles = _profiles(top)
    fleets: list[FleetSpec] = []
    gateway_ids = {gateway.id: gateway for gateway in gateways}
    for index, entry in enumerate(top.get("fleets", list, [])):
        reader = top.table("fleets", index, entry)
        fleet_name = reader.get("name", str, check=_named)
        if any(existing.name == fleet_name for existing in fleets):
            raise reader.error("name", f"fleet {fleet_name!r} appears twice")
        account = reader.get("account", str, check=_one_of(accounts))
        gateway_id = reader.get("gateway", str, check=_one_of(gateway_ids))
        if gateway_ids[gateway_id].account != account:
            raise reader.error("gateway", f"gateway {gateway_id!r} belongs to another account")
        route = reader.get("route", list, [])
        for zone in route:
            if zone not in ZONES:
                raise reader.error("route", f"unknown zone {zone!r} (zones: {', '.join(ZONES)})")
        pin = reader.get("pin", str, "disabled", check=_one_of(PIN_ENTRIES))
        fleets.append(
            FleetSpec(
                name=fleet_name,
                account=account,
                gateway=gateway_id,
                count=reader.get("count", int, check=lambda v: None if 1 <= v < 10**7 else "must be 1..9,999,999"),
                profile=profiles[reader.get("profile", str, "telemetry", check=_one_of(profiles))],
                carrier=reader.get("carrier", str, "kddi", check=_one_of(CARRIER_PREFIXES)),
                route=tuple(route),
                pin=pin,
                puk=reader.get("puk", str, "none", check=_one_of(PUK_ENTRIES)),
                puk_after_s=reader.get("puk_after_hours", int, 24, check=_within(0, 24 * 3650)) * 3600,
                mono=reader.get("mono", bool, False),
                register=reader.get("register", bool, True),
                number=index,
            )
        )
        reader.finish()
    if len(fleets) > MAX_FLEETS or len(accounts) > MAX_ACCOUNTS:
        raise top.error("fleets", f"at most {MAX_FLEETS:,} fleets and {MAX_ACCOUNTS} accounts")
    if sum(fleet.count for fleet in fleets) > MAX_SIMS:
        raise top.error("fleets", f"at most {MAX_SIMS:,} SIMs in all")

    return fleets


def _operations(
    top: TomlTable,
    start_us: int,
    accounts: list[str],
    gateways: list[GatewaySpec],
    fleets: list[FleetSpec],
    tariff: Tariff,
) -> list[Operation]:
    """``[[operations]]``: each read into its typed record (:data:`~simulator.operations.OPERATIONS`), by time."""
    gateway_ids = {gateway.id: gateway for gateway in gateways}
    operations: list[Operation] = []
    fleet_names = {fleet.name for fleet in fleets}
    for index, entry in enumerate(top.get("operations", list, [])):
        reader = top.table("operations", index, entry)
        at = (_instant(reader, "at", start_us) - start_us) // 1_000_000
        action = reader.get("do", str, check=_one_of(OPERATIONS))
        kind = OPERATIONS[action]
        checks = {
            "gateway": _one_of(gateway_ids),
            "fleet": _one_of(fleet_names),
            "account": _one_of(accounts),
            "positive": _positive,
            "option": _option,
            "name": _named,
        }
        values = {
            key: reader.get(key, type_, check=checks.get(kind.checks.get(key, ""))) for key, type_ in kind.typed_keys()
        }
        arguments = kind.arguments(**values)
        if isinstance(arguments, PointsPurchase):
            points = arguments.points
            block, most = tariff.points_block, tariff.points_purchase_max
            if points % block or not block <= points <= most:
                raise reader.error("points", f"a purchase is a multiple of {block} between {block} and {most} (PT-4)")
        if isinstance(arguments, OptionChange) and arguments.option not in tariff.suboptions:
            raise reader.error("option", f"the tariff has no sub-option {arguments.option!r}")
        operations.append(Operation(at, action, arguments, reader.line_of("do")))
        reader.finish()
    operations.sort(key=lambda operation: operation.at)
    return operations


def _expectations(top: TomlTable) -> Expectations:
    """``[expect]``: what the run must show (checked after it)."""
    expect = top.table("expect")
    totals: dict[str, Decimal] = {}
    if "totals" in expect.data:
        table = expect.table("totals")
        for key in table.data:
            if not re.fullmatch(r"\d{4}-\d{2}/.+", key):
                raise table.error(key, "must be 'YYYY-MM/account'")
            try:
                total = Decimal(table.get(key, str))
            except InvalidOperation:
                raise table.error(key, "must be a decimal string") from None
            if not total.is_finite():
                raise table.error(key, "must be a finite decimal amount")
            totals[key] = total
        table.finish()
    if "locked" in expect.data:
        raise expect.error("locked", "says neither when nor how: write locked_at_end or ever_locked")
    expectations = Expectations(
        locked_at_end=expect.get("locked_at_end", int, None, check=_non_negative),
        unlocked_at_end=expect.get("unlocked_at_end", int, None, check=_non_negative),
        ever_locked=expect.get("ever_locked", int, None, check=_non_negative),
        dead=expect.get("dead", int, None, check=_non_negative),
        interruptions_min=expect.get("interruptions_min", int, None, check=_non_negative),
        sessions_min=expect.get("sessions_min", int, None, check=_non_negative),
        refused_min=expect.get("refused_min", int, None, check=_non_negative),
        totals=totals,
    )
    expect.finish()
    return expectations


def scenario_from_text(text: str, source: str) -> Scenario:
    """Validate a scenario document.

    Raises:
        ScenarioError: For the first bad key.
    """
    lines = text.splitlines()
    data = parse_toml(text, source, ScenarioError)
    top = TomlTable(source, lines, (), data, ScenarioError)
    head = top.table("scenario")
    name = head.get("name", str, check=_named)
    description = head.get("description", str, "")
    start_us = _instant(head, "start")
    months = head.get("months", int, check=lambda v: None if 1 <= v <= 120 else "must be between 1 and 120")
    seed = head.get("seed", int, 0, check=_non_negative)
    tariff_name = head.get("tariff", str, "default")
    traffic_records = head.get("traffic_records", str, "session", check=_one_of(("session", "daily")))
    try:
        tariff = load_tariff(None if tariff_name == "default" else Path(source).parent / tariff_name)
    except TariffError as exc:
        raise head.error("tariff", str(exc)) from None
    head.finish()

    accounts = _accounts(top)
    gateways = _gateways(top, accounts)
    fleets = _fleets(top, accounts, gateways)
    operations = _operations(top, start_us, accounts, gateways, fleets, tariff)
    _check_gateway_lifecycle(source, gateways, operations)
    expectations = _expectations(top)
    top.finish()
    return Scenario(
        name=name,
        source=source,
        start_us=start_us,
        months=months,
        seed=seed,
        tariff=tariff,
        accounts=tuple(accounts),
        gateways=tuple(gateways),
        fleets=tuple(fleets),
        operations=tuple(operations),
        expect=expectations,
        description=description,
        traffic_records=traffic_records,
    )


def _check_gateway_lifecycle(source: str, gateways: list[GatewaySpec], operations: list[Operation]) -> None:
    """Operations must fit what exists then: gateways created before use, options enabled once."""
    exists = {gateway.id: gateway.create for gateway in gateways}
    enabled = {("terminal_lock", gateway.id) for gateway in gateways if gateway.terminal_lock and gateway.create}
    for operation in operations:
        if operation.action in ("option.enable", "option.disable"):
            assert isinstance(operation.arguments, OptionChange)
            option = (operation.arguments.option, operation.arguments.target)
            on = operation.action == "option.enable"
            if (option in enabled) == on:
                state = "already enabled" if on else "not enabled"
                raise ScenarioError(
                    f"{source}:{operation.line}: {operation.action}: {option[0]}:{option[1]} is {state} then"
                )
            (enabled.add if on else enabled.discard)(option)
        gateway = getattr(operation.arguments, "gateway", None)
        if gateway is None:
            continue
        locked = any(spec.terminal_lock for spec in gateways if spec.id == gateway)
        if operation.action in ("gateway.create", "gateway.delete") and locked:
            (enabled.add if operation.action == "gateway.create" else enabled.discard)(("terminal_lock", gateway))
        if operation.action == "gateway.create":
            if exists[gateway]:
                raise ScenarioError(
                    f"{source}:{operation.line}: gateway.create: gateway {gateway!r} already exists then"
                )
            exists[gateway] = True
        elif not exists[gateway]:
            raise ScenarioError(
                f"{source}:{operation.line}: {operation.action}: gateway {gateway!r} does not exist then"
            )
        elif operation.action == "gateway.delete":
            exists[gateway] = False


def _option(value: str) -> str | None:
    return None if re.fullmatch(OPTION_PATTERN, value) else "must be a lower-case name like 'ip_address'"


def load_scenario(path: Path) -> Scenario:
    """Load and validate a scenario file.

    Raises:
        ScenarioError: For an unreadable file or the first bad key.
    """
    try:
        text = read_text(path)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    return scenario_from_text(text, str(path))


def scale_scenario(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every fleet (and every fleet operation's count) scaled by ``factor``.

    Each fleet keeps at least one SIM, so the mix of fleets is kept; the expectations follow:

    * the floors (``*_min``) are scaled and rounded down;
    * the PIN outcomes (``locked_at_end``, ``unlocked_at_end``, ``ever_locked``, ``dead``), which
      only misconfigured-PIN fleets produce, are scaled by how much those fleets were scaled (exact
      when those fleets are alike, as in the shipped load scenarios);
    * invoice ``totals``, which do not scale, are dropped (they are checked at full size).

    Raises:
        ScenarioError: If the factor is not a finite number > 0, or the scaled fleets exceed :data:`MAX_SIMS`.
    """
    if not 0 < factor < float("inf"):
        raise ScenarioError(f"{scenario.source}: --scale must be a finite number > 0, got {factor}")

    def scaled(count: int) -> int:
        return max(1, round(count * factor))

    if sum(fleet.count for fleet in scenario.fleets) * factor > MAX_SIMS + len(scenario.fleets):  # before rounding
        raise ScenarioError(f"{scenario.source}: scaled by {factor}, the fleets exceed {MAX_SIMS:,} SIMs")
    fleets = tuple(replace(fleet, count=scaled(fleet.count)) for fleet in scenario.fleets)
    if sum(fleet.count for fleet in fleets) > MAX_SIMS:
        raise ScenarioError(f"{scenario.source}: scaled by {factor}, the fleets exceed {MAX_SIMS:,} SIMs")
    operations = tuple(
        replace(op, arguments=replace(op.arguments, count=scaled(op.arguments.count)))
        if isinstance(op.arguments, FleetOperation | DevicePower)
        else op
        for op in scenario.operations
    )
    misconfigured = [
        (before, after) for before, after in zip(scenario.fleets, fleets, strict=True) if before.pin == "misconfigured"
    ]
    pin_ratio = sum(after.count for _, after in misconfigured) / max(
        1, sum(before.count for before, _ in misconfigured)
    )

    def pin_outcome(value: int | None) -> int | None:
        return None if value is None else round(value * pin_ratio)

    def floor(value: int | None) -> int | None:
        return None if value is None else int(value * factor)

    expect = scenario.expect
    expectations = Expectations(
        locked_at_end=pin_outcome(expect.locked_at_end),
        unlocked_at_end=pin_outcome(expect.unlocked_at_end),
        ever_locked=pin_outcome(expect.ever_locked),
        dead=pin_outcome(expect.dead),
        interruptions_min=floor(expect.interruptions_min),
        sessions_min=floor(expect.sessions_min),
        refused_min=floor(expect.refused_min),
        totals={},
    )
    return replace(scenario, fleets=fleets, operations=operations, expect=expectations)
