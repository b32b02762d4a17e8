"""Bad input everywhere: hypothesis mutates event logs, tariffs and scenarios.

Whatever the input — wrong types, missing keys, huge numbers, unicode, truncation, empty files,
binary garbage — the readers either accept it or raise their own error with a one-line message
that names the file (and line or key); the CLI turns that into exit 2 with nothing on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import DISPUTES, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.eventlog import EventLogError, read_event_log
from metering.tariff import TariffError, load_tariff
from simulator.scenario import ScenarioError, load_scenario

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SETTINGS = settings(
    max_examples=int(os.environ.get("MGWSIM_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mutated_text(draw: st.DrawFn, original: str) -> bytes:
    """The original file, broken in one of the ways files break."""
    data = original.encode()
    how = draw(st.sampled_from(["truncate", "garbage", "unicode", "empty", "line", "value"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if how == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    if how == "unicode":
        at = draw(st.integers(0, len(original)))
        return (original[:at] + draw(st.text(min_size=1, max_size=5)) + original[at:]).encode("utf-8", "surrogatepass")
    if how == "empty":
        return b""
    lines = original.splitlines()
    index = draw(st.integers(0, len(lines) - 1))
    if how == "line":
        del lines[index]
    else:
        key = lines[index].split("=", 1)[0] if "=" in lines[index] else "x"
        replacement = draw(
            st.sampled_from(['"text"', "-1", "1e400", "99999999999999999999999", "[]", "{}", "true", '"2026-13-40"'])
        )
        lines[index] = f"{key}= {replacement}"
    return "\n".join(lines).encode()


def one_line(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message, message


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(
                    [
                        "ts",
                        "type",
                        "account",
                        "id",
                        "sim",
                        "up_bytes",
                        "down_bytes",
                        "route",
                        "count",
                        "points",
                        "expires",
                        "pin",
                        "puk",
                    ]
                ),
                ODD_VALUES,
                max_size=8,
            ),
            st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_malformed_event_lines_are_named_errors(lines: list[object]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "log.jsonl"
        good = (DISPUTES / "points.jsonl").read_text(encoding="utf-8").splitlines()[:2]
        text = [*good, *(line if isinstance(line, str) else json.dumps(line, default=str) for line in lines)]
        path.write_text("\n".join(text) + "\n", encoding="utf-8", errors="surrogateescape")
        try:
            list(read_event_log(path))
        except EventLogError as exc:
            one_line(str(exc), path)


def accepted_or_named(data: bytes, name: str, load: Callable[[Path], object], error: type[Exception]) -> None:
    """Write ``data`` to a file called ``name`` and load it: it loads, or fails with a named one-line error."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / name
        path.write_bytes(data)
        try:
            load(path)
        except error as exc:
            one_line(str(exc), path)


@SETTINGS
@given(mutated_text((ROOT / "metering/tariffs/default.toml").read_text(encoding="utf-8")))
def test_broken_tariff_files_are_named_errors(data: bytes) -> None:
    accepted_or_named(data, "tariff.toml", load_tariff, TariffError)


@SETTINGS
@given(mutated_text((ROOT / "scenarios/pin-lockout.toml").read_text(encoding="utf-8")))
def test_broken_scenario_files_are_named_errors(data: bytes) -> None:
    accepted_or_named(data, "scenario.toml", load_scenario, ScenarioError)


def test_the_cli_exits_2_with_one_line_and_nothing_on_stdout(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\xff{not json\n")
    scenario = tmp_path / "broken.toml"
    scenario.write_text("[scenario]\nname = 3\n", encoding="utf-8")
    tariff = tmp_path / "tariff.toml"
    tariff.write_bytes(b"\xfe\xfe")
    for args, named in (
        (["bill", garbage, "--month", "2026-01"], garbage),
        (["run", scenario], scenario),
        (["bill", DISPUTES / "points.jsonl", "--month", "2026-01", "--tariff", tariff], tariff),
        (["ingest", garbage, "--db", tmp_path / "store.duckdb"], garbage),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "simulator.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and str(named) in done.stderr
