"""A run stopped by Ctrl-C (SIGINT) or SIGTERM: one line, 128 + the signal, nothing half-written.

A service manager, ``timeout`` or a CI runner stops a long ``mgwsim run`` with SIGTERM; a person
with Ctrl-C. Either way the unfinished run folder is removed, an earlier run in ``--out`` is kept
as it was, and standard error says what happened in one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import folder_files

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


def start_run(out: Path, *extra: str) -> subprocess.Popen[str]:
    """``mgwsim run`` of load-100k at 5 % (several seconds of work), SIGINT not ignored whatever the caller's shell."""
    return subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "run", str(SCENARIOS / "load-100k.toml"), "--scale", "0.05",
         "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's SIGINT is ignored
    )  # fmt: skip


def staging_folders(out: Path) -> list[Path]:
    """The unfinished folders of runs into ``out`` (beside it, hidden)."""
    return sorted(out.parent.glob(f".{out.name}.mgwsim-*"))


def spill_folders(pid: int) -> list[Path]:
    """The DuckDB spill folders of process ``pid``."""
    return sorted(Path(tempfile.gettempdir()).glob(f"mgwsim-duckdb-{pid}-*"))


@pytest.mark.parametrize(
    ("stop", "status", "said", "engine"),
    [
        (signal.SIGTERM, 143, "mgwsim: terminated", ()),
        (signal.SIGINT, 130, "mgwsim: interrupted", ()),
        # ray.init makes SIGTERM end the driver at once (status 1, a stack dump): mgwsim puts its handler back
        (signal.SIGTERM, 143, "mgwsim: terminated", ("--engine", "ray", "--shard-sims", "1000")),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-ray"],
)
def test_a_stopped_run_says_so_and_leaves_the_earlier_run(
    tmp_path: Path, stop: signal.Signals, status: int, said: str, engine: tuple[str, ...]
) -> None:
    out = tmp_path / "run"
    earlier = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(SCENARIOS / "quickstart.toml"), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert earlier.returncode == 0, earlier.stderr
    kept = folder_files(out)

    running = start_run(out, *engine)
    deadline = time.monotonic() + 120
    while not staging_folders(out):  # the run holds its folder (from its start): stop it in the middle
        assert running.poll() is None, running.communicate()
        assert time.monotonic() < deadline, "the run never started its folder"
        time.sleep(0.05)
    time.sleep(1.0)
    assert running.poll() is None, "the run ended before it could be stopped: give it more work"
    running.send_signal(stop)
    _, err = running.communicate(timeout=60)

    assert running.returncode == status, err
    lines = err.strip().splitlines()
    assert lines[-1] == said, err
    assert "Traceback" not in err and "SIGTERM received" not in err, err
    ours = [line for line in lines if line.startswith("mgwsim: ") and not line.startswith("mgwsim: note: ")]
    assert ours == [said], "one line says how the run ended"  # (Ray's own start-up chatter aside)
    assert staging_folders(out) == [], "the unfinished run folder is removed"
    assert spill_folders(running.pid) == [], "the DuckDB spill folder is removed"
    assert folder_files(out) == kept, "the earlier run in --out is kept, byte for byte"


@pytest.mark.parametrize("stage", ["connect", "set-up"])
def test_a_store_stopped_while_it_opens_leaves_no_spill_folder(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Ctrl-C or SIGTERM (a KeyboardInterrupt here) while DuckDB opens the store or creates its tables.

    Before, only a DuckDB error removed the folder there, so a run stopped at that moment left it
    until the next store on the machine noticed its process was gone (seen once in the SIGTERM test).
    """
    import duckdb

    from metering import store as store_module

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if stage == "connect":
        monkeypatch.setattr(duckdb, "connect", stopped)
    else:
        monkeypatch.setattr(store_module, "without_progress_bar", lambda connection: _Stops(connection))
    with pytest.raises(KeyboardInterrupt):
        store_module.EventStore(":memory:")
    assert spill_folders(os.getpid()) == []


class _Stops:
    """A DuckDB connection whose first statement is stopped by a KeyboardInterrupt."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def execute(self, *args: object) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        self.connection.close()


@contextlib.contextmanager
def a_second_stop_inside_unlink(
    monkeypatch: pytest.MonkeyPatch, second: signal.Signals
) -> Iterator[list[signal.Signals]]:
    """Within the block, the first ``os.unlink`` sends ``second`` to this process, as a second Ctrl-C would.

    The handler of ``second`` raises ``KeyboardInterrupt`` naming it, as mgwsim's own does; the
    handler in place before the block is put back after it. Yields the signals sent.
    """

    def stop(number: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(number).name)

    unlink = os.unlink
    sent: list[signal.Signals] = []

    def unlink_after_a_stop(*args: Any, **kwargs: Any) -> None:
        if not sent:
            sent.append(second)
            os.kill(os.getpid(), second)
        unlink(*args, **kwargs)

    previous = signal.signal(second, stop)
    try:
        monkeypatch.setattr(os, "unlink", unlink_after_a_stop)
        yield sent
        assert signal.getsignal(second) is stop, "the handler in place before is in place again"
    finally:
        monkeypatch.undo()
        signal.signal(second, previous)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_stop_while_a_folder_is_removed_is_handled_once_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: signal.Signals
) -> None:
    """A second Ctrl-C (or SIGTERM) while the first one's cleanup removes a run folder or a spill folder.

    Before, it stopped the removal where it stood and left part of the folder behind. Now the
    removal ends first; then the signal is handled by the handler that was in place.
    """
    from metering.atomic import remove_tree

    folder = tmp_path / "staging"
    (folder / "inner").mkdir(parents=True)
    for number in range(20):
        (folder / f"file-{number}").write_bytes(b"x")
        (folder / "inner" / f"file-{number}").write_bytes(b"x")
    with a_second_stop_inside_unlink(monkeypatch, second) as sent:
        with pytest.raises(KeyboardInterrupt, match=second.name):
            remove_tree(folder)
        assert sent == [second] and not folder.exists(), "the folder is removed whole, then the stop is handled"


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_partial_files_are_removed_is_handled_once_they_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: signal.Signals
) -> None:
    """Before a command writes an output, it removes what killed writes of it left beside it.

    A stop that comes meanwhile is handled after the last of them is gone. Before, it was handled
    at once, and the files not yet removed stayed until the next write of that output.
    """
    from metering.atomic import PARTIAL_SUFFIX, partial_files
    from simulator.cli import _prepare_outputs

    target = tmp_path / "charges.csv"
    for number in range(5):
        (tmp_path / f".{target.name}.killed{number}{PARTIAL_SUFFIX}").write_bytes(b"half")
    assert len(partial_files(target)) == 5
    with a_second_stop_inside_unlink(monkeypatch, second) as sent:
        with pytest.raises(KeyboardInterrupt, match=second.name):
            _prepare_outputs(None, [target])
        assert sent == [second] and partial_files(target) == [], "every partial file is removed, then the stop handled"
