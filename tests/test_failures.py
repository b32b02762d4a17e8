"""Every failure a user can meet is one line and a documented exit status; outputs are whole sets.

Disk-full cases run on a small tmpfs the test mounts (root only: CI runs as root and must not
skip them). Damaged stores are real DuckDB files with a block overwritten or cut off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import DISPUTES, ROOT, write_jsonl
from test_cli import mgwsim

from metering.store import EventStore, StoreError
from simulator.cli import app


def commands(group: object, path: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and group of the ``mgwsim`` app, as arguments (``[]`` the app itself)."""
    found = [list(path)]
    for name, command in getattr(group, "commands", {}).items():
        found += commands(command, (*path, name))
    return found


COMMANDS = commands(typer.main.get_command(app))


def one_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(command) or "mgwsim" for command in COMMANDS])
def test_every_help_renders(command: list[str]) -> None:
    result = mgwsim(*command, "--help", columns=100)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "Usage:" in result.stdout
    if command and command[-1] not in ("bench", "import"):
        assert "Exit status" in result.stdout and "4 an I/O failure" in result.stdout


def number_options(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every integer or float option of every command, with the command's name."""
    found: list[tuple[str, Any]] = []
    for name, command in getattr(group, "commands", {}).items():
        found += number_options(command, (*path, name))
    for parameter in getattr(group, "params", []):
        if parameter.bare_type() in ("int", "float"):  # (typer names the annotation's type)
            found.append((" ".join(path), parameter))
    return found


CHECKED_BY_MGWSIM = {("run", "scale")}
"""Number options with no bound in the CLI: the command checks the value itself (and names the file)."""


def test_every_number_option_has_a_lower_bound() -> None:
    """A count, a size or a seed below its range is a bad option (2), not a traceback from deep inside (70)."""
    options = number_options(typer.main.get_command(app))
    assert len(options) >= 15
    unbounded = [f"{command} --{option.name}" for command, option in options if option.min is None]
    assert sorted(unbounded) == sorted(f"{command} --{name}" for command, name in CHECKED_BY_MGWSIM)


@pytest.mark.parametrize(
    ("scale", "reason"),
    [
        ("inf", "--scale must be a finite number > 0, got inf"),  # was: exit 70, OverflowError
        ("nan", "--scale must be a finite number > 0, got nan"),
        ("1e308", "scaled by 1e+308, the fleets exceed 10,000,000 SIMs"),  # was: exit 70, OverflowError
        ("500001", "scaled by 500001.0, the fleets exceed 10,000,000 SIMs"),
    ],
)
def test_run_scale_out_of_range_is_refused_before_any_work(scale: str, reason: str) -> None:
    """--scale is the one number option mgwsim checks itself (CHECKED_BY_MGWSIM): the scenario is named."""
    one_line(mgwsim("run", "quickstart", "--scale", scale), 2, f"quickstart.toml: {reason}")


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (["run", "quickstart", "--log-format", "parquet"], "--log-format: only with --out"),  # was: accepted
        (["run", "quickstart", "--log-format", "auto"], "--log-format: only with --out"),
        (
            ["run", "quickstart", "--engine", "reference", "--shard-sims", "5"],
            "--shard-sims: not with --engine reference",
        ),
        (["run", "quickstart", "--ray-address", "127.0.0.1:1"], "--ray-address: only with --engine ray"),
        (["run", "quickstart", "--pcap-sims", "2"], "--pcap-sims: only with --pcap"),
        (["bench", "sim", "--dir", "TMP"], "--dir: only with --outputs"),  # was: a benchmark without outputs
        (["run", "quickstart", "--mqtt-ca", "ca.pem"], "--mqtt-ca: only with --mqtt"),  # was: accepted
        (["run", "quickstart", "--mqtt-username", "u"], "--mqtt-username: only with --mqtt"),
        (["run", "quickstart", "--mqtt-retries", "5"], "--mqtt-retries: only with --mqtt"),
        (["run", "quickstart", "--mqtt-backoff", "1"], "--mqtt-backoff: only with --mqtt"),
        (["check", "quickstart", "--golden", "TMP", "--update", "--junit", "TMP/j.xml"], "--junit: not with --update"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "refused",
)
def test_an_option_that_would_do_nothing_is_refused_before_any_work(
    command: list[str], reason: str, tmp_path: Path
) -> None:
    """An option given but without the one it works with would be ignored: the user is told instead."""
    one_line(mgwsim(*(word.replace("TMP", str(tmp_path)) for word in command)), 2, f"mgwsim: error: {reason}")
    assert not any(tmp_path.iterdir()), "nothing written"


def test_options_left_at_their_defaults_are_not_taken_as_given(tmp_path: Path) -> None:
    """The refusals above look at what was typed: the same values as defaults are accepted."""
    assert mgwsim("run", "quickstart", "--engine", "reference").returncode == 0
    assert (
        mgwsim("run", "quickstart", "--shard-sims", "100", "--log-format", "jsonl", "--out", tmp_path).returncode == 0
    )


@pytest.mark.parametrize("option", [["--sims", "0"], ["--events", "-1"], ["--seed", "-1"]], ids=lambda o: " ".join(o))
def test_bench_metering_refuses_counts_out_of_range(option: list[str]) -> None:
    """Was exit 70: numpy's ValueError from the generator, after the work began."""
    one_line(mgwsim("bench", "metering", *option), 2, f"Invalid value for '{option[0]}'")


@pytest.mark.parametrize(
    "command",
    [
        ["metering", "-n", "10", "--workdir"],
        ["jsonl", "--lines", "10", "--workdir"],
        ["sim", "quickstart", "--sims", "10", "--outputs", "--dir"],
        ["pcap", "--sessions", "10", "--dir"],
        ["meter-pcap", "--sessions", "10", "--dir"],
    ],
    ids=lambda command: command[0],
)
def test_a_benchmark_folder_that_is_not_one_is_refused_before_any_work(tmp_path: Path, command: list[str]) -> None:
    """Was: the work done first (a simulation of 100,000 SIMs for bench sim), then exit 4, ENOENT."""
    for folder, reason in ((tmp_path / "missing", "no such folder"), (tmp_path / "file", "is a file, not a folder")):
        if reason.startswith("is a file"):
            folder.write_text("", encoding="utf-8")
        result = mgwsim("bench", *command, folder)
        assert result.stderr == f"mgwsim: error: {command[-1]} {folder}: {reason}\n", result.stderr
        assert result.returncode == 2


def test_bench_mqtt_tells_a_bad_url_from_a_broker_it_cannot_reach() -> None:
    """A bad --broker is bad input (2); a broker that does not answer is unavailable (3) (was: 2 for both)."""
    one_line(mgwsim("bench", "mqtt", "--messages", "1", "--broker", "http://x"), 2, "--broker: 'http://x' is not")
    result = mgwsim("bench", "mqtt", "--messages", "1", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith("mgwsim: error: mqtt://127.0.0.1:1: ")


@pytest.mark.parametrize("command", COMMANDS[1:], ids=[" ".join(command) for command in COMMANDS[1:]])
def test_every_help_text_flows_in_paragraphs(command: list[str]) -> None:
    """On a wide terminal each paragraph of a command's help is one line: no line ends mid-sentence.

    Typer keeps a docstring's source line breaks, which at 80 columns broke every line in two.
    """
    result = mgwsim(*command, "--help", columns=1000)
    prose = result.stdout.split("Usage:")[1].split("╭")[0].splitlines()[1:]
    for line in filter(None, (line.strip() for line in prose)):
        assert line.endswith((".", ")")) or line.startswith("Example:"), (command, line)


def test_every_shipped_file_a_help_example_names_exists() -> None:
    """A user copies a help text's example: the shipped files it names must be there.

    Was: ``mgwsim bill --help`` named ``scenarios/disputes/basic-fee.jsonl``, a file that never
    existed (no such file, exit 2, for the first command a user tries).
    """
    named = []
    for command in COMMANDS[1:]:
        prose = mgwsim(*command, "--help", columns=1000).stdout.split("╭")[0]
        for line in prose.splitlines():
            if line.strip().startswith("Example:"):
                named += [word for word in line.replace(";", " ").split() if word.startswith("scenarios/")]
    assert named, "no help text names a shipped file any more: this test checks nothing"
    assert [word for word in named if not (ROOT / word).is_file()] == []


def test_the_bill_example_bills_a_shipped_dispute() -> None:
    """``mgwsim bill --help``'s example, run as written from the project's folder, prints invoices."""
    help_text = mgwsim("bill", "--help", columns=1000).stdout
    example = next(line for line in help_text.splitlines() if line.strip().startswith("Example:"))
    words = example.split("mgwsim", 1)[1].split()
    result = subprocess.run(
        [sys.executable, "-m", "simulator.cli", *words], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "sim_basic_fee" in result.stdout


# --- a small disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: room for a small log, not for a run's outputs."""
    if os.geteuid() != 0:
        if os.environ.get("MGWSIM_REQUIRE_TOOLS"):
            pytest.fail("the disk-full tests mount a tmpfs and need root")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_golden_files_are_updated_as_a_set(small_disk: Path) -> None:
    """check --update into a disk with room for one new golden file, not two: the folder stays as it was.

    Before, the first month was replaced and the stale month removed before the second failed.
    """
    golden = small_disk / "golden"
    golden.mkdir()
    for month in ("2026-01", "2026-02", "2026-03"):  # small old goldens; 2026-03 is a month the run no longer has
        (golden / f"{month}.json").write_text(f'{{"schema": "mgwsim.invoice/1", "month": "{month}"}}\n')
    before = tree(golden)
    page = 4096
    one_file = -(-(ROOT / "scenarios/golden/quickstart/2026-01.json").stat().st_size // page) * page
    stats = os.statvfs(small_disk)
    spare = stats.f_bavail * stats.f_frsize - (one_file + 2 * page)  # the first new file fits, the second not
    (small_disk / "filler").write_bytes(b"\0" * spare)
    line = one_line(mgwsim("check", "quickstart", "--golden", golden, "--update"), 4, "No space left")
    assert str(golden / "2026-0") in line
    assert tree(golden) == before, "the golden files are those of before, all of them"
    assert [path.name for path in golden.iterdir() if path.name.startswith(".")] == [], "no temporary file left"
    (small_disk / "filler").unlink()
    result = mgwsim("check", "quickstart", "--golden", golden, "--update")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in golden.iterdir()) == ["2026-01.json", "2026-02.json"]


def test_a_capture_and_its_sim_map_are_written_as_a_set(small_disk: Path, tmp_path: Path) -> None:
    """run --pcap into a disk with room for the new capture, not for its SIM map: both stay as they were.

    Before, the new capture was renamed into place before the SIM map failed, so the map beside it
    no longer named its SIMs.
    """
    scenario = ROOT / "scenarios/tunnel-coverage.toml"
    fresh = tmp_path / "fresh.pcap"
    assert mgwsim("run", scenario, "--pcap", fresh, "--pcap-sims", "2").returncode == 0
    capture, sim_map = small_disk / "core.pcap", small_disk / "core.pcap.sims.csv"
    capture.write_bytes(b"")  # an earlier capture (empty: it frees no page when replaced)
    sim_map.write_text("imsi,iccid\n", encoding="utf-8")
    before = tree(small_disk)
    page = 4096
    stats = os.statvfs(small_disk)
    room = -(-fresh.stat().st_size // page) * page  # the capture's pages, and not one more
    (small_disk / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - room))
    line = one_line(mgwsim("run", scenario, "--pcap", capture, "--pcap-sims", "2"), 4, "No space left")
    assert str(sim_map) in line
    (small_disk / "filler").unlink()
    assert tree(small_disk) == before, "the earlier capture and its SIM map, both"


def test_a_runs_outputs_are_written_as_one_set(small_disk: Path, tmp_path: Path) -> None:
    """run --out --events --pcap into a disk with room for the log and the capture, not the folder.

    Every output stays as it was. Before, the new --events log was renamed into place before the
    folder failed, beside the earlier capture.
    """
    scenario = ROOT / "scenarios/idle-fleet.toml"  # small outputs
    fresh = {name: tmp_path / name for name in ("fresh.jsonl", "fresh.pcap", "fresh.pcap.sims.csv")}
    done = mgwsim("run", scenario, "--events", fresh["fresh.jsonl"], "--pcap", fresh["fresh.pcap"], "--pcap-sims", "1")
    assert done.returncode == 0, done.stderr
    log, capture, sim_map = small_disk / "events.jsonl", small_disk / "core.pcap", small_disk / "core.pcap.sims.csv"
    for path in (log, capture):
        path.write_bytes(b"")  # earlier outputs (empty: replacing them frees no page)
    sim_map.write_text("imsi,iccid\n", encoding="utf-8")
    before = tree(small_disk)
    page = 4096
    room = sum(-(-path.stat().st_size // page) * page for path in fresh.values())  # the files, not the folder
    stats = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - room))
    out = small_disk / "out"
    line = one_line(
        mgwsim("run", scenario, "--out", out, "--events", log, "--pcap", capture, "--pcap-sims", "1"),
        4,
        "No space left",
    )
    assert str(out.parent) in line and str(log) not in line, line
    (small_disk / "filler").unlink()
    assert tree(small_disk) == before, "the earlier log, capture and SIM map, and no run folder"


def test_a_run_folder_on_a_read_only_disk_is_named_before_the_run(small_disk: Path) -> None:
    """The error names --out, not the unfinished folder mgwsim tried to make beside it (".out.mgwsim-…")."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for out in (small_disk / "out", small_disk / "deeper" / "out"):  # (made with its parents: was after the run)
        line = one_line(mgwsim("-v", "run", "quickstart", "--out", out, columns=60), 4, "Read-only file system")
        assert line == f"mgwsim: error: {out}: Read-only file system (EROFS)", line


def test_an_output_file_on_a_read_only_disk_is_named_before_any_work(small_disk: Path, tmp_path: Path) -> None:
    """Before, --events, --pcap and --html failed only when written: after the run or the rating.

    With -v the run would log its steps; the one line shows it never began.
    """
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    dispute = ROOT / "scenarios/disputes/reregistration.jsonl"
    for option, path, command in (
        ("--events", small_disk / "e.jsonl", ["-v", "run", "quickstart"]),
        ("--pcap", small_disk / "deeper" / "c.pcap", ["-v", "run", "tunnel-coverage", "--pcap-sims", "1"]),
        ("--html", small_disk / "x.html", ["-v", "explain", dispute, "--month", "2026-01"]),
    ):
        line = one_line(mgwsim(*command, option, path, columns=60), 4)
        assert line == f"mgwsim: error: {path}: Read-only file system (EROFS)", line
    for bench in (
        ["sim", "--outputs", "--dir"],
        ["pcap", "--dir"],
        ["meter-pcap", "--dir"],
        ["jsonl", "--workdir"],
        ["metering", "--workdir"],
    ):
        line = one_line(mgwsim("bench", *bench, small_disk), 4)  # (before: after the benchmark's first part)
        assert line == f"mgwsim: error: {small_disk}: Read-only file system (EROFS)", line
    golden = small_disk / "golden"
    line = one_line(mgwsim("-v", "check", "quickstart", "--golden", golden, "--update"), 4)  # before: after the run
    assert line == f"mgwsim: error: {golden}: Read-only file system (EROFS)", line


def test_run_into_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Path) -> None:
    out = small_disk / "out"
    line = one_line(mgwsim("run", ROOT / "scenarios/quickstart.toml", "--out", out, columns=60), 4, "No space left")
    assert str(small_disk) in line
    assert not out.exists() and list(small_disk.iterdir()) == [], "no half-written folder or file"


def test_a_failed_run_leaves_the_previous_run_whole(small_disk: Path) -> None:
    out = small_disk / "out"
    first = mgwsim("run", ROOT / "scenarios/pin-lockout.toml", "--out", out)
    assert first.returncode == 0, first.stderr
    before = tree(out)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (3 * 2**20 - 4 * sum((out / name).stat().st_size for name in before) // 3))
    failed = mgwsim("run", ROOT / "scenarios/pin-lockout.toml", "--out", out, columns=60)
    one_line(failed, 4, "No space left")
    assert tree(out) == before, "the folder holds the previous run, whole"
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "out"]


def test_meter_pcap_and_ingest_into_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    capture = tmp_path / "core.pcap"
    made = mgwsim("run", ROOT / "scenarios/tunnel-coverage.toml", "--pcap", capture)
    assert made.returncode == 0, made.stderr
    (small_disk / "filler").write_bytes(b"\0" * (3 * 2**20 - 64 * 1024))
    metered = mgwsim(
        "meter-pcap", capture, "--account", "acct-1", "--sims", f"{capture}.sims.csv", "--out", small_disk / "m.jsonl"
    )
    assert metered.returncode == 4, metered.stderr
    assert "m.jsonl: No space left on device" in metered.stderr and "Traceback" not in metered.stderr
    (small_disk / "filler").unlink()
    log = write_jsonl(
        tmp_path / "big.jsonl",
        [
            {
                "ts": "2026-01-10T09:00:00+09:00",
                "type": "sim.registered",
                "account": "a",
                "id": f"e{number}",
                "sim": f"8981300{number:012d}",
            }
            for number in range(60_000)
        ],
    )
    ingested = mgwsim("ingest", log, "--db", small_disk / "store.duckdb", "--batch", "10000", columns=60)
    line = one_line(ingested, 4, "No space left on device")
    assert "rollback" not in line, "the cause is shown, not the failed rollback"


def test_standard_output_on_a_full_device() -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "bill", str(DISPUTES / "points.jsonl"), "-m", "2026-01..2026-03"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    one_line(result, 4, "standard output", "No space left on device")


# --- damaged stores ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from metering.bench import generate_traffic

    folder = tmp_path_factory.mktemp("store")
    log = folder / "log.parquet"
    generate_traffic(log, 300_000, 5_000, 1)
    result = mgwsim("ingest", log, "--db", folder / "good.duckdb")
    assert result.returncode == 0, result.stderr
    return folder / "good.duckdb"


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.95, "half", "header"])
def test_a_damaged_store_is_named_and_left_untouched(good_store: Path, tmp_path: Path, where: float | str) -> None:
    store = tmp_path / "damaged.duckdb"
    shutil.copy(good_store, store)
    size = store.stat().st_size
    if where == "half":
        os.truncate(store, size // 2)
    else:
        offset = 0 if where == "header" else int(size * float(where)) // 4096 * 4096
        with store.open("r+b") as stream:
            stream.seek(offset)
            stream.write(bytes(range(256)) * 16)
    damaged = store.read_bytes()
    log = good_store.parent / "log.parquet"
    try:
        EventStore.check(str(store))
    except StoreError:
        pass
    else:  # the bytes hit space no table uses: the store still bills exactly as before
        expected = mgwsim("bill", "--db", good_store, "-m", "2026-01").stdout
        assert mgwsim("bill", "--db", store, "-m", "2026-01").stdout == expected
        assert where not in ("half", "header", 0.3, 0.5), "the middle of the store holds its tables"
        return
    commands: tuple[list[str | Path], ...] = (
        ["bill", "--db", store, "-m", "2026-01"],
        ["bill", "--db", store, "-m", "2026-01", "--rater", "reference"],
        ["explain", "--db", store, "-m", "2026-01", "--subject", "points"],
        ["ingest", log, "--db", store],
    )
    for command in commands:
        result = mgwsim(*command, columns=60)
        line = one_line(result, 2, str(store))
        assert "damaged" in line or "not a DuckDB store" in line, line
        assert result.stdout == ""
    assert store.read_bytes() == damaged, "the store file is untouched"
    assert not Path(f"{store}.wal").exists()


@contextlib.contextmanager
def another_process(holding: str) -> Iterator[None]:
    """While inside, another Python process that ran ``holding`` (it takes a lock) is alive."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; {holding}; print('ok', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_store_in_use_and_a_folder_as_store(good_store: Path, tmp_path: Path) -> None:
    import duckdb

    store = tmp_path / "busy.duckdb"
    shutil.copy(good_store, store)
    with another_process(f"import duckdb; c = duckdb.connect({str(store)!r})"):
        one_line(mgwsim("bill", "--db", store, "-m", "2026-01"), 3, "in use by another process")
    assert duckdb.connect(str(store), read_only=True).execute("SELECT count(*) FROM events").fetchone()
    one_line(mgwsim("bill", "--db", tmp_path, "-m", "2026-01"), 2, "is a directory")


def test_an_event_log_or_another_file_given_as_the_store(tmp_path: Path) -> None:
    """Named for what it is, exit 2, the file untouched.

    Before, a file named .parquet or .csv got DuckDB's "Cannot launch in-memory database in
    read-only mode": DuckDB opens such a name as a table, not as a database.
    """
    log = tmp_path / "events.parquet"
    assert mgwsim("run", "quickstart", "--log-format", "parquet", "--out", tmp_path / "run").returncode == 0
    shutil.copy(tmp_path / "run" / "events.parquet", log)
    other = tmp_path / "noise.csv"
    other.write_bytes(bytes(range(256)) * 8)
    jsonl = Path(shutil.copy(DISPUTES / "points.jsonl", tmp_path / "points.jsonl"))
    cases = [
        (log, "not a DuckDB store but an event log"),
        (jsonl, "not a DuckDB store but an event log"),
        (other, "not a DuckDB store (no DuckDB header"),
    ]
    for given, reason in cases:
        before = given.read_bytes()
        commands: list[list[str | Path]] = [
            ["bill", "--db", given, "-m", "2026-01"],
            ["ingest", DISPUTES / "points.jsonl", "--db", given],
        ]
        for command in commands:
            one_line(mgwsim(*command), 2, str(given), reason)
        assert given.read_bytes() == before


# --- output folders as a set ------------------------------------------------------------------


def test_a_run_folder_holds_one_run_and_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert mgwsim("run", ROOT / "scenarios/idle-fleet.toml", "--out", out).returncode == 0
    assert len(list((out / "invoices").glob("*.json"))) > 2
    again = mgwsim("run", ROOT / "scenarios/pin-lockout.toml", "--out", out)
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["path"]: entry["bytes"] for entry in manifest["files"]}
    present = {name: (out / name).stat().st_size for name in tree(out) if name != "manifest.json"}
    assert listed == present, "exactly this run's files, nothing of the one before"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "pin-lockout"
    assert [path.name for path in tmp_path.iterdir()] == ["out"], "no staging folder left beside it"


def test_a_folder_with_files_mgwsim_did_not_write_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine", encoding="utf-8")
    result = mgwsim("run", ROOT / "scenarios/quickstart.toml", "--out", out)
    one_line(result, 2, "chapter1.tex", "did not write")
    assert [path.name for path in out.iterdir()] == ["chapter1.tex"]


def test_leftovers_of_killed_runs_are_removed_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = tmp_path / ".out.mgwsim-k1ll3d"
    staging.mkdir()
    (staging / "events.jsonl").write_text('{"ts": "2026-01', encoding="utf-8")
    events = tmp_path / "copy.jsonl"
    (tmp_path / ".copy.jsonl.abc123.partial").write_text("{", encoding="utf-8")
    legacy = out / "invoices"
    legacy.mkdir(parents=True)
    (legacy / ".2026-01.json.x.partial").write_text("{", encoding="utf-8")  # an older mgwsim's leftover
    result = mgwsim("run", ROOT / "scenarios/idle-fleet.toml", "--out", out, "--events", events, columns=200)
    assert result.returncode == 0, result.stderr
    assert "unfinished folder .out.mgwsim-k1ll3d was removed" in result.stderr
    assert "an earlier write of" in result.stderr and "1 unfinished file(s) beside it removed" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["copy.jsonl", "out"]
    assert not list(out.rglob("*.partial")) and events.is_file()


def sacloud_import(export: Path, out: Path) -> list[str | Path]:
    """``mgwsim import sacloud`` of one SIM list fetched at the end of January 2026, into ``out``."""
    return ["import", "sacloud", f"{export}@2026-01-31T23:59:59+09:00", "--account", "acct-1", "--out", out]


def test_an_import_removes_what_a_killed_import_left(tmp_path: Path) -> None:
    """import sacloud --out, as run and meter-pcap: the .partial file of a killed earlier write is removed."""
    out = tmp_path / "imported.jsonl"
    (tmp_path / ".imported.jsonl.k1ll3d.partial").write_text("{", encoding="utf-8")
    export = ROOT / "scenarios/sacloud-export/sims-2026-01-31.json"
    result = mgwsim(*sacloud_import(export, out))
    assert result.returncode == 0, result.stderr
    assert "1 unfinished file(s) beside it removed" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["imported.jsonl"]


@pytest.mark.parametrize("shards", [["--shard-sims", "100000"], []], ids=["whole", "in-shards"])
def test_a_run_into_a_folder_another_run_is_writing_is_refused(tmp_path: Path, shards: list[str]) -> None:
    """Two runs into one --out: the second is refused (3) from the first's start, its folder untouched.

    Before, the second took the first's folder for a killed run's leftover and removed it, so the
    first failed on its own files; and a run of the fleet whole made its folder only when it began
    to write, so a second run started while it simulated went ahead.
    """
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "-v", "run", str(ROOT / "scenarios/load-100k.toml"),
         "--scale", "0.05", "--out", str(out), *shards],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first.stderr is not None
    said = []
    for line in first.stderr:  # the first run is simulating: nothing of its folder is written yet
        said.append(line)
        if " INFO simulating load-100k" in line:
            break
    else:
        pytest.fail("".join(said))
    second = mgwsim("run", ROOT / "scenarios/idle-fleet.toml", "--out", out)
    _, first_err = first.communicate(timeout=300)
    one_line(second, 3, f"--out {out}: another mgwsim run is writing it now", "wait for it to end")
    assert first.returncode == 0, first_err
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    files = {entry["path"] for entry in manifest["files"]}
    assert {"summary.json", "invoices/2026-01.json", "invoices/2026-12.json"} <= files, "the first run, whole"
    assert files & {"events.jsonl", "events.parquet"}, files
    assert not list(tmp_path.glob(".out.mgwsim-*"))


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path: Path) -> None:
    """The folder a run holds from its start is removed when the run ends without writing it."""
    out, events = tmp_path / "out", tmp_path / "copy.jsonl"
    load: list[str | Path] = [ROOT / "scenarios/load-100k.toml", "--scale", "0.01", "--shard-sims", "100"]
    result = mgwsim("run", *load, "--out", out, "--events", events)
    assert result.returncode == 2 and "--events: not with a run in" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "neither the folder nor its staging folder is left"


def test_a_file_another_process_is_writing_is_left_alone(tmp_path: Path) -> None:
    """An unfinished file a live writer holds (its flock) is not a leftover: refused (3), kept; removed once it is."""
    events = tmp_path / "copy.jsonl"
    partial = tmp_path / ".copy.jsonl.live01.partial"
    partial.write_text("{", encoding="utf-8")
    with another_process(f"import fcntl, os; fcntl.flock(os.open({str(partial)!r}, os.O_RDONLY), fcntl.LOCK_EX)"):
        one_line(mgwsim("run", ROOT / "scenarios/idle-fleet.toml", "--events", events), 3, f"{events}: another mgwsim")
        assert partial.read_text(encoding="utf-8") == "{" and not events.exists()
    result = mgwsim("run", ROOT / "scenarios/idle-fleet.toml", "--events", events)
    assert result.returncode == 0, result.stderr
    assert "1 unfinished file(s) beside it removed" in result.stderr
    assert not partial.exists() and events.is_file()


# --- smaller things -------------------------------------------------------------------------


def test_a_parquet_log_with_a_column_twice(tmp_path: Path) -> None:
    """Refused as a JSON line naming a key twice is (was: exit 70, pyarrow's KeyError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert mgwsim("run", "quickstart", "--log-format", "parquet", "--out", tmp_path / "run").returncode == 0
    table = pq.read_table(tmp_path / "run" / "events.parquet")
    log = tmp_path / "twice.parquet"
    pq.write_table(table.append_column("extra", pa.array(["{}"] * table.num_rows)), log)
    for rater in ("fast", "reference"):
        one_line(mgwsim("bill", log, "-m", "2026-01", "--rater", rater), 2, f"{log}: Parquet file has the column")
    one_line(mgwsim("ingest", log, "--db", tmp_path / "new.duckdb"), 2, "the column 'extra' twice")


def test_an_ingest_that_fails_in_its_first_log_leaves_no_new_store(tmp_path: Path) -> None:
    """A new store is removed when nothing was appended to it; a store that was there is left byte for byte."""
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"type": "sim.registered"}])
    good = DISPUTES / "points.jsonl"
    store = tmp_path / "new.duckdb"
    one_line(mgwsim("ingest", bad, "--db", store), 2, f"{bad}:1")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.jsonl"], "no store left behind"
    result = mgwsim("ingest", good, bad, "--db", store)  # the first log is appended whole: the store stays
    assert result.returncode == 2 and store.exists()
    before = store.read_bytes()
    one_line(mgwsim("ingest", bad, "--db", store), 2, f"{bad}:1")
    assert store.read_bytes() == before


def test_a_file_name_that_breaks_lines_still_gives_one_line(tmp_path: Path) -> None:
    """A newline, a carriage return or a Unicode line separator in a file's name is shown escaped."""
    for name, shown in (
        ("a\nb.jsonl", "a\\nb.jsonl"),
        ("a\rb.jsonl", "a\\rb.jsonl"),
        ("a\u2028b.jsonl", "a\\u2028b.jsonl"),
    ):
        log = write_jsonl(tmp_path / name, [{"type": "sim.registered"}])
        one_line(mgwsim("bill", log, "-m", "2026-01"), 2, f"{tmp_path}/{shown}:1: sim.registered: missing")


def test_a_folder_given_as_a_log(tmp_path: Path) -> None:
    for rater in ("fast", "reference"):
        one_line(mgwsim("bill", tmp_path, "-m", "2026-01", "--rater", rater), 2, str(tmp_path), "is a folder")


def test_a_golden_folder_that_cannot_be_compared_with_is_named(tmp_path: Path) -> None:
    """check --golden: one line naming the folder or file, exit 2 (was: exit 1 'no golden file' for a
    mistyped folder, exit 70 for a golden file that is not JSON or not an invoice document)."""
    golden = ROOT / "scenarios/golden/quickstart"
    broken = {
        "not-json": ('{"schema": "mgwsim.invoice/1",\n  "month": 2026-01}\n', "2026-01.json:2: not JSON"),
        "a-list": ("[1, 2]\n", "2026-01.json: not an mgwsim invoice document (schema mgwsim.invoice/1)"),
        "no-subtotal": (None, "2026-01.json: not an mgwsim invoice document (KeyError: 'subtotal')"),
    }
    for name, (text, reason) in broken.items():
        folder = Path(shutil.copytree(golden, tmp_path / name))
        if text is None:
            document = json.loads((folder / "2026-01.json").read_text(encoding="utf-8"))
            del document["invoices"][0]["subtotal"]
            text = json.dumps(document)
        (folder / "2026-01.json").write_text(text, encoding="utf-8")
        before = tree(folder)
        one_line(mgwsim("check", "quickstart", "--golden", folder), 2, f"--golden: {folder / reason}")
        assert tree(folder) == before
    file = Path(shutil.copy(golden / "2026-01.json", tmp_path / "file.json"))
    for update in ([], ["--update"]):
        one_line(mgwsim("check", "quickstart", "--golden", file, *update), 2, f"--golden: {file}: is a file, not a")
    one_line(
        mgwsim("check", "quickstart", "--golden", tmp_path / "typo"), 2, "no such folder (create it with --update)"
    )
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("option", ["--events", "--pcap"])
def test_an_output_file_inside_the_run_folder_is_refused(tmp_path: Path, option: str) -> None:
    """--events or --pcap inside --out: refused before the run (was: written, then swapped away with the
    folder it was written into, though the run said 'wrote' it; or left there, so the next run refused
    the folder as holding files mgwsim did not write)."""
    out = tmp_path / "run"
    inside = out / "sub" / ("extra.jsonl" if option == "--events" else "core.pcap")
    for given in (inside, tmp_path / "." / "run" / ".." / "run" / inside.relative_to(out)):
        command: list[str | Path] = ["run", ROOT / "scenarios/tunnel-coverage.toml", "--out", out, option, given]
        one_line(mgwsim(*command), 2, f"{option} {given}: inside --out {out}")
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_an_output_that_is_also_an_input_is_refused(tmp_path: Path) -> None:
    """Nothing a user gave is replaced by an output.

    Before, each was written over: the log, the scenario, a side of the diff, a golden file.
    """
    log = Path(shutil.copy(DISPUTES / "points.jsonl", tmp_path / "points.jsonl"))
    scenario = Path(shutil.copy(ROOT / "scenarios/tunnel-coverage.toml", tmp_path / "tunnel.toml"))
    golden = Path(shutil.copytree(ROOT / "scenarios/golden/quickstart", tmp_path / "golden"))
    charges = tmp_path / "charges.csv"
    charges.write_text("month,account,item,subject,quantity,amount\n", encoding="utf-8")
    before = tree(tmp_path)
    cases: list[tuple[list[str | Path], Path]] = [
        (["explain", log, "-m", "2026-01", "--html"], log),
        (["explain", log, "-m", "2026-01", "--html"], tmp_path / "golden" / ".." / "points.jsonl"),
        (["run", scenario, "--pcap"], scenario),
        (["diff", charges, golden, "--junit"], charges),
        (["check", "quickstart", "--golden", golden, "--junit"], golden / "2026-01.json"),
    ]
    for command, output in cases:
        one_line(mgwsim(*command, output), 2, f"{output}: is also an input of this command")
    same = tmp_path / "same.jsonl"  # two outputs of one run (was: the capture written over the log)
    one_line(mgwsim("run", scenario, "--events", same, "--pcap", same), 2, f"{same}: named for two outputs")
    assert tree(tmp_path) == before, "every input as it was, nothing written"


def test_a_ca_file_that_tls_cannot_load_is_named_before_any_work(tmp_path: Path) -> None:
    """--mqtt-ca of run and meter-mqtt: one line, exit 2, before the run or a connection.

    Before, a file without a certificate failed at the first connection: exit 4, ssl's text, no file named.
    """
    not_pem = Path(shutil.copy(DISPUTES / "points.jsonl", tmp_path / "ca.pem"))
    cases = [
        (not_pem, "no CA certificate TLS can load (PEM expected"),
        (tmp_path, "is a folder, not a file of CA certificates"),
        (tmp_path / "missing.pem", "no such file"),
    ]
    for ca, reason in cases:
        meter: list[str | Path] = [
            "meter-mqtt",
            "--broker",
            "mqtts://127.0.0.1:1",
            "--topic",
            "t",
            "--out",
            tmp_path / "m.jsonl",
        ]
        run: list[str | Path] = ["run", "quickstart", "--mqtt", "mqtts://127.0.0.1:1"]
        for command in (run, meter):
            command += ["--mqtt-ca", ca]
            one_line(mgwsim(*command), 2, f"--mqtt-ca: {ca}: {reason}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.pem"], "nothing written"


@pytest.mark.parametrize(
    "command",
    [
        ["explain", DISPUTES / "data-pack.jsonl", "-m", "2026-01", "--html"],
        ["check", "quickstart", "--golden", ROOT / "scenarios/golden/quickstart", "--junit"],
        ["diff", ROOT / "scenarios/golden/quickstart", ROOT / "scenarios/golden/quickstart", "--junit"],
    ],
    ids=["explain --html", "check --junit", "diff --junit"],
)
def test_a_folder_given_as_an_output_file(tmp_path: Path, command: list[str | Path]) -> None:
    """Refused as bad input (2) before any work, the folder untouched (was: 4, 'Is a directory', at the end)."""
    folder = tmp_path / "report"
    (folder / "kept.txt").parent.mkdir()
    (folder / "kept.txt").write_text("a user's file\n")
    one_line(mgwsim(*command, folder), 2, str(folder), "is a folder; give a file name")
    assert tree(tmp_path) == {"report/kept.txt": hashlib.sha256(b"a user's file\n").hexdigest()}


def test_unreadable_inputs_are_io_failures() -> None:
    """Permissions refuse a log or a scenario: exit 4 (root reads everything, so run as nobody then)."""
    import tempfile

    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is needed to drop root")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o777)  # the store may be created; the log may not be read
        log = Path(shutil.copy(DISPUTES / "points.jsonl", folder / "secret.jsonl"))
        scenario = Path(shutil.copy(ROOT / "scenarios/pin-lockout.toml", folder / "secret.toml"))
        sim_map = folder / "secret.sims.csv"
        sim_map.write_text("imsi,iccid\n440511234567890,8981300000000000001\n", encoding="utf-8")
        charges = folder / "secret.csv"
        charges.write_text("month,account,item,subject,quantity,amount\n", encoding="utf-8")
        invoice = Path(shutil.copy(ROOT / "scenarios/golden/quickstart/2026-01.json", folder / "secret.json"))
        export = Path(shutil.copy(ROOT / "scenarios/sacloud-export/sims-2026-01-31.json", folder / "sims.json"))
        ca = Path(shutil.copy(DISPUTES / "points.jsonl", folder / "ca.pem"))
        for path in (log, scenario, sim_map, charges, invoice, export, ca):
            path.chmod(0)
        capture = folder / "empty.pcap"  # a pcap file header (Ethernet), no packets
        capture.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        commands: list[tuple[list[str | Path], Path]] = [
            (["bill", log, "-m", "2026-01"], log),
            (["run", scenario], scenario),
            (["ingest", log, "--db", folder / "s.db"], log),
            (["meter-pcap", capture, "--account", "acct-1", "--sims", sim_map], sim_map),  # was 2, typer's check
            (["diff", charges, charges], charges),  # these three were 2, 'cannot be read'
            (["diff", invoice, invoice], invoice),
            (
                [
                    "meter-mqtt",
                    "--broker",
                    "mqtts://127.0.0.1:1",
                    "--topic",
                    "t",
                    "--mqtt-ca",
                    ca,
                    "--out",
                    folder / "m.jsonl",
                ],
                ca,
            ),
            (
                sacloud_import(export, folder / "o.jsonl"),
                export,
            ),
        ]
        for command, unreadable in commands:
            result = subprocess.run(
                [*as_user, sys.executable, "-m", "simulator.cli", *map(str, command)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
            )
            one_line(result, 4, str(unreadable), "Permission denied")
    finally:
        shutil.rmtree(folder)


BUG_SCRIPT = """
import sys
import metering.explain
def broken(*args, **kwargs):
    return 1 / 0
metering.explain.explain = broken
sys.argv = ["mgwsim", *sys.argv[1:]]
from simulator.cli import main
main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_says_so_in_one_line_and_shows_its_traceback_only_under_v(verbose: bool) -> None:
    args = [*(["-v"] if verbose else []), "explain", str(DISPUTES / "points.jsonl"), "-m", "2026-01"]
    result = subprocess.run([sys.executable, "-c", BUG_SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 70
    errors = [line for line in result.stderr.splitlines() if line.startswith("mgwsim: error:")]
    assert len(errors) == 1 and "a bug in mgwsim" in errors[0] and "ZeroDivisionError" in errors[0]
    assert "please report it" in errors[0]
    assert ("Traceback" in result.stderr) is verbose
    if not verbose:
        assert result.stderr.strip() == errors[0]


SCENARIO = """[[accounts]]
id = "acct-1"

[scenario]
name = "bounds"
start = "2026-01-01T00:00:00+09:00"
months = 1

[[gateways]]
id = "gw-1"
account = "acct-1"

[profiles.sensor]
base = "telemetry"
platform_messages_per_day = 24

[[fleets]]
name = "f"
account = "acct-1"
gateway = "gw-1"
count = 2
profile = "sensor"

[expect.totals]
"2026-01/acct-1" = "0"
"""


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("platform_messages_per_day = 24", "platform_messages_per_day = 100000000", "between 0 and 1,440"),
        ("platform_messages_per_day = 24", "colour = 3", "unknown key"),
        ('"2026-01/acct-1" = "0"', '"2026-01/acct-1" = "NaN"', "finite"),
        ("count = 2", "count = 9999999", "at most 10,000,000 SIMs"),
    ],
)
def test_scenario_errors_name_the_line_of_the_key_and_the_bound(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.replace(old, new), encoding="utf-8")
    line = SCENARIO.splitlines().index(old) + 1
    if new.startswith("count"):
        fleet = SCENARIO[SCENARIO.index("[[fleets]]") : SCENARIO.index("[expect")].replace('"f"', '"g"')
        path.write_text(SCENARIO.replace(old, new) + fleet.replace(old, new), encoding="utf-8")
        one_line(mgwsim("run", path), 2, reason)
        return
    one_line(mgwsim("run", path), 2, f"{path}:{line}:", reason)
