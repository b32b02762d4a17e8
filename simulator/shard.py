"""Simulating and rating some accounts of a scenario: one shard, serially (the Ray engine runs many)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from metering.fast import rate_events
from metering.reference import rate_reference
from simulator.engine import Engine
from simulator.results import MeteringFailure, ShardResult
from simulator.scenario import Scenario

LOG = logging.getLogger(__name__)
ENGINES: Final = ("fast", "reference")
"""The engines a shard is simulated with (``ray`` shards by account and runs ``fast`` in each)."""


def simulate_shard(
    scenario: Scenario,
    accounts: frozenset[str] | None,
    rater: str = "fast",
    engine_name: str = "fast",
    keep_events: bool = True,
    progress: Callable[[float], None] | None = None,
) -> ShardResult:
    """Simulate the accounts (``None``: all) with the named engine and meter their events.

    Raises:
        MeteringFailure: If the simulated log does not rate (a defect of the simulator).
        ValueError: For an engine name that is not one of :data:`ENGINES`.
    """
    from simulator.fast_engine import FastEngine

    if engine_name not in ENGINES:
        raise ValueError(f"unknown engine {engine_name!r} (engines: {', '.join(ENGINES)}, ray)")
    began = time.perf_counter()
    engine = FastEngine(scenario, accounts) if engine_name == "fast" else Engine(scenario, accounts)
    LOG.info(
        "simulating %s with the %s engine: %d SIMs, %s",
        scenario.name,
        engine_name,
        len(engine.devices),
        "all accounts" if accounts is None else "accounts " + ", ".join(sorted(accounts)),
    )
    events = engine.run(progress)
    states = Counter(device.status for device in engine.devices)
    states["registered at the end"] = engine.world.registered_count
    stats = engine.stats
    del engine  # the devices and their timelines are not needed to rate: free them first
    simulated = time.perf_counter()
    LOG.info("simulated in %.1f s: %d sessions, %d events", simulated - began, stats.sessions, len(events))
    if rater == "reference":
        rating = rate_reference(events, scenario.tariff, scenario.billing_months)
    else:
        rating = rate_events(events, scenario.tariff, scenario.billing_months)
    if rating.errors:
        raise MeteringFailure(f"the simulated event log does not rate: {rating.errors[0]}")
    rated = time.perf_counter()
    months = len(scenario.billing_months)
    LOG.info(
        "metered %d month%s with the %s rater in %.1f s", months, "" if months == 1 else "s", rater, rated - simulated
    )
    return ShardResult(
        events if keep_events else [], len(events), stats, states, rating, simulated - began, rated - simulated
    )
