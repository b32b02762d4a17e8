"""Shared fixtures and helpers for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from metering.tariff import Tariff, load_tariff

ROOT = Path(__file__).resolve().parent.parent
DISPUTES = ROOT / "scenarios" / "disputes"

settings.register_profile("ci", derandomize=True, print_blob=True)
"""CI draws the same examples on every run, so a red build is reproducible and nothing flakes;
developers run the default profile, which draws new examples each time (``--hypothesis-profile``)."""


@pytest.fixture(scope="session")
def tariff() -> Tariff:
    return load_tariff()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path
