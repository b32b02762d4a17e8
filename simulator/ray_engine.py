"""``--engine ray``: the fast engine, one Ray task per account, for fleets beyond one process.

Accounts share nothing in a scenario (a fleet's gateway belongs to its account), so each account
is simulated and rated on its own (:func:`~simulator.shard.simulate_shard`) as a Ray task; the
driver joins the invoices, the figures and — when asked — the event logs.

Randomness needs no coordination: every random draw of a SIM comes from a stream keyed by
``(seed, stream, SIM number, period)`` (a ``numpy.random.SeedSequence`` per key, or the counter
hash of :mod:`devices.keyed_random`), and a shard keeps the SIM numbers, ICCIDs and operation
numbers of the whole scenario. The shards therefore write exactly the events of a serial run, and
the invoices are byte-identical to it.

Without an address a local Ray is started with the machine's CPUs (``num_cpus``); with
``ray://…`` or ``HOST:PORT`` the tasks go to that cluster, whose workers must have mgwsim installed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from metering.compact import concatenate_logs
from metering.rating import merge_ratings
from metering.store import THREADS_VARIABLE
from simulator.results import ShardResult
from simulator.scenario import Scenario
from simulator.shard import simulate_shard
from simulator.world import RunStats


class RayUnavailable(Exception):
    """Ray is not installed, or the cluster cannot be reached (one-line message)."""


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray; return whether this call started it.

    Raises:
        RayUnavailable: If Ray is missing or the cluster does not answer.
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'mgwsim[ray]'") from None
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise RayUnavailable(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    return True


def run_sharded(
    scenario: Scenario,
    rater: str,
    address: str | None,
    keep_events: bool,
    progress: Callable[[float], None] | None = None,
    num_cpus: int | None = None,
) -> ShardResult:
    """Simulate and rate every account as a Ray task; join the results in account order."""
    import ray

    started = start_ray(address, num_cpus)
    try:
        task = ray.remote(_shard)
        shared = ray.put(scenario)
        pending = {
            task.remote(shared, frozenset({account}), rater, keep_events): position
            for position, account in enumerate(scenario.accounts)
        }
        results: list[Any] = [None] * len(pending)
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for reference in done:
                results[pending[reference]] = ray.get(reference)
            if progress is not None:
                progress(1 - len(waiting) / len(pending))
    finally:
        if started:
            ray.shutdown()
    return join_shards(results)


def _shard(scenario: Scenario, accounts: frozenset[str], rater: str, keep_events: bool) -> ShardResult:
    # one task per CPU already: DuckDB's own threads would only fight the other tasks for the cores
    os.environ.setdefault(THREADS_VARIABLE, "1")
    return simulate_shard(scenario, accounts, rater, "fast", keep_events)


def join_shards(shards: list[ShardResult]) -> ShardResult:
    """One result of the results of disjoint accounts, as a serial run would give it."""
    stats = RunStats()
    states: Counter[str] = Counter()
    for shard in shards:
        stats = stats.merged(shard.stats)
        states.update(shard.sim_states)
    events = concatenate_logs([shard.events for shard in shards]) if any(shard.events for shard in shards) else []
    return ShardResult(
        events,
        sum(shard.event_count for shard in shards),
        stats,
        states,
        merge_ratings(shard.rating for shard in shards),
        sum(shard.simulate_seconds for shard in shards),
        sum(shard.rate_seconds for shard in shards),
    )
