"""The tariff file (TOML): prices, units, rounding, tax and the interpretation switches.

Prices are not in the service terms ("defined on the service page"), so every amount lives in a
tariff file, never in code. :func:`load_tariff` validates the whole file and raises a
:class:`TariffError` whose one-line message names the file and the dotted key: unknown keys,
negative or non-decimal prices, and missing items are all rejected.

The interpretation switches fix the readings of TARIFF.md where the terms are ambiguous
(I-1 … I-6) so that a dispute can be replayed under the other reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final

from metering.money import ROUNDING_MODES
from metering.textfile import read_text
from metering.timeutil import TimeFormatError, parse_month
from metering.toml_table import TomlTable, parse_toml

USAGE_TESTS: Final = ("per_sim_month", "per_registration")
DELETED_IN_FINAL_MONTH: Final = ("no_fee", "fee")
CONSUMPTION_ORDERS: Final = ("earliest_expiry_free_first", "earliest_expiry_paid_first", "grant_order")
EXPIRING_AT_DEDUCTION: Final = ("unavailable", "available")
SHORTFALL_ON_DELETED_ACCOUNT: Final = ("lapse", "keep")
DATA_PLANS: Final = ("metered", "data_pack")


class TariffError(Exception):
    """A bad tariff file: the message names the file, the key and the reason."""


@dataclass(frozen=True, slots=True)
class Interpretations:
    """The interpretation switches I-1 … I-6 of TARIFF.md.

    Attributes:
        usage_test: I-1, how "used for communication" is judged for SMC-38 and MONO-57:
            ``per_sim_month`` (any traffic of the SIM in the month makes every registration of it
            in that month chargeable) or ``per_registration`` (each registration period on its own).
        exempt_first_and_last_month: I-2, whether the no-communication exemption also applies to
            the registration and deletion months (``True``) or those months are always charged.
        deleted_in_final_month: I-3, a SIM deleted during the 12th idle month: ``no_fee``
            (it was not registered through the end of the period) or ``fee``.
        consumption_order: I-4, the order in which point lots are consumed.
        expiring_at_deduction: I-5, whether points expiring at the end of month M can pay for
            M's deduction on the 1st of M+1 (``unavailable``, the default) or not.
        shortfall_on_deleted_account: I-6, the points of a month-end shortfall purchase (PT-5) in
            the month the account is deleted: ``lapse`` (billed, and lapsing with the account,
            PT-12; the default) or ``keep`` (left on the deleted account, as before this switch).
    """

    usage_test: str = "per_sim_month"
    exempt_first_and_last_month: bool = True
    deleted_in_final_month: str = "no_fee"
    consumption_order: str = "earliest_expiry_free_first"
    expiring_at_deduction: str = "unavailable"
    shortfall_on_deleted_account: str = "lapse"


@dataclass(frozen=True, slots=True)
class SubOption:
    """A sub-option's fee: the rule that bills it and its full-month monthly fee (maybe 0)."""

    name: str
    rule: str
    monthly: Decimal


@dataclass(frozen=True, slots=True)
class DataPack:
    """SMC-40 data pack: a fixed monthly fee covering ``bytes`` per account and carrier pool."""

    bytes: int
    price: Decimal
    free_bytes: int


@dataclass(frozen=True, slots=True)
class Tariff:
    """A validated tariff.

    Attributes:
        name: Tariff name.
        version: Tariff version; invoices show ``name@version``.
        illustrative: True when the prices are examples, not a real price list.
        currency: Invoice currency (``JPY``).
        amount_decimals: Decimal places of line amounts and totals (0 for yen).
        line_rounding: Rounding of a line amount ``quantity x unit price``.
        tax_rate: Consumption tax rate (e.g. ``0.10``).
        tax_rounding: Rounding of the tax, once per invoice.
        interpretations: I-1 … I-6.
        sim_basic_fee: SMC-38 monthly fee per chargeable registration.
        line_maintenance_fee: SMC-39 fee per completed idle period.
        idle_months: SMC-39 length of an idle period (12).
        transitional_start: SMC-39 supplementary Art. 2 month (2022-08) as a month index.
        data_plan: SMC-40 ``metered`` or ``data_pack``.
        data_unit_bytes: SMC-40 unit size in bytes.
        data_unit_price: SMC-40 price per unit.
        data_unit_rounding: How bytes are turned into units (per SIM per month, or per pool).
        data_pack: The pack, when ``data_plan`` is ``data_pack``.
        carriers: ICCID prefixes per carrier (for data pack pools).
        gateway_fee: SMC-41 monthly fee per gateway creation.
        suboptions: SMC-42 / MONO-58 sub-option fees by option name.
        platform_basic_fee: MONO-57 monthly fee per chargeable device-ID issue.
        sms_fee: SMS-71 price per message by kind.
        points_block: PT-4/PT-7 minimum purchase and unit (20,000 points).
        points_block_price: PT-7 price of one block (100 yen).
        points_purchase_max: PT-4 maximum points in one voluntary purchase.
        points_paid_validity_months: PT-8 paid points expire at the end of grant month + this.
        points_consumption: PT-3 points consumed per count of each event type.
    """

    name: str
    version: str
    illustrative: bool
    currency: str
    amount_decimals: int
    line_rounding: str
    tax_rate: Decimal
    tax_rounding: str
    interpretations: Interpretations
    sim_basic_fee: Decimal
    line_maintenance_fee: Decimal
    idle_months: int
    transitional_start: int
    data_plan: str
    data_unit_bytes: int
    data_unit_price: Decimal
    data_unit_rounding: str
    data_pack: DataPack | None
    carriers: tuple[tuple[str, tuple[str, ...]], ...]
    gateway_fee: Decimal
    suboptions: Mapping[str, SubOption]
    platform_basic_fee: Decimal
    sms_fee: Mapping[str, Decimal]
    points_block: int
    points_block_price: Decimal
    points_purchase_max: int
    points_paid_validity_months: int
    points_consumption: Mapping[str, int]

    @property
    def label(self) -> str:
        """``name@version``, as invoices show it."""
        return f"{self.name}@{self.version}"

    @property
    def point_price(self) -> Decimal:
        """The price of one point (PT-7: 100 yen / 20,000 points = 0.005 yen)."""
        return self.points_block_price / self.points_block

    def carrier_of(self, iccid: str) -> str:
        """The carrier of a SIM by its ICCID prefix (longest prefix wins), or ``other``."""
        best = ("other", -1)
        for carrier, prefixes in self.carriers:
            for prefix in prefixes:
                if iccid.startswith(prefix) and len(prefix) > best[1]:
                    best = (carrier, len(prefix))
        return best[0]


def _head(top: TomlTable) -> dict[str, Any]:
    """[tariff]: name, version, currency."""
    head = top.table("tariff", required=True)
    name, version = head.text("name"), head.text("version")
    illustrative = head.boolean("illustrative", False)
    currency = head.text("currency", "JPY")
    head.finish()
    return {"name": name, "version": version, "illustrative": illustrative, "currency": currency}


def _invoice(top: TomlTable) -> dict[str, Any]:
    """[invoice]: amount decimals, rounding, tax (tax rate as a fraction)."""
    invoice = top.table("invoice", required=True)
    amount_decimals = invoice.integer("amount_decimals", 0)
    if amount_decimals > 6:
        raise invoice.error("amount_decimals", "must be at most 6")
    line_rounding = invoice.choice("line_rounding", tuple(ROUNDING_MODES), "half_up")
    tax_rate = invoice.money("tax_rate")
    if tax_rate > 1:
        raise invoice.error("tax_rate", 'must be a fraction such as "0.10"')
    tax_rounding = invoice.choice("tax_rounding", tuple(ROUNDING_MODES), "down")
    invoice.finish()
    return {
        "amount_decimals": amount_decimals,
        "line_rounding": line_rounding,
        "tax_rate": tax_rate,
        "tax_rounding": tax_rounding,
    }


def _interpretations(top: TomlTable) -> dict[str, Any]:
    """[interpretations]: the switches I-1 … I-6 (TARIFF.md)."""
    switches = top.table("interpretations", required=False)
    interpretations = Interpretations(
        usage_test=switches.choice("usage_test", USAGE_TESTS, "per_sim_month"),
        exempt_first_and_last_month=switches.boolean("exempt_first_and_last_month", True),
        deleted_in_final_month=switches.choice("deleted_in_final_month", DELETED_IN_FINAL_MONTH, "no_fee"),
        consumption_order=switches.choice("consumption_order", CONSUMPTION_ORDERS, "earliest_expiry_free_first"),
        expiring_at_deduction=switches.choice("expiring_at_deduction", EXPIRING_AT_DEDUCTION, "unavailable"),
        shortfall_on_deleted_account=switches.choice(
            "shortfall_on_deleted_account", SHORTFALL_ON_DELETED_ACCOUNT, "lapse"
        ),
    )
    switches.finish()
    return {"interpretations": interpretations}


def _sim_basic(top: TomlTable) -> dict[str, Any]:
    """[sim_basic_fee] (SMC-38)."""
    basic = top.table("sim_basic_fee", required=True)
    sim_basic_fee = basic.money("monthly")
    basic.finish()
    return {"sim_basic_fee": sim_basic_fee}


def _maintenance(top: TomlTable) -> dict[str, Any]:
    """[line_maintenance_fee] (SMC-39): fee, idle months, transitional start."""
    maintenance = top.table("line_maintenance_fee", required=True)
    line_maintenance_fee = maintenance.money("fee")
    idle_months = maintenance.integer("idle_months", 12, minimum=1)
    transitional_text = maintenance.text("transitional_start", "2022-08")
    try:
        transitional_start = parse_month(transitional_text)
    except TimeFormatError as exc:
        raise maintenance.error("transitional_start", str(exc)) from None
    maintenance.finish()
    return {
        "line_maintenance_fee": line_maintenance_fee,
        "idle_months": idle_months,
        "transitional_start": transitional_start,
    }


def _data_fee(top: TomlTable) -> dict[str, Any]:
    """[data_fee] (SMC-40): metered units or a data pack."""
    data_table = top.table("data_fee", required=True)
    data_plan = data_table.choice("plan", DATA_PLANS, "metered")
    data_unit_bytes = data_table.integer("unit_bytes", minimum=1)
    data_unit_price = data_table.money("price_per_unit")
    data_unit_rounding = data_table.choice("unit_rounding", tuple(ROUNDING_MODES), "up")
    pack_table = data_table.table("pack", required=data_plan == "data_pack")
    data_pack = None
    if data_plan == "data_pack":
        data_pack = DataPack(
            bytes=pack_table.integer("bytes", minimum=1),
            price=pack_table.money("price"),
            free_bytes=pack_table.integer("free_bytes", 0),
        )
    elif pack_table.data:
        pack_table.integer("bytes", minimum=1)
        pack_table.money("price")
        pack_table.integer("free_bytes", 0)
    pack_table.finish()
    data_table.finish()
    return {
        "data_plan": data_plan,
        "data_unit_bytes": data_unit_bytes,
        "data_unit_price": data_unit_price,
        "data_unit_rounding": data_unit_rounding,
        "data_pack": data_pack,
    }


def _carriers(top: TomlTable) -> dict[str, Any]:
    """[carriers]: ICCID prefixes per carrier."""
    carriers_table = top.table("carriers", required=False)
    carriers: list[tuple[str, tuple[str, ...]]] = []
    for carrier in sorted(carriers_table.data):
        prefixes = carriers_table.raw(carrier)
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p.isdigit() for p in prefixes):
            raise carriers_table.error(carrier, "must be a list of ICCID prefixes (digit strings)")
        carriers.append((carrier, tuple(prefixes)))
    carriers_table.finish()
    return {"carriers": tuple(carriers)}


def _gateway(top: TomlTable) -> dict[str, Any]:
    """[gateway_fee] (SMC-41)."""
    gateway = top.table("gateway_fee", required=True)
    gateway_fee = gateway.money("monthly")
    gateway.finish()
    return {"gateway_fee": gateway_fee}


def _suboptions(top: TomlTable) -> dict[str, Any]:
    """[suboptions] (SMC-42, MONO-58)."""
    options_table = top.table("suboptions", required=True)
    suboptions: dict[str, SubOption] = {}
    for option in sorted(options_table.data):
        entry = options_table.table(option, required=True)
        rule = entry.choice("rule", ("SMC-42", "MONO-58"), "SMC-42")
        suboptions[option] = SubOption(option, rule, entry.money("monthly"))
        entry.finish()
    options_table.finish()
    return {"suboptions": suboptions}


def _platform(top: TomlTable) -> dict[str, Any]:
    """[platform_basic_fee] (MONO-57)."""
    platform = top.table("platform_basic_fee", required=True)
    platform_basic_fee = platform.money("monthly")
    platform.finish()
    return {"platform_basic_fee": platform_basic_fee}


def _sms(top: TomlTable) -> dict[str, Any]:
    """[sms_fee] (SMS-71)."""
    sms = top.table("sms_fee", required=True)
    sms_fee = {kind: sms.money(kind) for kind in ("2fa", "a2p")}
    sms.finish()
    return {"sms_fee": sms_fee}


def _points(top: TomlTable) -> dict[str, Any]:
    """[points] (PT-1 … PT-6): blocks, purchases, validity, what consumes points."""
    points = top.table("points", required=True)
    points_block = points.integer("block", 20_000, minimum=1)
    points_block_price = points.money("block_price")
    points_purchase_max = points.integer("purchase_max", minimum=1)
    if points_purchase_max < points_block:
        raise points.error("purchase_max", "must be at least one block")
    validity = points.integer("paid_validity_months", 24, minimum=0)
    consumption_table = points.table("consumption", required=True)
    consumption: dict[str, int] = {}
    for event_type in sorted(consumption_table.data):
        if event_type not in ("mono.message", "sms.sent"):
            raise consumption_table.error(event_type, "only counted events (mono.message, sms.sent) consume points")
        consumption[event_type] = consumption_table.integer(event_type, minimum=0)
    consumption_table.finish()
    points.finish()
    return {
        "points_block": points_block,
        "points_block_price": points_block_price,
        "points_purchase_max": points_purchase_max,
        "points_paid_validity_months": validity,
        "points_consumption": consumption,
    }


_SECTIONS: Final = (
    _head,
    _invoice,
    _interpretations,
    _sim_basic,
    _maintenance,
    _data_fee,
    _carriers,
    _gateway,
    _suboptions,
    _platform,
    _sms,
    _points,
)
"""The tariff's sections, read in this order (a bad key is reported in the order of the file's sections)."""


def tariff_from_mapping(data: Mapping[str, Any], source: str = "<tariff>", lines: Sequence[str] = ()) -> Tariff:
    """Validate a decoded tariff document (``lines``: its file's text, to name the line of a bad key).

    Raises:
        TariffError: Naming the file, the line and the first bad key.
    """
    top = TomlTable(source, lines, (), dict(data), TariffError)
    fields: dict[str, Any] = {}
    for section in _SECTIONS:
        fields.update(section(top))
    top.finish()
    return Tariff(**fields)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (tables merge, other values replace)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path | None, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str, list[str]]:
    """Read a tariff document, resolving ``[tariff] base`` (``default`` or a path relative to it)."""
    if path is None:
        text = resources.files("metering").joinpath("tariffs/default.toml").read_text(encoding="utf-8")
        source = "metering/tariffs/default.toml"
    else:
        source = str(path)
        try:
            text = read_text(path)
        except ValueError as exc:
            raise TariffError(str(exc)) from None
    data = parse_toml(text, source, TariffError)
    head = data.get("tariff")
    base = head.pop("base", None) if isinstance(head, dict) else None
    if base is None:
        return data, source, text.splitlines()
    if not isinstance(base, str) or not base:
        raise TariffError(f"{source}: key 'tariff.base': must be \"default\" or a tariff file path")
    if source in chain:
        raise TariffError(f"{source}: key 'tariff.base': tariffs extend each other in a loop")
    base_path = None if base == "default" else (Path(source).parent / base)
    base_data, _, _ = _read_toml(base_path, (*chain, source))
    return _merge(base_data, data), source, text.splitlines()


def load_tariff(path: Path | None = None) -> Tariff:
    """Load and validate a tariff file; ``None`` loads the shipped ``default.toml``.

    A tariff may extend another with ``[tariff] base = "default"`` (or a relative path): its
    tables are merged over the base, so a dispute tariff states only what differs.

    Raises:
        TariffError: For an unreadable file, bad TOML, or any bad key.
    """
    data, source, lines = _read_toml(path)
    return tariff_from_mapping(data, source, lines)
