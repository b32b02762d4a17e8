"""Crash safety of the store: ``mgwsim ingest`` killed with SIGKILL at random points."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conftest import write_jsonl

from metering.store import EventStore

BATCH = 20_000


def big_log(path: Path, sims: int = 500, traffic: int = 160_000) -> Path:
    """Registrations, then many traffic events over two months (JST)."""
    records: list[dict[str, object]] = [
        {"ts": "2026-01-01T00:00:00+09:00", "type": "sim.registered", "account": "acct-1",
         "id": f"reg-{sim}", "sim": f"8981300000000{sim:06d}"}
        for sim in range(sims)
    ]  # fmt: skip
    for number in range(traffic):
        day = 1 + number % 59
        month, day = (1, day) if day <= 31 else (2, day - 31)
        records.append(
            {
                "ts": f"2026-{month:02d}-{day:02d}T12:00:00+09:00",
                "type": "sim.traffic",
                "account": "acct-1",
                "id": f"t-{number}",
                "sim": f"8981300000000{number % sims:06d}",
                "up_bytes": 1000 + number % 977,
                "down_bytes": 100,
                "route": "closed",
            }
        )
    return write_jsonl(path, records)


def mgwsim(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def bill(*source: str | Path) -> str:
    done = mgwsim("bill", *source, "--month", "2026-01..2026-02")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    return out


def test_a_killed_ingest_keeps_the_whole_log_or_none_and_a_rerun_completes(tmp_path: Path) -> None:
    log = big_log(tmp_path / "big.jsonl")
    total = 500 + 160_000
    expected = bill(log)
    timed = mgwsim("ingest", log, "--db", tmp_path / "timed.duckdb")
    began = time.monotonic()
    assert timed.wait(timeout=300) == 0
    duration = time.monotonic() - began
    rng = random.Random(7)
    store = tmp_path / "store.duckdb"
    kills = 0
    for _ in range(4):
        ingest = mgwsim("ingest", log, "--db", store, "--batch", str(BATCH))
        time.sleep(rng.uniform(0.3, 0.95) * duration)
        if ingest.poll() is None:
            ingest.send_signal(signal.SIGKILL)
            kills += 1
        ingest.wait(timeout=60)
        with EventStore(store, read_only=True) as opened:
            held = opened.count()
        assert held in (0, total), f"{held} events: a part of the log"
    assert kills >= 1, "the ingest was never caught in the middle"
    rerun = mgwsim("ingest", log, "--db", store, "--batch", str(BATCH))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    with EventStore(store, read_only=True) as opened:
        assert opened.count() == total
    assert bill("--db", store) == expected


KILLED_WITH_A_STORE_OPEN = """
import os, signal, sys
from metering.store import EventStore
store = EventStore(":memory:")
print(store.spill, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_spill_folder_of_a_killed_process_is_removed_by_the_next_store(tmp_path: Path, monkeypatch: Any) -> None:
    """A store's process killed while it is open leaves its DuckDB spill folder; the next store removes it."""
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_A_STORE_OPEN],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    assert left.parent == tmp_path and left.name.startswith("mgwsim-duckdb-") and left.is_dir()
    (left / "duckdb_temp_storage-0.tmp").write_bytes(b"spilled")  # as DuckDB leaves it
    elsewhere = tmp_path / "mgwsim-duckdb-notes"  # not a store's (no process number): kept
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with EventStore(":memory:") as first:
        assert not left.exists(), "the killed process's folder is gone"
        with EventStore(":memory:") as second:  # a store of a running process keeps its folder
            assert Path(first.spill).is_dir() and Path(second.spill).is_dir()
            assert Path(first.spill).name.startswith(f"mgwsim-duckdb-{os.getpid()}-")
    assert not Path(first.spill).exists() and elsewhere.is_dir()
