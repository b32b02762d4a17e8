"""Shared fixtures and helpers for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from metering.compact import CompactLog
from metering.tariff import Tariff, load_tariff
from simulator.bench import scaled
from simulator.fast_engine import FastEngine
from simulator.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
DISPUTES = ROOT / "scenarios" / "disputes"

settings.register_profile("ci", derandomize=True, print_blob=True)
"""CI draws the same examples on every run, so a red build is reproducible and nothing flakes;
developers run the default profile, which draws new examples each time (``--hypothesis-profile``)."""


@pytest.fixture(scope="session")
def tariff() -> Tariff:
    return load_tariff()


@pytest.fixture(scope="session")
def small_load() -> Scenario:
    """load-100k scaled down to 150 SIMs: the load mix, small enough to rate in a test."""
    return scaled(ROOT / "scenarios/load-100k.toml", 150)


@pytest.fixture(scope="session")
def small_load_log(small_load: Scenario) -> CompactLog:
    """The events :func:`small_load` generates, as the fast engine hands them over (traffic in columns)."""
    log = FastEngine(small_load).run()
    assert isinstance(log, CompactLog) and len(log.traffic) > 10_000
    return log


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under a run folder, by its path in the folder: what `diff -r` of two folders compares."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }
