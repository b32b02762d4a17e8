"""``--engine ray``: one Ray task per account on a real local Ray with 2 CPUs, same results as serial."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from metering.events import Event
from simulator.bench import scaled
from simulator.engine import Engine
from simulator.fast_engine import FastEngine
from simulator.ray_engine import run_sharded
from simulator.results import join_shards
from simulator.runner import run_scenario
from simulator.scenario import Scenario
from simulator.shard import simulate_shard

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mgwsim[ray]'")


def content(event: Event) -> tuple[object, ...]:
    return (event.ts, event.type, event.account, event.id, tuple(sorted(event.content().items())))


@pytest.fixture(scope="module")
def load_400() -> Scenario:
    """The load scenario at 400 SIMs: 10 accounts, every kind of device, two months."""
    from dataclasses import replace

    return replace(scaled(ROOT / "scenarios/load-100k.toml", 400), months=2)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_shards_of_accounts_write_exactly_the_events_of_the_whole_run(load_400: Scenario) -> None:
    whole = FastEngine(load_400).run()
    shards = [FastEngine(load_400, frozenset({account})).run() for account in load_400.accounts]
    assert sum(len(shard) for shard in shards) == len(whole)
    assert Counter(map(content, (event for shard in shards for event in shard))) == Counter(map(content, whole))
    reference_shard = Engine(load_400, frozenset({"acct-03"})).run()
    assert Counter(map(content, reference_shard)) == Counter(map(content, shards[3]))


def test_joined_shards_equal_the_serial_run(load_400: Scenario) -> None:
    serial = simulate_shard(load_400, None)
    joined = join_shards([simulate_shard(load_400, frozenset({account})) for account in load_400.accounts])
    assert joined.event_count == serial.event_count
    assert joined.sim_states == serial.sim_states
    assert (joined.stats.sessions, joined.stats.closures) == (serial.stats.sessions, serial.stats.closures)
    assert joined.stats.traffic_per_day == serial.stats.traffic_per_day
    for month, document in serial.rating.documents.items():
        assert joined.rating.documents[month].dumps() == document.dumps()
    joined_log = [event.content() for event in joined.events]
    assert joined_log != [] and joined_log == [event.content() for event in serial.events]  # in the same order


def test_ray_engine_on_a_local_ray_with_two_cpus_gives_the_serial_invoices(
    load_400: Scenario, local_ray: None, tmp_path: Path
) -> None:
    progress: list[float] = []
    sharded = run_sharded(load_400, "fast", None, keep_events=True, progress=progress.append)
    serial = run_scenario(load_400)
    assert progress[-1] == 1.0
    assert sharded.event_count == serial.event_count
    for document in serial.documents:
        assert sharded.rating.documents[document.month].dumps() == document.dumps()
    assert Counter(map(content, sharded.events)) == Counter(map(content, serial.events))


def test_run_on_a_local_ray_writes_the_fast_engines_folder_and_says_only_what_it_wrote(tmp_path: Path) -> None:
    """``mgwsim run --engine ray`` as a user runs it: its own local Ray, the same files as the fast engine.

    Ray's notice that its default token authentication is on ("Token authentication is enabled …")
    once came on every such run's standard error.
    """
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}  # Ray's default
    folders = {engine: tmp_path / engine for engine in ("fast", "ray")}
    said = {}
    for engine, folder in folders.items():
        done = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", "quickstart", "--engine", engine, "--out", str(folder)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        said[engine] = done.stderr
    assert said["ray"] == said["fast"].replace(str(folders["fast"]), str(folders["ray"]))
    assert all(line.startswith("wrote ") for line in said["ray"].splitlines()), said["ray"]
    for path in sorted(folders["fast"].rglob("*")):
        if path.is_file():
            assert (folders["ray"] / path.relative_to(folders["fast"])).read_bytes() == path.read_bytes(), path.name
