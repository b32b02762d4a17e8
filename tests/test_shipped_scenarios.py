"""Every shipped scenario runs clean as a user runs it: `mgwsim run` exits 0, its [expect] checks hold.

The load scenarios run through `--scale 0.02` (the same mix, one SIM at least per fleet, the
expectations scaled with it), so a regression in them fails CI without the full run's minutes;
load-1m runs in shards, as it does at full size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import folder_files
from test_cli import mgwsim

from simulator.runner import check_expectations, run_scenario
from simulator.scenario import ScenarioError, load_scenario, scale_scenario, scenario_from_text

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))
LOADS = {path for path in SHIPPED if path.stem.startswith("load-")}


def test_mgwsim_scenarios_lists_every_shipped_scenario_with_what_it_shows() -> None:
    done = mgwsim("scenarios", columns=200)
    assert done.returncode == 0, done.stderr
    for path in SHIPPED:
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"│ {path.stem} "))
        first_words = path.read_text().splitlines()[0].lstrip("# ").split()[:3]
        assert " ".join(first_words) in row, (path.stem, row)


def test_run_help_names_every_shipped_scenario() -> None:
    """``mgwsim run --help`` lists the names that run by name (it once left out load-1m)."""
    done = mgwsim("run", "--help", columns=400)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.replace("│", " ").split())
    assert f"shipped scenario ({', '.join(path.stem for path in SHIPPED)})" in said, said


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_every_shipped_scenario_runs_clean(path: Path, tmp_path: Path) -> None:
    scale = ["--scale", "0.02"] if path in LOADS else []
    shards = ["--shard-sims", "5000"] if path.stem == "load-1m" else []  # 20,200 SIMs in shards, as at full size
    done = mgwsim("run", path, *scale, *shards, "--out", tmp_path / "out", columns=200)
    assert done.returncode == 0, done.stderr
    assert "expectation failed" not in done.stderr
    if scale:
        assert "scaled by 0.02" in done.stderr


@pytest.mark.parametrize("path", sorted(set(SHIPPED) - LOADS), ids=lambda path: path.stem)
def test_both_engines_write_the_same_folder_byte_for_byte(path: Path, tmp_path: Path) -> None:
    """Same seed, same bytes on every engine: the log (in its order), the invoices, summary, manifest, report.

    The engines visit devices in different orders (SimPy's processes, fleets in bulk); several SIMs
    often write at one instant (every session's record at 23:59:59), and the log's tie order must
    not show which engine ran.
    """
    folders = {}
    for engine in ("fast", "reference"):
        folders[engine] = tmp_path / engine
        done = mgwsim("run", path, "--engine", engine, "--log-format", "jsonl", "--out", folders[engine])
        assert done.returncode == 0, done.stderr
    fast, reference = folder_files(folders["fast"]), folder_files(folders["reference"])
    assert sorted(fast) == sorted(reference)
    assert "events.jsonl" in fast and len(fast) >= 5
    for name, data in fast.items():
        assert data == reference[name], name


def test_the_load_scenario_scales_its_mix_and_its_expectations() -> None:
    full = load_scenario(ROOT / "scenarios/load-100k.toml")
    small = scale_scenario(full, 0.02)
    assert len(small.fleets) == len(full.fleets) and all(fleet.count >= 1 for fleet in small.fleets)
    assert 1_900 <= small.sim_count <= 2_100
    misconfigured = sum(fleet.count for fleet in small.fleets if fleet.pin == "misconfigured")
    assert small.expect.ever_locked == misconfigured == 20, "10 accounts: one rescued and one dead SIM each"
    assert small.expect.dead == small.expect.unlocked_at_end == 10
    assert small.expect.interruptions_min == 20 and not small.expect.totals
    result = run_scenario(small)
    assert check_expectations(result) == []


def test_locked_is_refused_for_saying_neither_when_nor_how() -> None:
    text = (ROOT / "scenarios/pin-lockout.toml").read_text().replace("locked_at_end = 2", "locked = 2")
    with pytest.raises(ScenarioError, match=r"pin-lockout.toml:\d+: key 'expect.locked': says neither when nor how"):
        scenario_from_text(text, "pin-lockout.toml")


def test_a_failed_pin_expectation_says_what_it_counted() -> None:
    text = (ROOT / "scenarios/pin-lockout.toml").read_text().replace("locked_at_end = 2", "ever_locked = 2")
    scenario = scenario_from_text(text, str(ROOT / "scenarios/pin-lockout.toml"))
    failures = check_expectations(run_scenario(scenario))
    assert failures == [f"expected 2 SIMs ever locked, got {2 + 2}"] or failures[0].startswith(
        "expected 2 SIMs ever locked"
    )


@pytest.mark.parametrize(("accounts", "valid"), [(100, True), (101, False)])
def test_a_scenario_has_up_to_100_accounts(accounts: int, valid: bool) -> None:
    """A million SIMs over 100 accounts (the load-1m mix) is a valid scenario; account numbers are 00-99."""
    text = '[scenario]\nname = "many"\nstart = "2026-01-01T00:00:00+09:00"\nmonths = 1\n'
    for number in range(accounts):
        text += f'\n[[accounts]]\nid = "acct-{number:03d}"\n'
    for number in range(accounts):
        text += f'\n[[gateways]]\nid = "gw-{number:03d}"\naccount = "acct-{number:03d}"\n'
        text += f'\n[[fleets]]\nname = "f-{number:03d}"\naccount = "acct-{number:03d}"\n'
        text += f'gateway = "gw-{number:03d}"\ncount = 1\n'
    if valid:
        scenario = scenario_from_text(text, "many.toml")
        iccids = {fleet.iccid(0, number) for number, fleet in enumerate(scenario.fleets)}
        assert len(iccids) == accounts and all(len(iccid) == 19 for iccid in iccids)
    else:
        with pytest.raises(ScenarioError, match="at most 1,000 fleets and 100 accounts"):
            scenario_from_text(text, "many.toml")


def test_after_pip_install_the_quickstart_runs_anywhere_by_name(tmp_path: Path) -> None:
    """The wheel carries the scenarios: in a fresh virtual environment `mgwsim run quickstart` meters the goldens.

    The environment is new and holds mgwsim from the wheel only, with its console script; the
    dependencies are this test environment's, reached through a ``.pth`` file (no download).
    """
    import json
    import os
    import subprocess
    import sys
    import sysconfig

    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    constraints = str(ROOT / ".ci" / "constraints.txt")  # the setuptools CI builds with
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--build-constraint", constraints, "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr, "setuptools warns"
    (wheel,) = wheels.glob("mgwsim-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(fresh_site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "-q", "install", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment["COLUMNS"] = "200"
    mgwsim_command = str(venv / "bin" / "mgwsim")
    done = subprocess.run(
        [mgwsim_command, "run", "quickstart", "--out", "out"], cwd=elsewhere, env=environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where = subprocess.run(
        [python, "-c", "import simulator, mgwsim_scenarios; print(simulator.__file__, mgwsim_scenarios.__file__)"],
        cwd=elsewhere, env=environment, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert all(path.startswith(fresh_site) for path in where.split()), f"not the installed copy: {where}"
    for golden in sorted((ROOT / "scenarios/golden/quickstart").glob("*.json")):
        written = json.loads((elsewhere / "out/invoices" / golden.name).read_text())
        assert written == json.loads(golden.read_text()), golden.name
    missing = subprocess.run(
        [mgwsim_command, "run", "quickstrat"], cwd=elsewhere, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and "quickstrat: no such file" in missing.stderr
    assert "shipped: idle-fleet, internet-toggle, load-100k" in missing.stderr

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [mgwsim_command, *args], cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    listed = installed("scenarios")
    assert listed.returncode == 0 and all(f"│ {path.stem} " in listed.stdout for path in SHIPPED), listed.stdout
    # a dispute, from the installed copy alone: bill the run's own log again and diff it with its invoice
    billed = installed("bill", "out/events.jsonl", "--month", "2026-01", "--format", "json")
    assert billed.returncode == 0, billed.stderr
    (elsewhere / "billed.json").write_text(billed.stdout)
    same = installed("diff", "out/invoices/2026-01.json", "billed.json")
    assert same.returncode == 0, same.stdout + same.stderr
