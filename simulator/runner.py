"""Running a scenario: the engine, the online metering, the expectations, and the outputs.

:func:`run_scenario` simulates and meters in-process (the online metering is the fast rater over
the events the run produced, exactly what ``mgwsim bill`` computes from the written log).
:func:`write_outputs` writes the event log, one invoice document per month and the PNG report,
each atomically; :func:`compare_golden` is the CI regression check of ``mgwsim check``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from metering.atomic import AtomicWriter
from metering.eventlog import read_event_log, write_event_log
from metering.invoice import InvoiceDocument
from metering.timeutil import format_month
from simulator.results import MeteringFailure, RunResult, ShardResult
from simulator.run_folder import write_folder
from simulator.scenario import Scenario
from simulator.shard import simulate_shard

__all__ = [
    "GoldenError",
    "MeteringFailure",
    "RunResult",
    "ShardResult",
    "check_expectations",
    "compare_golden",
    "golden_folder_problem",
    "run_scenario",
    "simulate_shard",
    "write_outputs",
]

LOG = logging.getLogger(__name__)


def run_scenario(
    scenario: Scenario,
    progress: Callable[[float], None] | None = None,
    rater: str = "fast",
    engine_name: str = "fast",
    ray_address: str | None = None,
    keep_events: bool = True,
) -> RunResult:
    """Simulate the scenario with the named engine and meter its events in-process.

    Args:
        scenario: The scenario.
        progress: Called with the fraction done.
        rater: ``fast`` or ``reference``.
        engine_name: ``fast``, ``reference``, or ``ray`` (the fast engine, one Ray task per account).
        ray_address: The Ray cluster to use with ``ray`` (``None``: start a local one).
        keep_events: Keep the event log in the result (else only its size is known).
    """
    if engine_name == "ray":
        from simulator.ray_engine import run_sharded

        shard = run_sharded(scenario, rater, ray_address, keep_events, progress)
    else:
        shard = simulate_shard(scenario, None, rater, engine_name, keep_events, progress)  # checks the name
    return RunResult(**vars(shard), scenario=scenario)


def check_expectations(result: RunResult) -> list[str]:
    """The ``[expect]`` checks that failed, in words (empty: all passed)."""
    expect, failures = result.scenario.expect, []
    states, stats = result.sim_states, result.stats
    ever_locked = states["locked"] + states["unlocked"] + states["dead"]
    for name, wanted, got in (
        ("locked at the end", expect.locked_at_end, states["locked"]),
        ("unlocked at the end", expect.unlocked_at_end, states["unlocked"]),
        ("ever locked", expect.ever_locked, ever_locked),
        ("dead", expect.dead, states["dead"]),
    ):
        if wanted is not None and wanted != got:
            failures.append(f"expected {wanted} SIMs {name}, got {got}")
    for name, floor, got in (
        ("interruptions", expect.interruptions_min, stats.interruptions),
        ("sessions", expect.sessions_min, stats.sessions),
        ("refused attaches", expect.refused_min, sum(stats.refusals.values())),
    ):
        if floor is not None and got < floor:
            failures.append(f"expected at least {floor} {name}, got {got}")
    totals = {
        f"{format_month(document.month)}/{invoice.account}": invoice.total
        for document in result.documents
        for invoice in document.invoices
    }
    for key, wanted_total in expect.totals.items():
        got_total = totals.get(key, Decimal(0))
        if got_total != wanted_total:
            failures.append(f"expected total {wanted_total} for {key}, got {got_total}")
    return failures


LARGE_LOG_EVENTS: Final = 1_000_000
"""Above this many events, a run folder's log is Parquet unless JSONL is asked for (see :func:`folder_log_name`)."""


def folder_log_name(result: RunResult, log_format: str = "auto") -> tuple[str, str]:
    """The name of a run folder's event log, and why: ``events.jsonl``, or ``events.parquet`` for a large log.

    ``log_format``: ``auto`` (Parquet above :data:`LARGE_LOG_EVENTS` events), ``jsonl`` or ``parquet``.
    A year of a large fleet's daily records is tens of millions of events: as JSONL, gigabytes
    and minutes to write; as Parquet (columnar, compressed, streamed in row groups) a tenth of the
    size, and ``mgwsim bill`` reads either.
    """
    if log_format == "jsonl" or (log_format == "auto" and result.event_count <= LARGE_LOG_EVENTS):
        return "events.jsonl", "asked for" if log_format == "jsonl" else f"at most {LARGE_LOG_EVENTS:,} events"
    if log_format == "parquet":
        return "events.parquet", "asked for"
    return (
        "events.parquet",
        f"{result.event_count:,} events, more than {LARGE_LOG_EVENTS:,}: --log-format jsonl for JSONL",
    )


def write_outputs(
    result: RunResult,
    out: Path | None,
    events_path: Path | None,
    log_format: str = "auto",
    files: contextlib.ExitStack | None = None,
) -> list[Path]:
    """Write the event log, and the run folder (log, invoices per month, report, summary); return the paths.

    The folder is written as one set (:mod:`simulator.run_folder`): ``out`` holds this whole run
    or, if writing fails, the previous one as it was. Its log's format: :func:`folder_log_name`.
    ``events_path`` joins the set: it is written whole before the folder and renamed into place
    after the folder is swapped in, so a failure leaves both as they were.

    Args:
        result: The run.
        out: The run folder, or None.
        events_path: A further copy of the event log, or None.
        log_format: The format of the folder's log: ``auto``, ``jsonl`` or ``parquet``.
        files: The caller's set of further outputs (a stack of :class:`AtomicWriter`), written whole
            before this is called; ``events_path`` joins it, and the caller renames them all into
            place when it closes. Without it, ``events_path`` is renamed into place here, last.
    """
    written: list[Path] = []
    with contextlib.ExitStack() as own:
        if events_path is not None:
            write_event_log(result.events, events_path, files if files is not None else own)
            written.append(events_path)
        if out is not None:
            written += write_folder(out, lambda folder: _run_files(result, folder, log_format))
            LOG.info("wrote %d files to %s", len(written), out)
    return written


def _run_files(result: RunResult, folder: Path, log_format: str) -> list[Path]:
    """Write a run's files into ``folder``; return them."""
    name, why = folder_log_name(result, log_format)
    log = folder / name
    LOG.info("writing %s (%s)", name, why)
    write_event_log(result.events, log)
    LOG.info("wrote %s; writing the invoices", name)
    written = [log]
    for document in result.documents:
        path = folder / "invoices" / f"{format_month(document.month)}.json"
        with AtomicWriter(path) as temporary:
            temporary.write_text(document.dumps() + "\n", encoding="utf-8")
        written.append(path)
    LOG.info("wrote %d invoice documents; drawing the report", len(result.documents))
    return [*written, *_report_and_summary(result, folder, name, why)]


def _report_and_summary(result: RunResult, folder: Path, log_name: str, why: str) -> list[Path]:
    """Draw the report and write the summary into ``folder``; return both."""
    from simulator.report import write_report

    report = folder / "report.png"
    write_report(result, report)
    summary = folder / "summary.json"
    with AtomicWriter(summary) as temporary:
        figures = {**summary_of(result), "event_log": {"file": log_name, "why": why}}
        temporary.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return [report, summary]


def run_streamed(
    scenario: Scenario,
    out: Path | None,
    shard_sims: int,
    log_format: str = "auto",
    rater: str = "fast",
    progress: Callable[[float], None] | None = None,
    engine_name: str = "fast",
    ray_address: str | None = None,
) -> tuple[RunResult, list[Path]]:
    """Run a large scenario shard by shard straight into the run folder ``out`` (see :mod:`simulator.streamed_run`).

    ``fast``: shards of at most ``shard_sims`` SIMs in this process; ``ray``: the same shards as
    Ray tasks, handed back in account order (so both engines write the same bytes). The folder is
    written as one set, as :func:`write_outputs` writes it. Returns the run's digest (no events;
    invoices as totals and amounts per item) and the paths written.
    """
    from simulator.streamed_run import run_in_shards, serial_shards, shards_of

    groups = shards_of(scenario, shard_sims)
    count = len(groups)
    # the shards stream JSONL when it is asked for, else Parquet; ``auto`` then settles as a whole run would
    name = "events.jsonl" if log_format == "jsonl" else "events.parquet"
    found: list[RunResult] = []

    def results_of() -> Iterator[ShardResult]:
        if engine_name == "ray":
            from simulator.ray_engine import shard_results

            return shard_results(scenario, rater, ray_address, True, lay_out=True, tasks=groups)
        return serial_shards(scenario, groups, rater)

    def write(folder: Path) -> list[Path]:
        result, written = run_in_shards(scenario, folder, name, results_of(), count, progress)
        found.append(result)
        LOG.info("wrote %s and %d invoice documents in %d shards; drawing the report", name, len(written) - 1, count)
        settled, why = folder_log_name(result, log_format)
        if settled != name:  # ``auto``, and no more events than a JSONL log takes: the whole run's log
            LOG.info(
                "%d events: rewriting %s as %s, as a run of the fleet whole writes it",
                result.event_count,
                name,
                settled,
            )
            write_event_log(read_event_log(folder / name), folder / settled)
            (folder / name).unlink()
            written[0] = folder / settled
        return [*written, *_report_and_summary(result, folder, settled, why)]

    if out is None:  # only the figures and the checks: the shards are joined, nothing is written
        result, _ = run_in_shards(scenario, None, name, results_of(), count, progress)
        return result, []
    written = write_folder(out, write)
    return found[0], written


def summary_of(result: RunResult) -> dict[str, Any]:
    """The run's figures as plain data (``summary.json``)."""
    stats = result.stats
    return {
        "scenario": result.scenario.name,
        "events": result.event_count,
        "sims": dict(result.sim_states),
        "sessions": stats.sessions,
        "closures": dict(stats.closures),
        "refusals": dict(stats.refusals),
        "interruptions": stats.interruptions,
        "throttled_sessions": stats.throttled_sessions,
        "charges": {
            format_month(month): {item: str(amount) for item, amount in sorted(items.items())}
            for month, items in result.charges_by_item().items()
        },
    }


class GoldenError(ValueError):
    """A golden folder or file that cannot be compared with (one line: the file and the reason)."""


def golden_folder_problem(golden: Path, update: bool) -> str | None:
    """Why ``golden`` cannot be a golden folder (checked before a run): a file, or missing unless ``update``."""
    if golden.exists() and not golden.is_dir():
        return f"{golden}: is a file, not a folder of golden invoices"
    if not update and not golden.exists():
        return f"{golden}: no such folder (create it with --update)"
    return None


def _golden_document(path: Path) -> dict[str, Any]:
    """A golden invoice document, read and checked to be one.

    Raises:
        GoldenError: When it cannot be read, is not JSON, or is not an mgwsim invoice document.
    """
    from metering.compare import CompareInputError, read_json

    try:
        document = read_json(path)
    except CompareInputError as exc:
        raise GoldenError(str(exc)) from None
    if not isinstance(document, dict) or document.get("schema") != "mgwsim.invoice/1":
        raise GoldenError(f"{path}: not an mgwsim invoice document (schema mgwsim.invoice/1)")
    return document


def _update_golden(golden: Path, produced: dict[str, InvoiceDocument], stale: set[str]) -> None:
    """Rewrite the golden folder as a set: every new file is written whole before any is renamed into place.

    A full disk or another failure while writing leaves the folder as it was (and no folder at all
    when this made it); the golden files of months the run no longer has are removed last.

    Raises:
        OSError: Naming the file that could not be written.
    """
    created = not golden.exists()
    try:
        with contextlib.ExitStack() as writers:  # on leaving: each renamed into place, or each removed
            for name, document in produced.items():
                temporary = writers.enter_context(AtomicWriter(golden / name))
                temporary.write_text(document.dumps() + "\n", encoding="utf-8")
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                golden.rmdir()
        raise
    for name in stale:
        (golden / name).unlink()


def compare_golden(result: RunResult, golden: Path, update: bool) -> list[str]:
    """Compare (or, with ``update``, rewrite) the golden invoices; return the differences found.

    Raises:
        GoldenError: For a golden file that is not an mgwsim invoice document (file named).
    """
    differences: list[str] = []
    expected_files = {path.name for path in golden.glob("*.json")} if golden.is_dir() else set()
    produced = {f"{format_month(document.month)}.json": document for document in result.documents}
    if update:
        _update_golden(golden, produced, expected_files - set(produced))
        return []
    for name in sorted(expected_files - set(produced)):
        differences.append(f"{name}: golden file has no month in this run")
    for name, document in sorted(produced.items()):
        if name not in expected_files:
            differences.append(f"{name}: no golden file (run with --update to create it)")
            continue
        expected = _golden_document(golden / name)
        try:
            differences.extend(f"{name}: {text}" for text in diff_documents(expected, document.to_json()))
        except (KeyError, TypeError, AttributeError, ArithmeticError, ValueError) as exc:  # the golden's structure
            raise GoldenError(
                f"{golden / name}: not an mgwsim invoice document ({type(exc).__name__}: {exc})"
            ) from None
    return differences


def diff_documents(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Differences between two invoice documents, by meaning, in words."""
    found: list[str] = []
    if expected.get("tariff") != got.get("tariff"):
        found.append(f"tariff {expected.get('tariff')} became {got.get('tariff')}")
    before = {invoice["account"]: invoice for invoice in expected.get("invoices", [])}
    after = {invoice["account"]: invoice for invoice in got.get("invoices", [])}
    for account in sorted(set(before) | set(after)):
        old, new = before.get(account), after.get(account)
        if old is None or new is None:
            found.append(f"account {account}: invoice {'added' if old is None else 'removed'}")
            continue
        for key in ("subtotal", "tax", "total"):
            if Decimal(old[key]) != Decimal(new[key]):
                found.append(f"account {account}: {key} {old[key]} became {new[key]}")
        if old["points"] != new["points"]:
            found.append(f"account {account}: points {old['points']} became {new['points']}")

        def key_of(line: dict[str, Any]) -> tuple[str, str, str]:
            return line["item"], line["subject"], line["unit_price"]

        old_lines = {key_of(line): line for line in old["lines"]}
        new_lines = {key_of(line): line for line in new["lines"]}
        for line_key in sorted(set(old_lines) | set(new_lines)):
            was, now = old_lines.get(line_key), new_lines.get(line_key)
            label = f"account {account}: {line_key[0]} {line_key[1]}"
            if was is None or now is None:
                found.append(f"{label}: line {'added' if was is None else 'removed'}")
            elif (was["quantity"], Decimal(was["amount"]), was["evidence"]) != (
                now["quantity"],
                Decimal(now["amount"]),
                now["evidence"],
            ):
                changes = [
                    f"{name} {was[name]} -> {now[name]}"
                    for name in ("quantity", "amount", "evidence")
                    if (Decimal(was[name]) != Decimal(now[name]) if name == "amount" else was[name] != now[name])
                ]
                found.append(f"{label}: {', '.join(changes)}")
    return found
