"""A run in shards (``--shard-sims``) writes what the whole run writes, whatever the shard size.

The invoices and the Parquet log byte for byte, the summary, the printed tables; memory is held
to a shard. Checked through the CLI, as a user runs it, on the load scenario at 2 %.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import folder_files
from test_cli import mgwsim

from metering.eventlog import read_event_log
from simulator.scenario import load_scenario, scale_scenario
from simulator.streamed_run import shards_of

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "scenarios" / "load-100k.toml"


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = mgwsim("run", LOAD, "--scale", "0.02", "--out", out, "--log-format", "parquet", columns=200)
    assert done.returncode == 0, done.stderr
    (out.parent / "stdout.txt").write_text(done.stdout)
    return out


def _summary(out: Path) -> dict[str, object]:
    figures: dict[str, object] = json.loads((out / "summary.json").read_text())
    figures.pop("event_log")
    return figures


def _events(out: Path) -> Counter[tuple[object, ...]]:
    log = next(path for path in out.iterdir() if path.name.startswith("events."))
    return Counter((event.account, event.id, tuple(sorted(event.content().items()))) for event in read_event_log(log))


@pytest.mark.parametrize("shard_sims", [1, 450])
def test_a_run_in_shards_writes_what_the_whole_run_writes(whole: Path, tmp_path: Path, shard_sims: int) -> None:
    out = tmp_path / "run"
    shards = ["--shard-sims", str(shard_sims), "--log-format", "parquet"]
    done = mgwsim("run", LOAD, "--scale", "0.02", "--out", out, *shards, columns=200)
    assert done.returncode == 0, done.stderr
    names = sorted(path.name for path in (whole / "invoices").iterdir())
    assert names == sorted(path.name for path in (out / "invoices").iterdir()) and len(names) == 12
    for name in names:
        assert (out / "invoices" / name).read_bytes() == (whole / "invoices" / name).read_bytes(), name
    assert _summary(out) == _summary(whole)
    assert done.stdout == (whole.parent / "stdout.txt").read_text()
    log = json.loads((out / "summary.json").read_text())["event_log"]
    assert log == {"file": "events.parquet", "why": "asked for"}
    assert _events(out) == _events(whole)
    # the same bytes: one log order (by account, then by time) and row groups of one size
    assert (out / "events.parquet").read_bytes() == (whole / "events.parquet").read_bytes()
    assert (out / "report.png").stat().st_size > 10_000
    listed = {entry["path"] for entry in json.loads((out / "manifest.json").read_text())["files"]}
    assert listed == {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} - {"manifest.json"}


def test_a_run_in_shards_settles_its_log_format_as_the_whole_run_does(tmp_path: Path) -> None:
    """``--log-format auto``: the same folder in shards as whole, every file, summary and log format included.

    The shards stream Parquet, not knowing yet how many events the run will have; a run of at most
    1,000,000 events then gets the JSONL log a run of the fleet whole writes, and the same reason
    for it in its summary.
    """
    folders = {}
    for shard_sims in ("450", "100000"):
        folders[shard_sims] = tmp_path / shard_sims
        done = mgwsim("run", LOAD, "--scale", "0.02", "--out", folders[shard_sims], "--shard-sims", shard_sims)
        assert done.returncode == 0, done.stderr
    in_shards, whole = folder_files(folders["450"]), folder_files(folders["100000"])
    assert sorted(in_shards) == sorted(whole)
    assert "events.jsonl" in whole and len(whole) == 16, sorted(whole)
    for name, data in whole.items():
        assert in_shards[name] == data, name
    log = json.loads(in_shards["summary.json"])["event_log"]
    assert log == {"file": "events.jsonl", "why": "at most 1,000,000 events"}


def test_shards_are_whole_accounts_in_order_within_the_bound() -> None:
    scenario = scale_scenario(load_scenario(LOAD), 0.02)
    per_account = Counter[str]()
    for fleet in scenario.fleets:
        per_account[fleet.account] += fleet.count
    for bound in (1, 300, 450, 1_000, 10**6):
        shards = shards_of(scenario, bound)
        flat = [account for shard in shards for account in sorted(shard)]
        assert flat == sorted(scenario.accounts)
        for shard in shards:
            assert len(shard) == 1 or sum(per_account[account] for account in shard) <= bound
    assert len(shards_of(scenario, 10**6)) == 1


def test_outputs_a_shard_cannot_stream_are_refused_before_the_run(tmp_path: Path) -> None:
    done = mgwsim(
        "run", LOAD, "--scale", "0.02", "--out", tmp_path / "run", "--shard-sims", "450",
        "--events", tmp_path / "e.jsonl",
    )  # fmt: skip
    assert done.returncode == 2
    assert "--events: not with a run in" in done.stderr and "raise --shard-sims" in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "e.jsonl").exists()


def test_a_run_in_shards_without_out_prints_the_same_and_writes_nothing(whole: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(LOAD), "--scale", "0.02", "--shard-sims", "450"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (whole.parent / "stdout.txt").read_text()
    assert list(tmp_path.iterdir()) == []
