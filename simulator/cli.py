"""The ``mgwsim`` command line.

Every command validates its whole input before it prints anything: bad input gets one line on
standard error naming the file and line (or key) and the reason, exit status 2, and nothing
half-written; a damaged store counts as bad input. Every other failure is one line too, with its
own status (:data:`EXIT_STATUSES`): an unavailable resource (a broker, Ray, a store another process
holds) 3, an I/O failure (a full disk, a file that cannot be written or read) 4, and a bug in
mgwsim 70 — with the traceback under ``-v``. Stopped by Ctrl-C (SIGINT) or SIGTERM, a command
unwinds as on any failure — an unfinished run folder or file is removed, ``--out`` keeps what it held —
says ``mgwsim: interrupted`` or ``mgwsim: terminated`` and exits 130 or 143 (128 + the signal).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import signal
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, TypeVar

import typer
from rich.console import Console

from metering.atomic import STOP_SIGNALS
from metering.eventlog import EventLogError
from metering.pipeline import Inputs, load_inputs
from metering.rating import Rating
from metering.tariff import TariffError, load_tariff
from metering.timeutil import TimeFormatError, format_month, parse_month_range
from simulator.capture import SIM_MAP_COLUMNS
from simulator.shipped import shipped_names
from simulator.streamed_run import SHARD_SIMS, shards_of

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from simulator.results import RunResult
    from simulator.scenario import Scenario

BAD_INPUT: Final = 2
"""Exit status: bad input (a file, line or key named), a bad option, or a damaged store."""
UNAVAILABLE: Final = 3
"""Exit status: a resource that cannot be reached (an MQTT broker, a Ray cluster, a store another process holds)."""
IO_FAILURE: Final = 4
"""Exit status: reading or writing failed (full disk, no permission, an I/O error)."""
BUG: Final = 70
"""Exit status: a bug in mgwsim (EX_SOFTWARE); the traceback is printed with ``-v``."""
EXIT_STATUSES: Final = (
    "Exit status: 0 done; 1 an \\[expect] check or a golden comparison failed; 2 bad input (the file, "
    "line or key is named, or a damaged store); 3 a resource is unavailable (MQTT broker, Ray, a store "
    "another process holds); 4 an I/O failure (full disk, permissions, an I/O error); 70 a bug in mgwsim "
    "(run with -v for the traceback); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): what was being "
    "written is removed, an earlier run folder kept."
)
ISSUES_URL: Final = "https://github.com/mgwsim/mgwsim/issues"
"""Where a bug is reported."""

app = typer.Typer(
    name="mgwsim",
    help="Mobile gateway and SIM network simulator with an embedded metering core.\n\n" + EXIT_STATUSES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: figures measured side by side in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
import_app = typer.Typer(help="Read what another system exports into an mgwsim event log.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@app.callback()
def _options(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log what is done on standard error: -v the steps and scheduled operations, -vv also each "
            "SIM's PIN and PUK flow. PIN, PUK and PASSCODE are never logged.",
        ),
    ] = 0,
) -> None:
    """Mobile gateway and SIM network simulator with an embedded metering core."""
    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        import logging

        # our packages at the level asked for; other libraries' chatter only when it is a warning
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        for package in ("simulator", "devices", "gateway", "metering"):
            logging.getLogger(package).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


_VERBOSE = 0
"""The ``-v`` count of this invocation (a bug's traceback is shown with ``-v``)."""

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages to people: never wrapped, so a path or a count stays on one line that tools can grep."""


class OutputFormat(StrEnum):
    """Output formats of ``bill``."""

    json = "json"
    table = "table"


class LogFormat(StrEnum):
    """The format of a run folder's event log."""

    auto = "auto"
    jsonl = "jsonl"
    parquet = "parquet"


class EngineName(StrEnum):
    """Which simulation engine runs a scenario."""

    fast = "fast"
    reference = "reference"
    ray = "ray"


class Rater(StrEnum):
    """Which rater computes the invoices."""

    fast = "fast"
    reference = "reference"


def write_stdout(text: str) -> None:
    """Write to standard output; a failure names it (``standard output: No space left on device``).

    Raises:
        OSError: Naming standard output.
    """
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), "standard output") from exc


def fail(message: str, status: int = 2) -> NoReturn:
    """Print one error line to standard error and exit."""
    _error_line(message)
    raise typer.Exit(status)


EventsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Event logs (.jsonl, .jsonl.gz, .parquet), read in the order given.", show_default=False, readable=False
    ),
]
MonthOpt = Annotated[
    str, typer.Option("--month", "-m", help="Billing month YYYY-MM (JST), or a range YYYY-MM..YYYY-MM.")
]
TariffOpt = Annotated[
    Path | None,
    typer.Option("--tariff", "-t", help="Tariff TOML file. Default: the shipped illustrative tariff.", readable=False),
]
DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="DuckDB event store (see `mgwsim ingest`), read instead of or besides files.", readable=False
    ),
]


def _load(events: list[Path] | None, db: Path | None, tariff_path: Path | None, month: str) -> Inputs:
    try:
        months = parse_month_range(month)
    except TimeFormatError as exc:
        fail(f"--month: {exc}")
    if not events and db is None:
        fail("give at least one event log or --db FILE")
    try:
        tariff = load_tariff(tariff_path)
        return load_inputs(list(events or []), db, tariff, months)
    except (EventLogError, TariffError) as exc:
        fail(str(exc))


def _rate(inputs: Inputs, rater: str) -> Rating:
    """Rate, turning bad input found while reading into the one-line error."""
    from metering.store import StoreError

    try:
        return inputs.rate(rater)
    except EventLogError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), exc.status)


@app.command(epilog=EXIT_STATUSES)
def bill(
    events: EventsArg = None,
    month: MonthOpt = ...,  # type: ignore[assignment]
    tariff: TariffOpt = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="json: the mgwsim.invoice/1 document; table: for people."),
    ] = OutputFormat.json,
    db: DbOpt = None,
    rater: Annotated[
        Rater, typer.Option(help="fast (columnar) or reference (per event); both give identical invoices.")
    ] = Rater.fast,
) -> None:
    """Print the invoices of a billing month (or range) for an event log.

    Example: mgwsim bill scenarios/disputes/reregistration.jsonl --month 2026-01 --format table
    """
    inputs = _load(events, db, tariff, month)
    with stderr.status(f"rating {month} …"):
        rating = _rate(inputs, rater.value)
        documents = [rating.documents[m] for m in sorted(rating.documents)]
    if rating.errors:
        first = rating.errors[0]
        more = f" ({len(rating.errors) - 1} more)" if len(rating.errors) > 1 else ""
        fail(f"{first}{more}")
    _note_months_without_events(rating, inputs.months)
    if output_format is OutputFormat.json:
        if len(documents) == 1:
            text = documents[0].dumps()
        else:
            text = json.dumps([document.to_json() for document in documents], ensure_ascii=False, indent=1)
        write_stdout(text + "\n")
        return
    from metering.render import invoice_tables

    console = Console()
    for renderable in invoice_tables(documents, inputs.tariff):
        console.print(renderable)


@app.command(epilog=EXIT_STATUSES)
def explain(
    events: EventsArg = None,
    month: MonthOpt = ...,  # type: ignore[assignment]
    subject: Annotated[
        str | None,
        typer.Option(help="Only this subject: ICCID, gateway id, option:target, SMS kind, pool:carrier or points."),
    ] = None,
    tariff: TariffOpt = None,
    db: DbOpt = None,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Write the dispute report here as one self-contained HTML page (no network): per account the "
            "invoice with every line's rule, article and evidence, the fees not charged and why, and per SIM a "
            "timeline of the month and the 12 before it.",
            readable=False,
        ),
    ] = None,
) -> None:
    """Explain every charge, and every fee not charged, with rule, article and evidence events.

    Example: mgwsim explain scenarios/disputes/reregistration.jsonl --month 2026-01 --html dispute.html
    """
    from metering.explain import explain as explain_rating

    _prepare_outputs(None, [] if html is None else [html], [*(events or []), tariff, db])
    inputs = _load(events, db, tariff, month)
    asked = list(inputs.months)
    if html is not None:  # the timelines show the 12 months before, with their charges
        inputs.months = list(range(min(asked) - 12, max(asked) + 1))
    rating = _rate(inputs, "reference")
    if rating.errors:
        fail(f"{rating.errors[0]}" + (f" ({len(rating.errors) - 1} more)" if len(rating.errors) > 1 else ""))
    _note_months_without_events(rating, asked)
    if html is None:
        write_stdout(explain_rating(rating, inputs.tariff, inputs.events_by_id(), subject))
        return
    from metering.atomic import AtomicWriter
    from metering.explain import unmatched_subject
    from metering.html_report import dispute_page

    unmatched = None if subject is None else unmatched_subject(rating, asked, subject)
    if unmatched is not None:  # the page says so too, but the page is not on the screen
        note(unmatched[0].lower() + unmatched[1:])
    page = dispute_page(rating, inputs.tariff, inputs.events(), asked, subject, [str(path) for path in events or []])
    with AtomicWriter(html) as temporary:
        temporary.write_text(page, encoding="utf-8")
    stderr.print(f"wrote {html}", markup=False)


@app.command(epilog=EXIT_STATUSES)
def ingest(
    events: Annotated[list[Path], typer.Argument(help="Event logs to append to the store.", readable=False)],
    db: Annotated[Path, typer.Option("--db", help="DuckDB file; created when missing.", readable=False)],
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            help="Events per transaction for a log read row by row (a Parquet log with diagnostic events).",
        ),
    ] = 500_000,
) -> None:
    """Append event logs to a DuckDB store; events already stored are skipped (idempotent).

    Each log is checked whole and appended in one transaction (a Parquet log with diagnostic
    events: in transactions of --batch events). If the ingest is killed, the store holds whole
    logs (whole batches) only, and running the same command again completes it. A store this
    command creates is removed again when it fails or is stopped in the first log.
    """
    import duckdb

    from metering.store import EventStore, StoreError, store_failure

    created = not db.exists()
    ingested = 0  # logs appended whole
    try:
        try:
            with EventStore(db) as store:
                for path in events:
                    added, skipped = store.ingest_file(path, batch)
                    ingested += 1
                    stderr.print(f"{path}: {added} events added, {skipped} already stored", markup=False)
        except BaseException:  # stopped in the first log of a new store: no store is left behind
            if created and ingested == 0:
                for leftover in (db, Path(f"{db}.wal")):
                    leftover.unlink(missing_ok=True)
            raise
    except EventLogError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), exc.status)
    except duckdb.Error as exc:
        failure = store_failure(str(db), exc)
        fail(str(failure), failure.status)


ScenarioArg = Annotated[
    Path,
    typer.Argument(
        help="Scenario file (TOML), e.g. scenarios/quickstart.toml, or the name of a shipped scenario "
        f"({', '.join(shipped_names())}), which runs the copy installed with mgwsim when no such file is at hand.",
        readable=False,
    ),
]
MqttUsernameOpt = Annotated[str | None, typer.Option(help="MQTT user name.")]
MqttCaOpt = Annotated[
    Path | None, typer.Option(help="CA certificates for the broker's TLS certificate.", readable=False)
]
MqttRetriesOpt = Annotated[
    int, typer.Option(min=1, help="Connection attempts in a row before giving up on the broker.")
]
MqttBackoffOpt = Annotated[
    float, typer.Option(min=0.0, help="Seconds to wait after the first failed attempt; doubles after each, up to 30 s.")
]


def _scenario(path: Path) -> Scenario:
    return _scenario_file(path)[1]


def _scenario_file(path: Path) -> tuple[Path, Scenario]:
    """The scenario file ``path`` names (a shipped scenario's installed copy for a bare name), loaded."""
    from simulator.scenario import ScenarioError, load_scenario
    from simulator.shipped import names_shipped_scenario, shipped_path

    path = shipped_path(path) or path
    try:
        return path, load_scenario(path)
    except ScenarioError as exc:
        if names_shipped_scenario(path):
            fail(f"{exc} (and no shipped scenario is called so; shipped: {', '.join(shipped_names())})")
        fail(str(exc))


def _scaled(scenario: Scenario, factor: float) -> Scenario:
    from simulator.scenario import ScenarioError, scale_scenario

    try:
        scaled = scale_scenario(scenario, factor)
    except ScenarioError as exc:
        fail(str(exc))
    dropped = f"; its {len(scenario.expect.totals)} expected totals are not checked" if scenario.expect.totals else ""
    note(f"{scenario.name} scaled by {factor:g}: {scaled.sim_count:,} SIMs instead of {scenario.sim_count:,}{dropped}")
    return scaled


def _simulate(scenario: Scenario, rater: str, engine: str = "fast", ray_address: str | None = None) -> RunResult:
    from simulator.runner import run_scenario

    return _with_progress(scenario, lambda progress: run_scenario(scenario, progress, rater, engine, ray_address))


Result = TypeVar("Result")


def _with_progress(scenario: Scenario, work: Callable[[Callable[[float], None]], Result]) -> Result:
    """Run ``work(progress)`` under a progress bar (on a terminal); a failed run is one line, exit 3."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.ray_engine import RayUnavailable
    from simulator.runner import MeteringFailure

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    # a progress bar only on a terminal: in a log it would leave a stray empty line
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task(f"simulating {scenario.name} ({scenario.sim_count:,} SIMs)", total=1.0)
        try:
            return work(lambda done: progress.update(task, completed=done))
        except MeteringFailure as exc:
            fail(str(exc), status=3)
        except RayUnavailable as exc:
            fail(str(exc), status=3)


@app.command(epilog=EXIT_STATUSES)
def run(
    context: typer.Context,
    scenario_path: ScenarioArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the event log (events.jsonl; events.parquet above 1,000,000 events, see --log-format), "
            "invoices/YYYY-MM.json, report.png, summary.json here.",
            readable=False,
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(help="The format of --out's event log: auto (Parquet above 1,000,000 events), jsonl, parquet."),
    ] = LogFormat.auto,
    events: Annotated[
        Path | None,
        typer.Option("--events", help="Also write the event log here (.jsonl, .jsonl.gz or .parquet).", readable=False),
    ] = None,
    rater: Annotated[Rater, typer.Option(help="Rater of the online metering.")] = Rater.fast,
    engine: Annotated[
        EngineName,
        typer.Option(
            help="fast: sessions in bulk; reference: one SimPy process per device; ray: the fast engine, one Ray "
            "task per account (per shard in a run in shards). Same log and invoices."
        ),
    ] = EngineName.fast,
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --engine ray: the cluster (HOST:PORT or ray://…); default: start a local Ray."),
    ] = None,
    pcap: Annotated[
        Path | None,
        typer.Option(
            help="Write a GTP capture of the gateway's core side (GTPv2-C sessions, GTP-U traffic) here, and "
            'the IMSI-to-ICCID map beside it (FILE.sims.csv). Needs traffic_records = "session".',
            readable=False,
        ),
    ] = None,
    pcap_sims: Annotated[
        int | None, typer.Option(min=1, help="Capture the sessions of the first N SIMs (by ICCID) only.")
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            help="Publish every platform message (QoS 1, Mono Platform object JSON) to this broker: "
            "mqtt://HOST[:PORT]\\[/PREFIX] or mqtts://… (TLS); the password comes from $MGWSIM_MQTT_PASSWORD."
        ),
    ] = None,
    mqtt_username: MqttUsernameOpt = None,
    mqtt_ca: MqttCaOpt = None,
    mqtt_retries: MqttRetriesOpt = 5,
    mqtt_backoff: MqttBackoffOpt = 0.25,
    scale: Annotated[
        float | None,
        typer.Option(
            help="Scale every fleet (and fleet operation) by this factor, keeping at least one SIM each, "
            "e.g. 0.02 for a quick run of a load scenario. The [expect] floors and PIN outcomes scale "
            "with it; invoice totals are checked at full size only.",
        ),
    ] = None,
    shard_sims: Annotated[
        int,
        typer.Option(
            min=1,
            help="A fleet of more SIMs runs in shards, each shard's events and invoices written to --out as it "
            "completes (memory bounded by a shard; the same invoices): shards of whole accounts of at most "
            "this many SIMs, one after the other, or with --engine ray the same shards as Ray tasks (the same "
            "files, byte for byte). On a cluster, lower it to give every CPU a few shards. Not with --engine "
            "reference, which runs the fleet whole.",
        ),
    ] = SHARD_SIMS,
) -> None:
    """Simulate a scenario, meter it in-process, print a summary; exit 1 if a check of its expect table fails.

    Example: mgwsim run scenarios/quickstart.toml --out out/quickstart
    """
    from metering.eventlog import log_format as event_log_format
    from simulator.runner import check_expectations, write_outputs
    from simulator.summary import summary_tables

    if events is not None:
        try:
            event_log_format(events)
        except EventLogError as exc:
            fail(f"--events: {exc}")
    if engine is not EngineName.ray:
        _refuse_given(context, ["ray_address"], "only with --engine ray")
    if pcap is None:
        _refuse_given(context, ["pcap_sims"], "only with --pcap")
    if out is None:
        _refuse_given(context, ["log_format"], "only with --out (--events takes its format from its file name)")
    if engine is EngineName.reference:
        _refuse_given(context, ["shard_sims"], "not with --engine reference, which runs the fleet whole")
    if mqtt is None:
        _refuse_given(context, ["mqtt_username", "mqtt_ca", "mqtt_retries", "mqtt_backoff"], "only with --mqtt")
    for option, path in (("--events", events), ("--pcap", pcap)):
        if out is not None and path is not None and path.resolve().is_relative_to(out.resolve()):
            fail(f"{option} {path}: inside --out {out}, which each run replaces whole; name a file outside it")
    broker = _broker(mqtt, mqtt_username, mqtt_ca, mqtt_retries, mqtt_backoff) if mqtt is not None else None
    scenario = _scenario(scenario_path)
    if scale is not None and scale != 1:
        scenario = _scaled(scenario, scale)
    if pcap is not None and scenario.traffic_records != "session":
        fail(f'--pcap: {scenario_path} writes daily traffic records; a capture needs traffic_records = "session"')
    sim_map = pcap.with_name(pcap.name + ".sims.csv") if pcap is not None else None
    _prepare_outputs(out, [path for path in (events, pcap, sim_map) if path is not None], [scenario_path, mqtt_ca])
    shards = len(shards_of(scenario, shard_sims)) if engine is not EngineName.reference else 1
    if shards > 1:
        given = [name for name, value in (("--events", events), ("--pcap", pcap), ("--mqtt", mqtt)) if value]
        if given:
            fail(
                f"{', '.join(given)}: not with a run in {shards} shards ({scenario.sim_count:,} SIMs, "
                f"--shard-sims {shard_sims:,}); raise --shard-sims to run the fleet whole"
            )
        result, written = _run_streamed(scenario, out, shard_sims, log_format.value, rater.value, engine, ray_address)
    else:
        result = _simulate(scenario, rater.value, engine.value, ray_address)
        with contextlib.ExitStack() as files:  # every output written whole before any is swapped or renamed in
            captured, said = _write_capture(result, pcap, pcap_sims, files) if pcap is not None else ([], "")
            written = write_outputs(result, out, events, log_format.value, files) + captured
        if said:
            stderr.print(said, markup=False)
    if broker is not None:
        _publish(result, broker)
    console = Console()
    for table in summary_tables(result):
        console.print(table)
    for path in written:
        stderr.print(f"wrote {path}", markup=False)
    failures = check_expectations(result)
    for failure in failures:
        stderr.print(f"mgwsim: expectation failed: {failure}", markup=False)
    if failures:
        raise typer.Exit(1)


def _run_streamed(
    scenario: Scenario,
    out: Path | None,
    shard_sims: int,
    log_format: str,
    rater: str,
    engine: EngineName,
    ray_address: str | None,
) -> tuple[RunResult, list[Path]]:
    """A run in shards, straight into ``out`` (without one, nothing is written: the shards are only joined)."""
    from simulator.runner import run_streamed

    return _with_progress(
        scenario,
        lambda progress: run_streamed(
            scenario, out, shard_sims, log_format, rater, progress, engine.value, ray_address
        ),
    )


def _refuse_given(context: typer.Context, names: Sequence[str], reason: str) -> None:
    """Exit 2 if the user gave one of the options ``names`` (parameter names), which would do nothing here.

    Only what was typed counts: an option left at its default is not refused.
    """
    for name in names:
        source = context.get_parameter_source(name)  # typer's own copy of click's ParameterSource: by name
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            fail(f"--{name.replace('_', '-')}: {reason}")


def note(message: str) -> None:
    """One line to people on standard error (not an error)."""
    stderr.print(f"mgwsim: note: {message}", markup=False)


def _note_months_without_events(rating: Rating, months: Sequence[int]) -> None:
    """Say so when no asked month has an invoice: no event falls in them (a mistyped month?).

    An account with an event in a month has an invoice for it, so documents without invoices
    mean months outside the events; the note gives the months the events do cover.
    """
    if any(rating.documents[month].invoices for month in months):
        return
    if rating.event_months is None:
        note(f"no invoices for {_months_text(months)}: the logs hold no events")
        return
    note(
        f"no invoices for {_months_text(months)}: no event falls in {'it' if len(months) == 1 else 'them'} and "
        "nothing is charged; "
        f"the events lie in {_months_text(rating.event_months)} (JST)"
    )


def _months_text(months: Sequence[int]) -> str:
    """``2026-01``, or ``2026-01..2026-03`` for a first and a last month."""
    first, last = format_month(months[0]), format_month(months[-1])
    return first if first == last else f"{first}..{last}"


def _prepare_outputs(folder: Path | None, files: list[Path], inputs: Sequence[Path | None] = ()) -> None:
    """Before a long run: refuse an output folder mgwsim did not write, and clear what killed runs left.

    An output file that is one of the command's ``inputs`` (a log, a scenario, a side of a diff) is
    refused: writing it would replace what the user gave.
    """
    from metering.atomic import InUseError, check_writable, partial_files
    from simulator.run_folder import OutputFolderError, prepare

    try:
        if folder is not None:
            for message in prepare(folder):
                note(message)
        for index, path in enumerate(files):
            if path.is_dir():
                fail(f"{path}: is a folder; give a file name")
            if any(path.resolve() == other.resolve() for other in files[:index]):
                fail(f"{path}: named for two outputs of this command; give each its own file")
            if any(given is not None and _same_file(path, given) for given in inputs):
                fail(f"{path}: is also an input of this command, which would be replaced; name another file")
            _remove_partial_files(path, partial_files(path))
            check_writable(path)  # a read-only disk is found now, not after the work
    except OutputFolderError as exc:
        fail(str(exc))
    except InUseError as exc:
        fail(str(exc), status=UNAVAILABLE)


def _same_file(one: Path, other: Path) -> bool:
    """Whether two paths name one existing file (through links, ``..`` or another spelling)."""
    try:
        return one.is_file() and other.is_file() and os.path.samefile(one, other)
    except OSError:
        return False


def _remove_partial_files(path: Path, stale: list[Path]) -> None:
    """Remove what an interrupted write of ``path`` left beside it, with a note.

    All of it: a stop that comes meanwhile is handled once the last is gone.
    """
    from metering.atomic import stop_signals_deferred

    with stop_signals_deferred():
        for leftover in stale:
            leftover.unlink(missing_ok=True)
    if stale:
        note(f"an earlier write of {path} was interrupted; {len(stale)} unfinished file(s) beside it removed")


def _write_capture(
    result: RunResult, path: Path, sims: int | None, files: contextlib.ExitStack
) -> tuple[list[Path], str]:
    """``run --pcap``: the capture and its SIM map, written whole into the set ``files`` (renamed in as it closes).

    Returns both paths, and what to say of the capture once it is in place.
    """
    from gateway.pcap import write_capture_to
    from metering.atomic import AtomicWriter
    from simulator.capture import CaptureInputError, capture_sessions, write_sim_map_to

    try:
        sessions = capture_sessions(result.events, sims)
    except CaptureInputError as exc:
        fail(f"--pcap: {exc}")
    chosen = {session.imsi for session in sessions}
    sim_map = path.with_name(path.name + ".sims.csv")
    with files.enter_context(AtomicWriter(path)).open("wb") as stream:
        packets = write_capture_to(sessions, stream)
    with files.enter_context(AtomicWriter(sim_map)).open("w", encoding="utf-8", newline="") as text:
        write_sim_map_to(result.events, text)
    return [path, sim_map], f"{path}: {packets:,} packets of {len(sessions):,} sessions of {len(chosen):,} SIMs"


def _broker(url: str, username: str | None, ca_file: Path | None, attempts: int, backoff_s: float) -> Any:
    from gateway.mqtt import Broker, MqttAdapterError, check_ca_file

    if ca_file is not None:
        try:
            check_ca_file(ca_file)
        except MqttAdapterError as exc:
            fail(f"--mqtt-ca: {exc}")
    try:
        return Broker.from_url(url, username, ca_file, attempts, backoff_s)
    except MqttAdapterError as exc:
        fail(f"--mqtt: {exc}")


def _report_retry(broker: Any) -> Callable[[int, float, str], None]:
    """Say on standard error that a connection attempt failed and when the next one is made."""

    def report(failures: int, wait_s: float, reason: str) -> None:
        stderr.print(f"{reason}; attempt {failures + 1} of {broker.attempts} in {wait_s:g} s", markup=False)

    return report


def _publish(result: RunResult, broker: Any) -> None:
    import asyncio

    from gateway.mqtt import MqttAdapterError, platform_messages, publish_messages

    messages = list(platform_messages(result.events))
    try:
        asyncio.run(publish_messages(broker, messages, on_retry=_report_retry(broker)))
    except MqttAdapterError as exc:
        fail(f"--mqtt: {exc}", status=3)
    stderr.print(f"{broker.describe()}: {len(messages):,} platform messages published (QoS 1)", markup=False)


@app.command(epilog=EXIT_STATUSES)
def scenarios() -> None:
    """List the scenarios shipped with mgwsim: each runs by its name from any folder (mgwsim run NAME).

    Example: mgwsim scenarios; mgwsim run quickstart --out out/quickstart
    """
    from rich.table import Table

    from simulator.shipped import shipped_summary

    table = Table(title="shipped scenarios (mgwsim run NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it shows")
    for name in shipped_names():
        table.add_row(name, shipped_summary(name))
    Console().print(table)


@import_app.command("sacloud", epilog=EXIT_STATUSES)
def import_sacloud(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Sakura Cloud API responses saved as JSON (usacloud … -o json): the SIM list, SIM session logs, "
            "SIM traffic metrics, mobile gateways. FILE@TIME gives the time FILE was fetched.",
            show_default=False,
        ),
    ],
    account: Annotated[str, typer.Option(help="The account (project) the events belong to.")],
    out: Annotated[Path, typer.Option(help="Write the events here (.jsonl, .jsonl.gz or .parquet).", readable=False)],
    at: Annotated[
        str | None,
        typer.Option(
            help="When the responses were fetched (RFC 3339 with an offset), for files without @TIME; "
            "default: each file's modification time (said on stderr)."
        ),
    ] = None,
) -> None:
    """Read the service's own exports into an event log that mgwsim bill reads.

    Registrations come from registered_date. A SIM list's traffic_bytes_of_current_month is the
    volume of the JST month of its fetch time, up to that time: the latest snapshot of a month is
    that month's traffic (exact at the month's end). For a month without a snapshot, a SIM's
    traffic metrics give an estimate (bits per second x interval / 8), marked in the event id and so
    in every charge's evidence. Session logs become session diagnostics; mobile gateways their
    creation and internet setting. Remark.PassCode is never read into anything.

    Example: mgwsim import sacloud sims.json@2026-01-31T23:59:59+09:00 --account acct-1 --out events.jsonl
    """
    from gateway.sacloud import SacloudImportError, fetched_files, import_documents
    from metering.eventlog import log_format as event_log_format
    from metering.eventlog import write_event_log

    try:
        event_log_format(out)
    except EventLogError as exc:
        fail(f"--out: {exc}")
    _prepare_outputs(None, [out])
    try:
        fetched, notes = fetched_files(files, at)
        for text in notes:
            note(text)
        events = import_documents(fetched, account)
    except SacloudImportError as exc:
        fail(str(exc))
    written = write_event_log(events, out)
    stderr.print(f"wrote {written:,} events to {out}", markup=False)


@app.command("meter-mqtt", epilog=EXIT_STATUSES)
def meter_mqtt(
    broker_url: Annotated[
        str, typer.Option("--broker", help="mqtt://HOST[:PORT] or mqtts://… (password: $MGWSIM_MQTT_PASSWORD).")
    ],
    topic: Annotated[str, typer.Option(help="Topic filter, e.g. 'mono/#'.")],
    out: Annotated[
        Path, typer.Option(help="Write the mono.message events here (.jsonl, .jsonl.gz, .parquet).", readable=False)
    ],
    expect: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stop after this many distinct messages; exit 1 if --idle seconds pass without one before "
            "(what arrived is written all the same).",
        ),
    ] = None,
    idle: Annotated[float, typer.Option(min=0.5, help="Stop after this many seconds without a message.")] = 10.0,
    client_id: Annotated[
        str, typer.Option(help="Client identifier of the persistent session (messages wait for it).")
    ] = "mgwsim-meter",
    mqtt_username: MqttUsernameOpt = None,
    mqtt_ca: MqttCaOpt = None,
    mqtt_retries: MqttRetriesOpt = 10,
    mqtt_backoff: MqttBackoffOpt = 0.25,
) -> None:
    """Subscribe to platform messages (QoS 1, persistent session) and write them as mono.message events.

    Each distinct (account, device, message id) becomes one event; redeliveries are dropped;
    broker restarts are ridden out. A message is acknowledged to the broker only once it is in the
    journal on disk (OUT.journal.jsonl), so a meter killed at any moment loses nothing: run it
    again with the same --client-id and it resumes. Payloads that are not platform messages go
    to OUT.dead-letters.jsonl with the reason. SIGTERM or Ctrl-C ends it cleanly: the messages
    taken so far are journaled and acknowledged, then the journal is written to OUT.
    Example: mgwsim meter-mqtt --broker mqtt://localhost:1883 --topic 'mono/#' --out mono.jsonl --expect 1000
    """
    import asyncio
    import signal

    from gateway.journal import Journal, JournalError, dead_letter_path
    from gateway.mqtt import MqttAdapterError, subscribe_messages
    from metering.eventlog import log_format, write_event_log

    try:
        log_format(out)
    except EventLogError as exc:
        fail(f"--out: {exc}")
    _prepare_outputs(None, [out], [mqtt_ca])
    broker = _broker(broker_url, mqtt_username, mqtt_ca, mqtt_retries, mqtt_backoff)
    try:
        journal = Journal.open(out)
    except JournalError as exc:
        fail(str(exc))
    if journal.resumed:
        note(f"resuming the journal of an earlier run: {journal.resumed:,} messages already metered")

    def ready() -> None:
        stderr.print(f"{broker.describe()}: subscribed to {topic}", markup=False)

    async def meter() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        got = await subscribe_messages(
            broker, topic, client_id, journal, expect, idle, ready, _report_retry(broker), stop
        )
        return got, stop.is_set()

    try:
        got, stopped = asyncio.run(meter())
    except MqttAdapterError as exc:
        journal.close()
        fail(f"{exc} (the {len(journal.events):,} messages journaled are kept: rerun to resume)", status=3)
    journal.close()
    write_event_log(sorted(got.events, key=lambda event: (event.ts, event.id)), out)
    journal.finish()
    if stopped:
        note("stopped by a signal: the messages taken so far are written; rerun to go on")
    dead = f", {got.rejected:,} refused (see {dead_letter_path(out)})" if got.rejected else ""
    stderr.print(
        f"{out}: {len(got.events):,} mono.message events ({got.duplicates:,} redeliveries dropped{dead}, "
        f"{got.reconnections:,} reconnections)",
        markup=False,
    )
    if expect is not None and not stopped and len(got.seen) < expect:
        stderr.print(
            f"mgwsim: expectation failed: expected {expect:,} distinct messages, got {len(got.seen):,} "
            f"(none arrived for {idle:g} s)",
            markup=False,
        )
        raise typer.Exit(1)


@app.command("meter-pcap", epilog=EXIT_STATUSES)
def meter_pcap(
    capture: Annotated[
        Path,
        typer.Argument(
            help="A pcap or pcapng capture (Ethernet with VLAN/QinQ tags, raw IPv4/IPv6, Linux cooked SLL/SLL2, "
            "loopback) of GTPv2-C (S11, S5/S8), GTPv1-C (Gn/Gp) and GTP-U.",
            readable=False,
        ),
    ],
    account: Annotated[str, typer.Option(help="The account the SIMs belong to (the events' account).")],
    sims: Annotated[
        Path,
        typer.Option(
            help=f"The SIM map, a CSV (mgwsim run --pcap writes one). Columns: {SIM_MAP_COLUMNS}.", readable=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the events here (.jsonl, .jsonl.gz, .parquet); default: stdout.", readable=False),
    ] = None,
) -> None:
    """Meter a GTP capture: sessions from GTP-C, T-PDU bytes per session and JST day from the G-PDUs.

    Tunnels are keyed by (node address, TEID); a bearer seen on several legs is metered once, on
    S5/S8 or Gn where it has traffic, else on S1-U. Volume is the T-PDU: the user's whole IP packet.
    Malformed or truncated packets, and G-PDUs of tunnels no control message names, are counted by
    reason and reported (standard error), never fatal.
    Example: mgwsim meter-pcap core.pcap --account acct-1 --sims core.pcap.sims.csv --out events.jsonl
    """
    import re

    from gateway.pcap_reader import CaptureReadError, read_capture
    from metering.eventlog import event_line, log_format, write_event_log
    from metering.events import NAME_PATTERN
    from simulator.capture import CaptureInputError, events_from_capture, read_sim_map

    if not re.fullmatch(NAME_PATTERN, account):
        fail(f"--account: {account!r} is not a valid account name")
    if out is not None:
        try:
            log_format(out)
        except EventLogError as exc:
            fail(f"--out: {exc}")
        _prepare_outputs(None, [out], [capture, sims])
    try:
        sim_map = read_sim_map(sims)
        contents = read_capture(capture)
    except (CaptureReadError, CaptureInputError) as exc:
        fail(str(exc))
    try:
        metered = events_from_capture(contents, account, sim_map)
    except CaptureInputError as exc:
        fail(f"{capture}: {exc} {sims}")
    if out is None:
        for event in metered.events:
            write_stdout(event_line(event) + "\n")
    else:
        write_event_log(metered.events, out)
    stderr.print(
        f"{capture}: {metered.packets:,} packets, {metered.sessions:,} sessions, "
        f"{sum(1 for event in metered.events if event.type == 'sim.traffic'):,} traffic records",
        markup=False,
    )
    for reason, count in sorted(metered.skipped.items()):
        stderr.print(f"{capture}: skipped {count:,} packet(s): {reason}", markup=False)
    if metered.unattributed_packets:
        stderr.print(
            f"{capture}: unattributed: {metered.unattributed_bytes:,} T-PDU bytes in {metered.unattributed_packets:,} "
            f"G-PDU(s) on {metered.unattributed_tunnels:,} tunnel(s) or PFCP session(s) without a subscriber",
            markup=False,
        )
    if not sim_map.has_registrations and metered.sessions:
        note(
            f"{sims} has no registered_at column: the output has no sim.registered events, so bill it with a log "
            "that registers the SIMs, or add registered_at (RFC 3339) to the SIM map"
        )


@app.command(epilog=EXIT_STATUSES)
def check(
    scenario_path: ScenarioArg,
    golden: Annotated[
        Path, typer.Option(help="Directory of golden invoices (one YYYY-MM.json per month).", readable=False)
    ],
    update: Annotated[bool, typer.Option("--update", help="Rewrite the golden files from this run.")] = False,
    engine: Annotated[EngineName, typer.Option(help="Simulation engine.")] = EngineName.fast,
    junit: Annotated[
        Path | None,
        typer.Option(
            help="Also write JUnit XML here: one test case per account and month, as mgwsim diff.", readable=False
        ),
    ] = None,
) -> None:
    """Rerun a scenario and compare its invoices with golden files; exit 1 on any drift."""
    from simulator.runner import GoldenError, compare_golden, golden_folder_problem

    if junit is not None and update:
        fail("--junit: not with --update, which writes the golden files instead of comparing with them")
    goldens = sorted(golden.glob("*.json")) if golden.is_dir() else []
    _prepare_outputs(None, [] if junit is None else [junit], [scenario_path, *goldens])
    problem = golden_folder_problem(golden, update)
    if problem is not None:
        fail(f"--golden: {problem}")
    if update:
        _writable_folder(golden)
    scenario = _scenario(scenario_path)
    result = _simulate(scenario, "fast", engine.value)
    if junit is not None:
        _check_junit(golden, result.documents, junit)
    try:
        differences = compare_golden(result, golden, update)
    except GoldenError as exc:
        fail(f"--golden: {exc}")
    if update:
        stderr.print(f"{golden}: {len(result.documents)} golden invoice file(s) written", markup=False)
        return
    for difference in differences:
        write_stdout(f"drift: {difference}\n")
    if differences:
        stderr.print(f"mgwsim: {len(differences)} difference(s) from {golden}", markup=False)
        raise typer.Exit(1)
    stderr.print(f"{golden}: {len(result.documents)} month(s) match", markup=False)


def _check_junit(golden: Path, documents: Any, junit: Path) -> None:
    """``check --junit``: the golden invoices beside this run's, one test case per account and month."""
    from metering.atomic import AtomicWriter
    from metering.compare import CompareInputError, charges_of, compare, read_charges

    try:
        expected = read_charges(golden)
    except CompareInputError as exc:
        fail(f"--golden: {exc}")
    found = compare(expected, charges_of((document.to_json() for document in documents), "this run"))
    with AtomicWriter(junit) as temporary:
        temporary.write_text(found.junit(), encoding="utf-8")


class DiffFormat(StrEnum):
    """How ``mgwsim diff`` prints what it found."""

    table = "table"
    json = "json"


@app.command(epilog=EXIT_STATUSES)
def diff(
    left: Annotated[
        Path, typer.Argument(help="Invoice document (.json), a folder of them, or a charges CSV.", readable=False)
    ],
    right: Annotated[Path, typer.Argument(help="The same kinds as LEFT.", readable=False)],
    month: Annotated[
        str | None, typer.Option("--month", "-m", help="Only this month (YYYY-MM) or range (YYYY-MM..YYYY-MM).")
    ] = None,
    output: Annotated[DiffFormat, typer.Option("--format", help="table (for people) or json.")] = DiffFormat.table,
    junit: Annotated[
        Path | None,
        typer.Option(help="Also write JUnit XML here: one test case per account and month.", readable=False),
    ] = None,
    explain_logs: Annotated[
        list[Path] | None,
        typer.Option(
            "--explain",
            help="Event log(s) mgwsim's side was billed from: each differing line then carries mgwsim's "
            "explanation of it (rule, article, reason, evidence events with file:line). Repeat for several logs.",
            readable=False,
        ),
    ] = None,
    tariff: TariffOpt = None,
) -> None:
    """Compare two sets of charges line by line; exit 0 when equal, 1 when they differ.

    Each side is an mgwsim invoice document, a folder of them (e.g. a run's invoices/), or a
    charges CSV from another billing system: header month,account,item,subject,quantity,amount
    (any order; other columns are ignored; month YYYY-MM, quantity an integer, amount a decimal
    string). Lines of the same (month, account, item, subject) are summed. Reported: the lines
    on one side only, the lines whose quantity or amount differ, and each account's total per
    month on both sides.

    With --explain LOG, every line that differs carries mgwsim's explanation of its side, from
    rating LOG with the tariff (--tariff; default the shipped one) in the months that differ.

    Example: mgwsim diff out/a/invoices out/b/invoices --month 2026-03
    Example: mgwsim diff mgwsim.json other-system.csv --explain events.jsonl
    """
    from metering.atomic import AtomicWriter
    from metering.compare import CompareInputError, compare, read_charges
    from metering.timeutil import TimeFormatError, format_month, parse_month_range

    try:
        months = None if month is None else parse_month_range(month)
    except TimeFormatError as exc:
        fail(f"--month: {exc}")
    if tariff is not None and not explain_logs:
        fail("--tariff: only with --explain")
    _prepare_outputs(None, [] if junit is None else [junit], [left, right, *(explain_logs or []), tariff])
    try:
        found = compare(read_charges(left), read_charges(right), months)
    except CompareInputError as exc:
        fail(str(exc))
    explanations = _explanations(found.differences, explain_logs, tariff) if explain_logs else {}
    if junit is not None:
        with AtomicWriter(junit) as temporary:
            temporary.write_text(found.junit(), encoding="utf-8")
    if output is DiffFormat.json:
        data = found.to_json()
        if explain_logs:
            for entry, difference in zip(data["differences"], found.differences, strict=True):
                entry["explanation"] = explanations[difference.key]
        write_stdout(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    elif found.equal:
        lines = sum(1 for key in found.left.lines if months is None or key[0] in months)
        write_stdout(f"{left} and {right} charge the same: {lines:,} line(s), {len(found.totals):,} account-month(s)\n")
    else:
        from rich.table import Table

        from metering.money import format_money

        table = Table(title=f"{left} vs {right}: {len(found.differences)} line(s) differ")
        for column in ("month", "account", "item", "subject", "left", "right", ""):
            table.add_column(column)

        def side(value: Any) -> str:
            return "—" if value is None else f"{value[0]} = {format_money(value[1])}"

        for difference in found.differences:
            month_, account, item, subject = difference.key
            table.add_row(
                format_month(month_),
                account,
                item,
                subject,
                side(difference.left),
                side(difference.right),
                difference.kind,
            )
        for (month_, account), (a, b) in sorted(found.totals.items()):
            if a != b:
                table.add_row(format_month(month_), account, "total", "", format_money(a), format_money(b), "differs")
        Console().print(table)
        if explain_logs:
            blocks = [f"mgwsim's side of each line, from {', '.join(map(str, explain_logs))}:"]
            for difference in found.differences:
                month_, account, item, subject = difference.key
                blocks.append(
                    f"{format_month(month_)} {account} {item} {subject} ({difference.kind}):\n"
                    + explanations[difference.key]
                )
            write_stdout("\n\n".join(blocks) + "\n")
    if not found.equal:
        raise typer.Exit(1)


def _explanations(differences: Any, logs: list[Path], tariff_path: Path | None) -> dict[Any, str]:
    """The explanation mgwsim gives of each differing line, from rating ``logs`` in the months that differ."""
    from metering.explain import explain_line

    if not differences:
        return {}
    months = sorted({difference.key[0] for difference in differences})
    inputs = _load(logs, None, tariff_path, _months_text(months))
    rating = _rate(inputs, "reference")
    if rating.errors:
        fail(f"--explain: {rating.errors[0]}")
    events = inputs.events_by_id()
    return {difference.key: explain_line(rating, inputs.tariff, events, *difference.key) for difference in differences}


@bench_app.command("metering", epilog=EXIT_STATUSES)
def bench_metering(
    events: Annotated[int, typer.Option("--events", "-n", min=1, help="sim.traffic events to generate.")] = 10_000_000,
    sims: Annotated[int, typer.Option(min=1, help="SIMs the traffic is spread over.")] = 100_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Directory for the temporary Parquet file and store.", readable=False)
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Generator seed.")] = 1,
) -> None:
    """Ingest + rate 12 months of generated traffic, beside a bare DuckDB GROUP BY of the same file."""
    from metering.bench import run_metering_bench

    _bench_folder("--workdir", workdir)
    report = run_metering_bench(events, sims, workdir, seed, progress=lambda text: stderr.print(text, markup=False))
    Console().print(report.table())


def _bench_folder(option: str, folder: Path | None) -> None:
    """A benchmark's working folder must be a folder it can write in: checked before any work (``None``: the default).

    Raises:
        OSError: Naming the folder, when nothing can be written in it (a read-only disk).
    """
    if folder is None:
        return
    if not folder.is_dir():
        fail(f"{option} {folder}: " + ("is a file, not a folder" if folder.exists() else "no such folder"))
    _writable_folder(folder)


def _writable_folder(folder: Path) -> None:
    """Before any work: that files can be made in ``folder`` (or where it will be made).

    Raises:
        OSError: Naming the folder, when nothing can be written there (a read-only disk).
    """
    from metering.atomic import check_writable, naming

    try:
        check_writable(folder / "probe")
    except OSError as exc:
        raise naming(exc, folder) from None


@bench_app.command("jsonl", epilog=EXIT_STATUSES)
def bench_jsonl(
    lines: Annotated[int, typer.Option(min=1, help="Lines of the JSONL log.")] = 10_000_000,
    workdir: Annotated[Path, typer.Option(help="Where the log is written (and removed after).", readable=False)] = Path(
        "."
    ),
) -> None:
    """Bill a large JSONL log (12 months), beside DuckDB's bare read_json + GROUP BY sim, month of it.

    The log is read in chunks through the columnar path with every check of the row reader, so
    peak memory stays bounded (reported). The ratio is the figure to compare across machines.
    Last, DuckDB parses every field of every line and stores it with no check at all: the floor
    of the columnar path, beside the same bare query.
    """
    import statistics

    from metering.bench import BILL_STAGES, figures_table, run_jsonl_bench

    _bench_folder("--workdir", workdir)
    found = run_jsonl_bench(lines, workdir, lambda text: stderr.print(text, markup=False))
    bare = statistics.median(found["bare"]["times"])
    rows = [
        ("bill, 12 months: wall time", f"{found['seconds']:.1f} s", "≤ 30 s"),
        *[(f"  · {BILL_STAGES.get(name, name)}", f"{seconds:.2f} s", "") for name, seconds in found["stages"].items()],
        ("lines per second", f"{found['lines'] / found['seconds']:,.0f}", ""),
        ("peak memory", f"{found['peak_mb']:,.0f} MB", "< 1,024 MB"),
        ("errors", str(found["errors"]), "0"),
        ("DuckDB bare read + GROUP BY (median of 3)", f"{bare:.2f} s", ""),
        ("bill / bare", f"{found['seconds'] / bare:.1f}x", "≤ 3x"),
        ("DuckDB parse of every field + store, unchecked", f"{found['unchecked']['seconds']:.2f} s", ""),
        ("unchecked / bare (the columnar path's floor)", f"{found['unchecked']['seconds'] / bare:.1f}x", ""),
    ]
    title = f"mgwsim bench jsonl: {found['lines']:,} lines ({found['megabytes']:,.0f} MB)"
    Console().print(figures_table(title, rows, goals=True))


@bench_app.command("sim", epilog=EXIT_STATUSES)
def bench_sim(
    scenario_path: Annotated[
        Path,
        typer.Argument(
            help="Load scenario: a TOML file, or the name of a shipped scenario (its installed copy when no "
            "such file is at hand).",
            show_default=True,
            readable=False,
        ),
    ] = Path("load-100k"),
    sims: Annotated[int, typer.Option(min=1, help="Scale the fleets to about this many SIMs.")] = 100_000,
    engine: Annotated[EngineName, typer.Option(help="Simulation engine.")] = EngineName.fast,
    outputs: Annotated[
        bool,
        typer.Option(
            help="Also write the run folder as `mgwsim run --out` does (events, invoices, report, summary), "
            "in the time, to a temporary folder."
        ),
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="With --outputs: write the run folder here (default: $TMPDIR).", readable=False),
    ] = None,
) -> None:
    """Simulate a load scenario; compare the cost per session with a bare SimPy loop's cost per event."""
    from simulator.bench import run_sim_bench

    if directory is not None and not outputs:
        fail("--dir: only with --outputs")
    scenario_path, _ = _scenario_file(scenario_path)  # a bad file is one line here, not a failed child
    _bench_folder("--dir", directory)
    report = run_sim_bench(
        scenario_path, sims, engine.value, lambda text: stderr.print(text, markup=False), outputs, directory
    )
    Console().print(report.table())


@bench_app.command("pcap", epilog=EXIT_STATUSES)
def bench_pcap(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions in the capture (a fleet device's day each).")] = 20_000,
    sample: Annotated[int, typer.Option(min=10, help="G-PDUs scapy builds one by one for the comparison.")] = 3_000,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Write the capture here (e.g. /dev/shm to leave the disk out); default: $TMPDIR.",
            readable=False,
        ),
    ] = None,
) -> None:
    """Capture writing (templates patched in bulk) beside building the same packets with scapy."""
    from gateway.bench import run_pcap_bench

    _bench_folder("--dir", directory)
    stderr.print(f"writing a capture of {sessions:,} sessions, then {sample:,} packets with scapy …", markup=False)
    Console().print(run_pcap_bench(sessions, sample, directory).table())


@bench_app.command("meter-pcap", epilog=EXIT_STATUSES)
def bench_meter_pcap(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions in the capture (a fleet device's day each).")] = 9_000,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Write the capture here (e.g. /dev/shm to leave the disk out); default: $TMPDIR.",
            readable=False,
        ),
    ] = None,
    reference: Annotated[bool, typer.Option(help="Also time the one-by-one reference reader.")] = True,
    tshark: Annotated[
        bool,
        typer.Option(
            help="Also time tshark on the same file, and the fast reader on it as pcapng written by"
            " Wireshark's editcap (when installed)."
        ),
    ] = True,
) -> None:
    """Read a capture with meter-pcap's readers, beside tshark on the same file, each in its own process."""
    from gateway.bench import run_meter_pcap_bench

    _bench_folder("--dir", directory)
    stderr.print(f"writing a capture of {sessions:,} sessions, then reading it …", markup=False)
    Console().print(run_meter_pcap_bench(sessions, directory, reference, tshark).table())


@bench_app.command("mqtt", epilog=EXIT_STATUSES)
def bench_mqtt(
    messages: Annotated[int, typer.Option(min=1, help="Platform messages to publish.")] = 100_000,
    broker: Annotated[
        str | None, typer.Option(help="mqtt://HOST:PORT/PREFIX; default: a mosquitto started on a free port.")
    ] = None,
) -> None:
    """Platform messages per second at QoS 1 to a broker (every PUBACK awaited)."""
    from gateway.bench import run_mqtt_bench
    from gateway.mqtt import Broker, MqttAdapterError

    if broker is not None:
        try:
            Broker.from_url(broker)
        except MqttAdapterError as exc:
            fail(f"--broker: {exc}")
    stderr.print(f"publishing {messages:,} messages at QoS 1 …", markup=False)
    try:
        report = run_mqtt_bench(messages, broker)
    except (MqttAdapterError, FileNotFoundError, RuntimeError) as exc:  # no broker, or no mosquitto to start
        fail(str(exc), status=UNAVAILABLE)
    Console().print(report.table())


_LINE_BREAKING: Final = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0A, 0x20), 0x7F, 0x85)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
"""Control characters and line separators (a file name may hold them) shown escaped: an error stays one line."""


def _error_line(message: str) -> None:
    """Print ``mgwsim: error: message`` as one line (control characters escaped)."""
    stderr.print(f"mgwsim: error: {message.translate(_LINE_BREAKING)}", markup=False)


def os_error_text(exc: OSError) -> str:
    """One line for an operating-system error: the file, what failed and why (``errno`` named)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{reason}" + (f" ({code})" if code else "")


def _flush_stdout() -> int | None:
    """Flush standard output; the exit status of a failure (``None`` when it went out)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (``mgwsim bill … | head``): not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's own flush quiet
        return 141
    except OSError as exc:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        _error_line(f"standard output: {os_error_text(exc)}")
        return IO_FAILURE
    return None


_stopped_by: signal.Signals | None = None
"""The stop signal this invocation received, if any (see :func:`_on_stop_signal`)."""


def _on_stop_signal(number: int, frame: object) -> None:
    """Unwind on SIGINT or SIGTERM as on Ctrl-C, remembering which came.

    A ``KeyboardInterrupt`` is what every library here (DuckDB, Ray, thread pools) knows to stop
    on, and every ``finally`` of ours removes what it was writing. Without this handler SIGTERM
    would kill the process where it stood, leaving a run's staging folder behind.
    """
    global _stopped_by
    _stopped_by = signal.Signals(number)
    raise KeyboardInterrupt


def _install_stop_handlers() -> None:
    """Route SIGINT and SIGTERM to :func:`_on_stop_signal` (unless SIGINT is ignored, as in ``nohup … &``)."""
    for number in STOP_SIGNALS:
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _on_stop_signal)


def _stop_status() -> int:
    """Say how the command was stopped (one line) and return 128 + the signal (Ctrl-C when no handler saw it)."""
    stopped = _stopped_by or signal.SIGINT
    stderr.print(f"mgwsim: {STOP_SIGNALS[stopped]}", markup=False)
    return 128 + stopped


def main() -> None:
    """Console-script entry point: every failure ends as one line and a documented exit status."""
    _install_stop_handlers()
    status: int | str | None = 0
    try:
        status = app(standalone_mode=False)
        if _stopped_by is not None:  # typer turns a KeyboardInterrupt into a silent return of 130
            status = _stop_status()
    except BaseException as exc:  # each kind gets its one line in _failure_status
        status = _failure_status(exc)
    flushed = _flush_stdout()
    if flushed is not None and status in (0, None):
        status = flushed
    sys.exit(status)


def _failure_status(raised: BaseException) -> int | str | None:
    """The one line for what ended a command, printed; its exit status returned."""
    from typer.exceptions import Abort, TyperException

    if _stopped_by is not None:  # whatever a library made of the interrupt, it was a stop
        return _stop_status()
    match raised:
        case SystemExit():
            return raised.code
        case Abort() | KeyboardInterrupt():
            return _stop_status()
        case TyperException():  # a bad option or argument: one line, as every other failure
            message = raised.format_message() if hasattr(raised, "format_message") else str(raised)
            context = getattr(raised, "ctx", None)
            command = "mgwsim" + (context.command_path[len(context.find_root().command_path) :] if context else "")
            if message:  # (no message: mgwsim without a command, its help already shown)
                _error_line(f"{message} (see {command} --help)")
            return int(getattr(raised, "exit_code", BAD_INPUT))
        case BrokenPipeError():
            return 141
        case MemoryError():
            _error_line("out of memory (the input or the scenario is larger than this machine can hold)")
            return IO_FAILURE
        case OSError():
            _error_line(os_error_text(raised))
            return IO_FAILURE
        case Exception():  # a bug: say so in one line, the traceback only when asked for
            frame = traceback.extract_tb(raised.__traceback__)[-1]
            said = str(raised).splitlines()[0][:200] if str(raised) else ""
            _error_line(
                f"internal error, a bug in mgwsim: {type(raised).__name__}: {said}"
                f" (at {Path(frame.filename).name}:{frame.lineno}); please report it at {ISSUES_URL}"
                + ("" if _VERBOSE else "; run with -v for the traceback")
            )
            if _VERBOSE:
                traceback.print_exception(raised, file=sys.stderr)
            return BUG
        case _:  # GeneratorExit and the like: not ours to swallow
            raise raised


def reflowed(doc: str) -> str:
    """A command's docstring as ``--help`` should show it: each paragraph one line, for the terminal to wrap.

    Typer keeps a docstring's line breaks after its first paragraph, so at 80 columns every source
    line would wrap again on its own. A line ``Example: …`` stays a paragraph of its own.
    """
    paragraphs: list[list[str]] = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        paragraphs.append([])
        for line in block.splitlines():
            if line.startswith("Example:") and paragraphs[-1]:
                paragraphs.append([])
            paragraphs[-1].append(line.strip())
    return "\n\n".join(" ".join(lines) for lines in paragraphs if lines)


def _reflow_help(group: typer.Typer) -> None:
    """Give every command of ``group`` (and of its sub-groups) its :func:`reflowed` docstring as help."""
    for command in group.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = reflowed(command.callback.__doc__)
    for sub_group in group.registered_groups:
        if sub_group.typer_instance is not None:
            _reflow_help(sub_group.typer_instance)


_reflow_help(app)

if __name__ == "__main__":
    main()
