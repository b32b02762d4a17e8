"""SMC-40, the data fee (Secure Mobile Connect terms Art. 40).

Monthly, by the volume transmitted over registered SIMs (uplink + downlink). The default plan is
metered: bytes of each SIM in the month are turned into billed units with the tariff's unit size
and rounding. The data pack plan (Art. 40(2)) is a fixed monthly fee per account and carrier pool
covering a volume; a free allowance is used first, unused volume is not carried over, and volume
beyond the pack is metered at the normal rate for the pool (it is not a cap).
"""

from __future__ import annotations

from dataclasses import dataclass

from metering.history import AccountHistory
from metering.money import divide_round
from metering.rules import Charge, NoCharge, Outcome
from metering.tariff import Tariff
from metering.timeutil import format_month


def _month_volume(history: AccountHistory, sim: str, month: int) -> tuple[int, int, str | None]:
    """Bytes, event count and first event id of a SIM's traffic in the month."""
    usages = [usage for usage in history.traffic.get(sim, ()) if usage.month == month]
    return sum(usage.amount for usage in usages), len(usages), usages[0].event_id if usages else None


def _registered_sims(history: AccountHistory, month: int) -> list[str]:
    return [sim for sim in sorted(history.sims) if any(p.covers_month(month) for p in history.sims[sim])]


def metered_note_template(month: int, tariff: Tariff) -> str:
    """The note of a metered data fee line, with ``{volume}``, ``{events}`` and ``{units}`` to fill in."""
    return (
        f"{{volume}} bytes up and down in {{events}} traffic event(s) in {format_month(month)} = {{units}} unit(s) of "
        f"{tariff.data_unit_bytes} bytes, rounded {tariff.data_unit_rounding} (Art. 40(1))"
    )


def metered_note(month: int, volume: int, events: int, units: int, tariff: Tariff) -> str:
    """The note of a metered data fee line (shared by every rater)."""
    return metered_note_template(month, tariff).format(volume=volume, events=events, units=units)


def metered_data_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """SMC-40 metered: per SIM and month, bytes → units (rounded per the tariff)."""
    outcomes: list[Outcome] = []
    name = format_month(month)
    for sim in _registered_sims(history, month):
        volume, count, first = _month_volume(history, sim, month)
        units = divide_round(volume, tariff.data_unit_bytes, tariff.data_unit_rounding)
        if units == 0:
            outcomes.append(
                NoCharge(
                    "data_fee",
                    "SMC-40",
                    sim,
                    f"no data fee: {volume} bytes in {name} make 0 billed units (Art. 40(1))",
                    (first,) if first else (),
                )
            )
            continue
        outcomes.append(
            Charge(
                "data_fee",
                "SMC-40",
                sim,
                units,
                tariff.data_unit_price,
                (first,) if first else (),
                f"{volume} bytes up and down in {count} traffic event(s) in {name} = {units} unit(s) of "
                f"{tariff.data_unit_bytes} bytes, rounded {tariff.data_unit_rounding} (Art. 40(1))",
            )
        )
    return outcomes


@dataclass(frozen=True, slots=True)
class Pool:
    """One account's SIMs of one carrier in a month, for the data pack.

    Attributes:
        sims: Registered SIMs of the carrier that touch the month.
        volume: Their bytes in the month.
        evidence: First traffic event of each SIM with traffic, in ICCID order.
    """

    sims: int
    volume: int
    evidence: tuple[str, ...]


def pack_charges(pools: dict[str, Pool], month: int, tariff: Tariff) -> list[Outcome]:
    """SMC-40 data pack charges from per-carrier pools: the pack fee plus volume beyond it."""
    pack = tariff.data_pack
    assert pack is not None, "pack_charges needs a tariff with a data pack"
    outcomes: list[Outcome] = []
    name = format_month(month)
    for carrier in sorted(pools):
        pool = pools[carrier]
        subject = f"pool:{carrier}"
        outcomes.append(
            Charge(
                "data_fee",
                "SMC-40",
                subject,
                1,
                pack.price,
                pool.evidence,
                f"data pack for {pool.sims} {carrier} SIM(s) in {name}: {pack.bytes} bytes "
                f"(free allowance {pack.free_bytes} bytes used first) (Art. 40(2))",
            )
        )
        beyond = max(0, pool.volume - pack.free_bytes - pack.bytes)
        units = divide_round(beyond, tariff.data_unit_bytes, tariff.data_unit_rounding)
        if units:
            outcomes.append(
                Charge(
                    "data_fee",
                    "SMC-40",
                    subject,
                    units,
                    tariff.data_unit_price,
                    pool.evidence,
                    f"pool volume {pool.volume} bytes in {name} exceeds the free allowance and the pack by "
                    f"{beyond} bytes = {units} unit(s) at the normal rate (Art. 40(1), 40(2))",
                )
            )
    return outcomes


def history_pools(
    history: AccountHistory, month: int, tariff: Tariff
) -> dict[str, tuple[int, int, list[tuple[str, str]]]]:
    """Per carrier: registered SIM count, volume, and ``(iccid, first event id)`` of SIMs with traffic."""
    pools: dict[str, tuple[int, int, list[tuple[str, str]]]] = {}
    for sim in _registered_sims(history, month):
        carrier = tariff.carrier_of(sim)
        count, volume, firsts = pools.get(carrier, (0, 0, []))
        sim_volume, _, first = _month_volume(history, sim, month)
        if first:
            firsts.append((sim, first))
        pools[carrier] = (count + 1, volume + sim_volume, firsts)
    return pools


def data_pack_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """SMC-40 data pack: per carrier pool, the pack fee plus metered volume beyond it."""
    pools = {
        carrier: Pool(count, volume, tuple(first for _, first in sorted(firsts)))
        for carrier, (count, volume, firsts) in history_pools(history, month, tariff).items()
    }
    return pack_charges(pools, month, tariff)


def data_fee(history: AccountHistory, month: int, tariff: Tariff) -> list[Outcome]:
    """Rate SMC-40 under the tariff's plan."""
    if tariff.data_plan == "data_pack":
        return data_pack_fee(history, month, tariff)
    return metered_data_fee(history, month, tariff)
