"""``mgwsim bench sim``: the load scenario beside a bare SimPy loop, measured in one run.

Reports the wall time and peak memory of simulating (and metering) the load scenario, the sessions
simulated per second, and — measured in the same run — the cost per event of a bare SimPy loop
(one process per device, one timeout per session, no logic). The figure to compare is the cost
per simulated session against the bare cost per event. ``--sims`` scales the scenario's fleets
down proportionally (every fleet keeps at least one device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import simpy
from rich.table import Table

from metering.bench import _peak_rss_mb, figures_table, in_child_process

if TYPE_CHECKING:
    from simulator.scenario import Scenario


def scaled(path: Path, sims: int) -> Scenario:
    """The scenario at ``path`` with its fleets scaled to about ``sims`` SIMs in all."""
    from simulator.scenario import load_scenario, scale_scenario

    scenario = load_scenario(path)
    total = scenario.sim_count
    if sims >= total:
        return scenario
    return scale_scenario(scenario, sims / total)


def bare_simpy(processes: int, events: int) -> float:
    """Seconds per event of a bare SimPy loop: ``processes`` processes, one timeout each step."""
    env = simpy.Environment()
    per_process = max(1, events // processes)

    def loop(index: int) -> Any:
        for _ in range(per_process):
            yield env.timeout(1 + index % 7)

    for index in range(processes):
        env.process(loop(index))
    start = time.perf_counter()
    env.run()
    return (time.perf_counter() - start) / (per_process * processes)


def _simulate(path: str, sims: int, engine: str, outputs: str | None, queue: Any) -> None:
    """One run in this (child) process; with ``outputs``, the run folder written there too, in the time."""
    from simulator.runner import folder_log_name, run_scenario, run_streamed, write_outputs
    from simulator.streamed_run import SHARD_SIMS, shards_of

    scenario = scaled(Path(path), sims)
    ray_start = 0.0
    if engine == "ray":
        from simulator.ray_engine import start_ray

        began = time.perf_counter()
        start_ray(None, num_cpus=RAY_CPUS)  # timed apart: a cluster that is already up costs nothing
        ray_start = time.perf_counter() - began
    start = time.perf_counter()
    log_name = ""
    if outputs is not None and engine == "fast" and len(shards_of(scenario, SHARD_SIMS)) > 1:
        # as `mgwsim run --out` runs a fleet this large: in shards, each written as it completes
        result, _ = run_streamed(scenario, Path(outputs) / "run", SHARD_SIMS)
        computed = result.simulate_seconds + result.rate_seconds
        log_name = "events.parquet"
    else:
        result = run_scenario(scenario, engine_name=engine, keep_events=outputs is not None)
        computed = time.perf_counter() - start
        if outputs is not None:
            log_name = folder_log_name(result)[0]
            write_outputs(result, Path(outputs) / "run", None)
    wall = time.perf_counter() - start
    queue.put(
        {
            "sims": scenario.sim_count,
            "wall": wall,
            "sessions": result.stats.sessions,
            "events": result.event_count,
            "interruptions": result.stats.interruptions,
            "simulate": result.simulate_seconds,
            "rate": result.rate_seconds,
            "peak_mb": _peak_rss_mb(),
            "ray_start": ray_start,
            "outputs": wall - computed if outputs is not None else None,
            "log": log_name,
            "bytes": sum(item.stat().st_size for item in (Path(outputs) / "run").rglob("*") if item.is_file())
            if outputs
            else 0,
        }
    )


def _bare(processes: int, events: int, queue: Any) -> None:
    queue.put({"per_event": bare_simpy(processes, events), "processes": processes, "events": events})


RAY_CPUS = 2
"""The local Ray of ``bench sim --engine ray``: two workers, as the machine has two cores."""


@dataclass
class SimBenchReport:
    """The figures of one ``mgwsim bench sim`` run.

    Attributes:
        scenario: Scenario name.
        engine: The engine benchmarked.
        run: Figures of the engine's run.
        bare: Figures of the bare SimPy loop.
        serial: With ``ray``, the serial fast engine's figures, measured in the same run.
    """

    scenario: str
    engine: str
    run: dict[str, Any]
    bare: dict[str, Any]
    serial: dict[str, Any] | None = None

    def table(self) -> Table:
        """The report as a rich table."""
        run, bare = self.run, self.bare
        sessions = max(1, run["sessions"])
        per_session = run["simulate"] / sessions
        title = f"mgwsim bench sim: {self.scenario}, {run['sims']:,} SIMs, engine {self.engine}"
        rows = [
            (
                "wall time (simulate + meter 12 months" + (" + write the run folder)" if run["outputs"] else ")"),
                f"{run['wall']:.1f} s",
            ),
            (
                "of which simulating / metering" + (" (summed over tasks)" if self.engine == "ray" else ""),
                f"{run['simulate']:.1f} s / {run['rate']:.1f} s",
            ),
            ("peak memory", f"{run['peak_mb']:,.0f} MB" + (" (driver)" if self.engine == "ray" else "")),
            ("sessions simulated", f"{run['sessions']:,}"),
            ("sessions per second", f"{run['sessions'] / run['wall']:,.0f}"),
            ("events in the log", f"{run['events']:,}"),
            ("sessions cut for mass traffic", f"{run['interruptions']:,}"),
            (f"bare SimPy, {bare['processes']:,} processes: cost per event", f"{bare['per_event'] * 1e6:.2f} µs"),
            ("cost per simulated session (simulating time / sessions)", f"{per_session * 1e6:.3f} µs"),
            ("session cost / bare SimPy event cost", f"{per_session / bare['per_event']:.3f}"),
            (
                "the same, counting metering too",
                f"{(run['simulate'] + run['rate']) / max(1, run['sessions']) / bare['per_event']:.3f}",
            ),
        ]
        if run["outputs"] is not None:
            rows += [
                (f"of which writing the run folder ({run['log']}, invoices, report)", f"{run['outputs']:.1f} s"),
                ("run folder size", f"{run['bytes'] / 1e6:,.0f} MB"),
                (
                    "the same, with the outputs (wall time / sessions / bare event)",
                    f"{run['wall'] / max(1, run['sessions']) / bare['per_event']:.3f}",
                ),
            ]
        if self.serial is not None:
            rows += [
                ("serial fast engine: wall time", f"{self.serial['wall']:.1f} s"),
                ("serial fast engine: peak memory", f"{self.serial['peak_mb']:,.0f} MB"),
                (
                    "serial fast engine: session cost / bare SimPy event cost",
                    f"{self.serial['simulate'] / max(1, self.serial['sessions']) / bare['per_event']:.3f}",
                ),
                ("starting the local Ray (not in the wall time)", f"{run['ray_start']:.1f} s"),
                (f"ray ({RAY_CPUS} local workers) / serial wall time", f"{run['wall'] / self.serial['wall']:.2f}"),
            ]
        return figures_table(title, rows)


def run_sim_bench(
    path: Path, sims: int, engine: str, progress: Any, outputs: bool = False, directory: Path | None = None
) -> SimBenchReport:
    """Run the benchmark, each part in its own child process.

    The engine's run (with ``outputs``, as ``mgwsim run --out`` does: the run folder written to a
    temporary folder in ``directory``, in the time); with ``ray``, the serial fast engine too;
    then the bare SimPy loop.
    """
    import tempfile

    serial = None
    if engine == "ray":
        progress(f"simulating {path.name} at {sims:,} SIMs with the serial fast engine …")
        serial = in_child_process(_simulate, str(path), sims, "fast", None)
    progress(f"simulating {path.name} at {sims:,} SIMs with the {engine} engine …")
    if outputs:
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            run = in_child_process(_simulate, str(path), sims, engine, scratch)
    else:
        run = in_child_process(_simulate, str(path), sims, engine, None)
    progress("bare SimPy loop …")
    bare = in_child_process(_bare, run["sims"], max(1_000_000, run["sims"] * 20))
    return SimBenchReport(path.stem, engine, run, bare, serial)
