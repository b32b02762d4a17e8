"""Tariff validation: every bad key is named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from metering.tariff import TariffError, load_tariff


def test_default_tariff_is_illustrative_and_has_the_point_facts() -> None:
    tariff = load_tariff()
    assert tariff.illustrative
    assert tariff.points_block == 20_000 and tariff.points_block_price == Decimal(100)
    assert tariff.point_price == Decimal("0.005")
    assert tariff.points_consumption == {"mono.message": 1}
    assert tariff.tax_rate == Decimal("0.10") and tariff.tax_rounding == "down"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text('[tariff]\nbase = "default"\nname = "t"\nversion = "1"\n' + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[sim_basic_fee]\nmonthly = "-1"\n', "t.toml:6: key 'sim_basic_fee.monthly': must not be negative"),
        ("[sim_basic_fee]\nmonthly = 1.5\n", "key 'sim_basic_fee.monthly': write money as a string"),
        ('[sim_basic_fee]\nmonthly = "ten"\n', "key 'sim_basic_fee.monthly': 'ten' is not a decimal number"),
        ('[sim_basic_fee]\nmontly = "1"\n', "t.toml:6: key 'sim_basic_fee.montly': unknown key"),
        ('[interpretations]\nusage_test = "sometimes"\n', "key 'interpretations.usage_test': must be one of"),
        ('[data_fee]\nplan = "data_pack"\n', "key 'data_fee.pack': is required"),
        ('[points.consumption]\n"sim.traffic" = 1\n', "key 'points.consumption.sim.traffic'"),
        ('[suboptions.x]\nrule = "SMC-99"\nmonthly = "1"\n', "key 'suboptions.x.rule'"),
        ("[invoice]\ntax_rate = 3\n", "key 'invoice.tax_rate'"),
        ("surprise = 1\n", "t.toml:5: key 'tariff.surprise': unknown key"),
    ],
)
def test_bad_tariffs_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(TariffError, match=r"t\.toml") as raised:
        load_tariff(write(tmp_path, body))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_item_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[tariff]\nname = "t"\nversion = "1"\n[invoice]\ntax_rate = "0.1"\n', encoding="utf-8")
    with pytest.raises(TariffError, match=r"t\.toml:1: key 'sim_basic_fee': is required"):
        load_tariff(path)


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes(b"[[[\x00")
    with pytest.raises(TariffError, match=r"not valid TOML|not UTF-8"):
        load_tariff(path)


def test_not_toml_names_the_line(tmp_path: Path) -> None:
    """file:line, as every other tariff and scenario error (was: the file only, the line inside the reason)."""
    path = tmp_path / "t.toml"
    path.write_text('[tariff]\nname = "t"\n\nno equals sign here\n', encoding="utf-8")
    with pytest.raises(TariffError, match=r"^.*t\.toml:4: not valid TOML \("):
        load_tariff(path)
