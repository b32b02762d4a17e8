"""The ``mgwsim`` command line as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from conftest import DISPUTES, ROOT, write_jsonl

from metering.bench import BILL_STAGES
from metering.fast import rate_fast
from metering.tariff import load_tariff


def mgwsim(*args: str | Path, columns: int = 40) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a terminal of ``columns`` width.

    The default is narrow on purpose: messages must still come out one per line whatever the
    length of a path (CI checks out into a deeper directory than a developer does).
    """
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == "", "nothing half-written on standard output"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]


def test_bill_prints_the_invoice_document() -> None:
    result = mgwsim("bill", DISPUTES / "points.jsonl", "--month", "2026-02")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "mgwsim.invoice/1"
    assert document["month"] == "2026-02" and document["timezone"] == "Asia/Tokyo"
    accounts = {invoice["account"]: invoice for invoice in document["invoices"]}
    assert accounts["acct-p2"]["total"] == "121"
    assert accounts["acct-p2"]["points"]["shortfall_purchased"] == 20000
    assert all(isinstance(line["amount"], str) for invoice in document["invoices"] for line in invoice["lines"])


def test_both_raters_print_the_same_bytes() -> None:
    fast = mgwsim("bill", DISPUTES / "line-maintenance.jsonl", "--month", "2025-12..2026-12")
    reference = mgwsim(
        "bill", DISPUTES / "line-maintenance.jsonl", "--month", "2025-12..2026-12", "--rater", "reference"
    )
    assert fast.returncode == reference.returncode == 0
    assert fast.stdout == reference.stdout
    assert len(json.loads(fast.stdout)) == 13


def test_table_format_for_people() -> None:
    result = mgwsim(
        "bill",
        DISPUTES / "data-pack.jsonl",
        "-m",
        "2026-01",
        "-t",
        DISPUTES / "tariffs/data-pack.toml",
        "-f",
        "table",
        columns=160,
    )
    assert result.returncode == 0
    assert "pool:kddi" in result.stdout and "695" in result.stdout


def test_bad_event_line_names_file_and_line(tmp_path: Path) -> None:
    lines = (DISPUTES / "jst-month-edge.jsonl").read_text().splitlines()
    lines.insert(1, '{"ts": "2026-01-11T09:00:00", "type": "sms.sent", "account": "acct-1", "kind": "a2p"}')
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert_one_line_error(mgwsim("bill", path, "-m", "2026-01"), f"{path}:2:", "no UTC offset")


def test_inconsistent_history_names_the_event(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [{"ts": "2026-01-11T09:00:00+09:00", "type": "sim.deleted", "account": "a", "sim": "8981300000000000001"}],
    )
    for rater in ("fast", "reference"):
        assert_one_line_error(
            mgwsim("bill", path, "-m", "2026-01", "--rater", rater), f"{path}:1:", "is not registered"
        )


def test_secrets_are_rejected_and_never_echoed(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {
                "ts": "2026-01-11T09:00:00+09:00",
                "type": "sim.registered",
                "account": "a",
                "sim": "8981300000000000001",
                "puk": "73914628",
            }
        ],
    )
    result = mgwsim("bill", path, "-m", "2026-01")
    assert_one_line_error(result, f"{path}:1:", "secret field")
    assert "73914628" not in result.stderr


def test_bad_tariff_and_bad_month(tmp_path: Path) -> None:
    tariff = tmp_path / "t.toml"
    tariff.write_text('[tariff]\nbase = "default"\nname = "t"\nversion = "1"\n[gateway_fee]\nmonthly = "-5"\n')
    assert_one_line_error(
        mgwsim("bill", DISPUTES / "points.jsonl", "-m", "2026-01", "-t", tariff), "gateway_fee.monthly"
    )
    assert_one_line_error(mgwsim("bill", DISPUTES / "points.jsonl", "-m", "2026-1"), "--month")
    assert_one_line_error(mgwsim("bill", tmp_path / "missing.jsonl", "-m", "2026-01"), "no such file")


def test_explain_names_rule_article_and_evidence() -> None:
    result = mgwsim("explain", DISPUTES / "line-maintenance.jsonl", "-m", "2025-12", "--subject", "8981300000000000032")
    assert result.returncode == 0
    assert "NOT CHARGED line_maintenance_fee" in result.stdout
    assert "deleted during 2025-12 (I-3)" in result.stdout
    assert "m6: sim.deleted at 2025-12-20T10:00:00+09:00" in result.stdout
    assert "8981300000000000031" not in result.stdout
    everything = mgwsim("explain", DISPUTES / "jst-month-edge.jsonl", "-m", "2026-01..2026-02").stdout
    assert "no sim basic fee: SIM registered but not used for communication in 2026-01" in everything
    assert "CHARGED sim_basic_fee for 8981300000000000011: 1 x 10 = 10 JPY [SMC-38" in everything


def test_a_mistyped_subject_is_answered_with_the_nearest_that_have_a_decision(tmp_path: Path) -> None:
    log = DISPUTES / "line-maintenance.jsonl"  # SIMs 8981300000000000031..34 have decisions in 2025-12
    typo = mgwsim("explain", log, "-m", "2025-12", "--subject", "8981300000000000O32")  # a letter O for a 0
    assert typo.returncode == 0
    assert typo.stdout.strip().endswith(
        "No charge or decision concerns '8981300000000000O32' in the months asked for. The nearest that have "
        "one: '8981300000000000032', '8981300000000000033', '8981300000000000034'."
    )
    unknown = mgwsim("explain", log, "-m", "2025-12", "--subject", "zzz")
    assert unknown.stdout.strip().endswith("No charge or decision concerns 'zzz' in the months asked for.")
    page = tmp_path / "dispute.html"
    html = mgwsim("explain", log, "-m", "2025-12", "--subject", "8981300000000000O32", "--html", page)
    assert html.returncode == 0
    assert "mgwsim: note: no charge or decision concerns '8981300000000000O32'" in html.stderr  # not on the screen
    assert "The nearest that have one: &#x27;8981300000000000032&#x27;" in page.read_text(encoding="utf-8")
    found = mgwsim("explain", log, "-m", "2025-12", "--subject", "8981300000000000032", "--html", page)
    assert "note" not in found.stderr and "unmatched" not in page.read_text(encoding="utf-8")


def test_ingest_is_idempotent_and_the_store_bills_like_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    first = mgwsim("ingest", DISPUTES / "points.jsonl", "--db", store)
    again = mgwsim("ingest", DISPUTES / "points.jsonl", "--db", store)
    assert first.returncode == again.returncode == 0
    assert "11 events added, 0 already stored" in first.stderr
    assert "0 events added, 11 already stored" in again.stderr
    from_store = mgwsim("bill", "--db", store, "-m", "2026-01..2026-03")
    from_file = mgwsim("bill", DISPUTES / "points.jsonl", "-m", "2026-01..2026-03")
    assert from_store.returncode == 0 and from_store.stdout == from_file.stdout


def test_ingest_refuses_a_reused_id_with_other_content(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    assert mgwsim("ingest", DISPUTES / "points.jsonl", "--db", store).returncode == 0
    changed = [json.loads(line) for line in (DISPUTES / "points.jsonl").read_text().splitlines()]
    changed[1]["points"] = 40000
    path = write_jsonl(tmp_path / "changed.jsonl", changed)
    assert_one_line_error(mgwsim("ingest", path, "--db", store), f"{path}:2", "different content")
    assert "11 already stored" in mgwsim("ingest", DISPUTES / "points.jsonl", "--db", store).stderr


def test_help_explains() -> None:
    result = mgwsim("bill", "--help", columns=160)
    assert result.returncode == 0 and "--month" in result.stdout and "--tariff" in result.stdout


def test_verbose_logs_the_steps_and_the_pin_flows_on_stderr_only(tmp_path: Path) -> None:
    quiet = mgwsim("run", ROOT / "scenarios/pin-lockout.toml", columns=200)
    info = mgwsim("-v", "run", ROOT / "scenarios/pin-lockout.toml", "--out", tmp_path / "out", columns=200)
    debug = mgwsim("-vv", "run", ROOT / "scenarios/pin-lockout.toml", columns=200)
    assert quiet.returncode == info.returncode == debug.returncode == 0
    assert quiet.stderr == "" and quiet.stdout == debug.stdout, "logs go to stderr, the summary is unchanged"
    assert "simulating pin-lockout" in info.stderr and "metered 2 months" in info.stderr
    assert "wrote 6 files" in info.stderr and "PIN entered" not in info.stderr and "matplotlib" not in info.stderr
    assert "wrong PIN entered, 0 tries left" in debug.stderr and "wrong PUK entered" in debug.stderr


def test_verbose_bill_logs_its_reading_and_prints_the_same_invoice() -> None:
    log = DISPUTES / "points.jsonl"
    quiet = mgwsim("bill", log, "--month", "2026-01", "--format", "json")
    verbose = mgwsim("-v", "bill", log, "--month", "2026-01", "--format", "json", columns=200)
    assert quiet.returncode == verbose.returncode == 0 and quiet.stdout == verbose.stdout
    assert f"reading {log}" in verbose.stderr and "events read into the store" in verbose.stderr
    assert "rating 1 month" in verbose.stderr


SLOW_QUERIES: Final = """
import sys
import duckdb

opened = duckdb.connect

def connect(*args, **kwargs):
    connection = opened(*args, **kwargs)
    connection.execute("SET progress_bar_time = 1")  # every query of more than 1 ms counts as long
    return connection

duckdb.connect = connect
from simulator.cli import main

sys.argv = ["mgwsim", *sys.argv[1:]]
main()
"""
"""The CLI, run as if each of its queries took longer than DuckDB's progress-bar delay (2 s)."""


def mgwsim_slow_queries(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as :data:`SLOW_QUERIES` does: every query long enough for DuckDB's progress bar."""
    return subprocess.run(
        [sys.executable, "-c", SLOW_QUERIES, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_a_long_query_writes_no_progress_bar_into_the_printed_document(tmp_path: Path) -> None:
    """DuckDB prints its progress bar on standard output once a query runs for longer than 2 s.

    On a large store that is every query of a bill, and the bar's bytes would come before the
    invoice document that ``mgwsim bill … > invoice.json`` writes there.
    """
    log = DISPUTES / "gateway-options-sms.jsonl"
    store = tmp_path / "store.duckdb"
    months = ("--month", "2026-01..2026-03")
    quick = mgwsim("bill", log, *months)
    assert quick.returncode == 0, quick.stderr
    for args in (("ingest", log, "--db", store), ("bill", log, *months), ("bill", "--db", store, *months)):
        slow = mgwsim_slow_queries(*args)
        assert slow.returncode == 0, slow.stderr
        assert "%" not in slow.stdout + slow.stderr, f"a progress bar in {args[0]}'s output"
        if args[0] == "bill":
            assert slow.stdout == quick.stdout


def test_bill_counts_a_redelivered_event_once_and_refuses_a_reused_id(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (DISPUTES / "points.jsonl").read_text().splitlines()]
    once = mgwsim("bill", DISPUTES / "points.jsonl", "-m", "2026-01..2026-03")
    twice = mgwsim(
        "bill", DISPUTES / "points.jsonl", write_jsonl(tmp_path / "again.jsonl", records), "-m", "2026-01..2026-03"
    )
    assert once.returncode == twice.returncode == 0 and once.stdout == twice.stdout
    records[1]["points"] = 40000
    changed = write_jsonl(tmp_path / "changed.jsonl", records)
    assert_one_line_error(
        mgwsim("bill", DISPUTES / "points.jsonl", changed, "-m", "2026-01"), f"{changed}:2", "points.jsonl:2"
    )


def test_benchmarks_print_their_figures(tmp_path: Path) -> None:
    """Small runs of two benchmarks: each prints its table of measures and values."""
    pcap = mgwsim("bench", "pcap", "--sessions", "5", "--sample", "10", "--dir", tmp_path, columns=160)
    jsonl = mgwsim("bench", "jsonl", "--lines", "2000", "--workdir", tmp_path, columns=160)
    assert pcap.returncode == jsonl.returncode == 0, pcap.stderr + jsonl.stderr
    assert "measure" in pcap.stdout and "packets per second" in pcap.stdout and "templates / scapy" in pcap.stdout
    assert "lines per second" in jsonl.stdout and "peak memory" in jsonl.stdout and "errors" in jsonl.stdout
    assert "unchecked / bare" in jsonl.stdout
    assert all(label in jsonl.stdout for label in BILL_STAGES.values()), jsonl.stdout


def test_a_bill_times_each_of_its_stages() -> None:
    """``rate_fast`` fills the stages ``bench jsonl`` reports: every one, and together within the bill's time."""
    months = list(range(2026 * 12, 2026 * 12 + 3))
    stages: dict[str, float] = {}
    began = time.perf_counter()
    timed = rate_fast([DISPUTES / "points.jsonl"], None, load_tariff(), months, stages)
    elapsed = time.perf_counter() - began
    assert list(stages) == list(BILL_STAGES)
    assert all(seconds >= 0 for seconds in stages.values()) and sum(stages.values()) <= elapsed
    untimed = rate_fast([DISPUTES / "points.jsonl"], None, load_tariff(), months)
    assert [timed.documents[m].dumps() for m in months] == [untimed.documents[m].dumps() for m in months]


def test_bench_sim_runs_the_shipped_load_scenario_from_any_folder(tmp_path: Path) -> None:
    """``mgwsim bench sim`` with no scenario benchmarks the installed load-100k, wherever it is run.

    Its default was a path relative to the repository: run from any other folder, the child
    process failed on the missing file and the command ended in an "internal error".
    """
    result = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "bench", "sim", "--sims", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "load-100k" in result.stdout and "cost per simulated session" in result.stdout


def test_bench_sim_names_a_missing_scenario_in_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        mgwsim("bench", "sim", tmp_path / "no-such.toml", columns=200), "no-such.toml", "no such file"
    )


def _with_byte_order_mark(source: Path, folder: Path) -> Path:
    """A copy of ``source`` in ``folder`` that starts with a UTF-8 byte order mark, as Excel and Windows tools write."""
    copy = folder / source.name
    copy.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
    return copy


def test_text_inputs_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    """A scenario, a tariff, a charges CSV and a service export: each starting with a byte order mark.

    Each was refused ("the header lacks month" of a CSV whose header has it, "not valid TOML" at
    line 1, "Unexpected UTF-8 BOM"); the mark carries nothing, and every command now reads the rest.
    """
    marked = tmp_path / "marked"
    marked.mkdir()
    export = ROOT / "scenarios/sacloud-export"
    log = DISPUTES / "reregistration.jsonl"
    tariff = ROOT / "scenarios/disputes/tariffs/per-registration.toml"
    billed = tmp_path / "billed.json"
    billed.write_text(mgwsim("bill", log, "--month", "2026-01").stdout, encoding="utf-8")
    at = "2026-03-31T23:59:59+09:00"
    Source = Callable[[Path], Path]
    commands: list[Callable[[Source], list[str | Path]]] = [
        lambda source: ["run", source(ROOT / "scenarios/quickstart.toml")],
        lambda source: ["bill", log, "--month", "2026-01", "--tariff", source(tariff)],
        lambda source: ["diff", source(export / "charges.csv"), billed, "--format", "json"],
        lambda source: [
            "import", "sacloud", f"{source(export / 'sims-2026-01-31.json')}@{at}",
            source(export / "mobile-gateways.json"), "--at", at, "--account", "a", "--out", tmp_path / "i.jsonl",
        ],
    ]  # fmt: skip
    copies: dict[str, str] = {}

    def marked_copy(path: Path) -> Path:
        copy = _with_byte_order_mark(path, marked)
        copies[str(copy)] = str(path)
        return copy

    for command in commands:
        plain = mgwsim(*command(lambda path: path), columns=200)
        with_mark = mgwsim(*command(marked_copy), columns=200)
        said = with_mark.stdout
        for copy, original in copies.items():  # (diff names its sides)
            said = said.replace(copy, original)
        assert plain.returncode in (0, 1), plain.stderr  # (diff: 1, the two sides differ)
        assert (with_mark.returncode, said) == (plain.returncode, plain.stdout), with_mark.stderr


def test_a_month_without_events_is_said_to_be_one(tmp_path: Path) -> None:
    """A mistyped month (2025 for 2026) gives no invoices: a note says where the events lie.

    Was: the empty document and exit 0 without a word, as for a month that really has no charges.
    The document itself is unchanged, and a month with invoices gets no note.
    """
    log = DISPUTES / "reregistration.jsonl"  # events of 2025-12 and 2026-01
    lie_in = "the events lie in 2025-12..2026-01 (JST)"
    for rater in ("fast", "reference"):
        for month, said in (("2025-01", "it"), ("2026-05", "it"), ("2025-01..2025-03", "them")):
            result = mgwsim("bill", log, "--month", month, "--rater", rater, columns=200)
            assert result.returncode == 0, result.stderr
            printed = json.loads(result.stdout)
            documents = printed if isinstance(printed, list) else [printed]
            assert [document["invoices"] for document in documents] == [[]] * (3 if said == "them" else 1)
            assert result.stderr == (
                f"mgwsim: note: no invoices for {month}: no event falls in {said} and nothing is charged; {lie_in}\n"
            )
        result = mgwsim("bill", log, "--month", "2025-12..2026-02", "--rater", rater)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        empty = tmp_path / "empty.jsonl"
        empty.write_text("", encoding="utf-8")
        result = mgwsim("bill", empty, "--month", "2026-01", "--rater", rater, columns=200)
        assert result.returncode == 0
        assert result.stderr == "mgwsim: note: no invoices for 2026-01: the logs hold no events\n"
    result = mgwsim("explain", log, "--month", "2025-01", columns=200)
    assert result.returncode == 0 and lie_in in result.stderr
