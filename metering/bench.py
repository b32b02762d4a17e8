"""``mgwsim bench metering``: ingest and rating throughput beside a bare DuckDB GROUP BY.

The benchmark generates N ``sim.traffic`` events over S SIMs (10 accounts, every SIM registered
before 2026) spread over the 12 JST months of 2026, writes them as Parquet, and then measures in
one run, each in a fresh child process so peak memory is the work's own:

1. bill path: the Parquet log ingested into an in-memory store and all 12 months rated by the fast
   rater (events/s, peak RSS, the rater's phases) — rating yields every line's quantity and amount
   and every invoice's totals, in columns; building the invoice documents (a Python object, note
   and evidence per line, as ``mgwsim bill`` prints them) is timed on its own after that;
2. store path: the same log ingested into a DuckDB file (``mgwsim ingest``);
3. the bare ``SELECT sim, month, sum(bytes) … GROUP BY`` over the same file (median of 3).

Figures are wall-clock on a shared machine: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from metering.timeutil import month_sql, month_start, parse_month

ACCOUNTS = 10
YEAR_START = month_start(parse_month("2026-01"))
YEAR_END = month_start(parse_month("2027-01"))


def generate_traffic(path: Path, events: int, sims: int, seed: int) -> int:
    """Write ``sims`` registrations and ``events`` traffic events as Parquet; return the row count."""
    rng = np.random.default_rng(seed)
    iccids = pa.array([f"8981300{index:012d}" for index in range(sims)])
    accounts = pa.array([f"acct-{index}" for index in range(ACCOUNTS)])
    registered = np.full(sims, month_start(parse_month("2025-12")) + 3_600_000_000, dtype=np.int64)
    sim_of = rng.integers(0, sims, events, dtype=np.int64)
    ts = rng.integers(YEAR_START, YEAR_END, events, dtype=np.int64)
    rows = sims + events
    every_sim = np.concatenate([np.arange(sims, dtype=np.int64), sim_of])
    kinds = pa.array(["sim.registered", "sim.traffic"])
    kind_index = np.concatenate([np.zeros(sims, dtype=np.int32), np.ones(events, dtype=np.int32)])
    ids = pa.array(np.char.add("e", np.arange(rows).astype(str)))
    up = np.concatenate([np.zeros(sims, dtype=np.int64), rng.integers(0, 4000, events)])
    down = np.concatenate([np.zeros(sims, dtype=np.int64), rng.integers(0, 2000, events)])
    traffic_mask = pa.array(np.concatenate([np.zeros(sims, dtype=bool), np.ones(events, dtype=bool)]))
    null_int = pa.nulls(rows, pa.int64())
    table = pa.table(
        {
            "ts": pa.array(np.concatenate([registered, ts]), type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "type": kinds.take(pa.array(kind_index)),
            "account": accounts.take(pa.array((every_sim % ACCOUNTS).astype(np.int32))),
            "id": ids,
            "sim": iccids.take(pa.array(every_sim)),
            "up_bytes": pa.compute.if_else(traffic_mask, pa.array(up), null_int),
            "down_bytes": pa.compute.if_else(traffic_mask, pa.array(down), null_int),
            "route": pa.compute.if_else(traffic_mask, pa.scalar("closed"), pa.nulls(rows, pa.string())),
        }
    )
    pq.write_table(table, path, row_group_size=1_000_000)
    return rows


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _generate(path: str, events: int, sims: int, seed: int, queue: Any) -> None:
    queue.put({"rows": generate_traffic(Path(path), events, sims, seed)})


def _bill_path(path: str, queue: Any) -> None:
    from metering.fast import FastRater
    from metering.store import EventStore
    from metering.tariff import load_tariff

    tariff = load_tariff()
    months = list(range(parse_month("2026-01"), parse_month("2026-12") + 1))
    start = time.perf_counter()
    with EventStore(":memory:") as store:
        store.ingest_file(Path(path))
        ingested = time.perf_counter()
        rater = FastRater(store.connection, tariff)
        rating = rater.rate(months)
        rated = time.perf_counter()
        peak_rated = _peak_rss_mb()
        lines = sum(len(invoice.lines) for month in rating.documents for invoice in rating.documents[month].invoices)
        built = time.perf_counter()
    queue.put(
        {
            "ingest": ingested - start,
            "rate": rated - ingested,
            "build": built - rated,
            "peak_rated_mb": peak_rated,
            "phases": dict(rater.timings),
            "lines": lines,
            "errors": len(rating.errors),
            "peak_mb": _peak_rss_mb(),
        }
    )


def _store_path(path: str, database: str, queue: Any) -> None:
    from metering.store import EventStore

    start = time.perf_counter()
    with EventStore(database) as store:
        added, _ = store.ingest_file(Path(path))
    queue.put({"ingest": time.perf_counter() - start, "added": added, "peak_mb": _peak_rss_mb()})


def _bare_query(sql: str, queue: Any) -> None:
    """Time one bare DuckDB query three times in this (fresh) process; put the times and the peak memory."""
    import duckdb

    from metering.store import without_progress_bar

    connection = without_progress_bar(duckdb.connect())
    times = []
    for _ in range(3):
        start = time.perf_counter()
        connection.sql(sql).to_arrow_table()
        times.append(time.perf_counter() - start)
    queue.put({"times": times, "peak_mb": _peak_rss_mb()})


def _group_by(path: str, queue: Any) -> None:
    _bare_query(
        f"SELECT sim, {month_sql('epoch_us(ts)')} AS month, sum(up_bytes + down_bytes) "
        f"FROM read_parquet('{path}') WHERE type = 'sim.traffic' GROUP BY ALL",
        queue,
    )


def in_child_process(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it put on the queue."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=1)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"benchmark step {target.__name__} failed (exit code {process.exitcode})") from None
    process.join()
    return result


@dataclass
class MeteringBenchReport:
    """The figures of one ``mgwsim bench metering`` run."""

    events: int
    sims: int
    rows: int
    generate_s: float
    bill: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    group_by: dict[str, Any] = field(default_factory=dict)

    @property
    def group_by_median(self) -> float:
        """Median seconds of the bare GROUP BY."""
        return float(statistics.median(self.group_by["times"]))

    @property
    def bill_events_per_s(self) -> float:
        """Events per second through ingest + rating of 12 months."""
        return float(self.rows / (self.bill["ingest"] + self.bill["rate"]))

    def table(self) -> Table:
        """The report as a rich table."""
        title = f"mgwsim bench metering: {self.events:,} traffic events, {self.sims:,} SIMs, 12 months"
        rate = self.bill["rate"]
        ratio = rate / self.group_by_median
        rows = [
            ("rows in the Parquet log", f"{self.rows:,}", ""),
            ("ingest (Parquet → in-memory store)", f"{self.bill['ingest']:.2f} s", ""),
            ("rating, 12 months (fast rater)", f"{rate:.2f} s", ""),
            *[(f"  · {name}", f"{seconds:.2f} s", "") for name, seconds in self.bill["phases"].items()],
            ("ingest + rating throughput", f"{self.bill_events_per_s:,.0f} events/s", "≥ 1,000,000"),
            ("peak memory, ingest + rating", f"{self.bill['peak_rated_mb']:,.0f} MB", "< 2,048 MB"),
            (f"building the 12 documents ({self.bill['lines']:,} lines)", f"{self.bill['build']:.2f} s", ""),
            ("  peak memory with the documents built", f"{self.bill['peak_mb']:,.0f} MB", ""),
            ("bare DuckDB GROUP BY sim, month (median of 3)", f"{self.group_by_median:.2f} s", ""),
            ("rating / bare GROUP BY", f"{ratio:.2f}x", "≤ 3x"),
            ("ingest into a DuckDB file (mgwsim ingest)", f"{self.store['ingest']:.2f} s", ""),
            ("  throughput", f"{self.rows / self.store['ingest']:,.0f} events/s", ""),
        ]
        return figures_table(title, rows, goals=True)


def figures_table(title: str, rows: Iterable[tuple[str, ...]], goals: bool = False) -> Table:
    """A benchmark's report: one row per measure with its value (and, with ``goals``, its goal)."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    if goals:
        table.add_column("goal", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def run_metering_bench(
    events: int, sims: int, workdir: Path | None, seed: int, progress: Callable[[str], None]
) -> MeteringBenchReport:
    """Run the benchmark; ``progress`` receives one line per step."""
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        path = Path(directory) / "traffic.parquet"
        progress(f"generating {events:,} traffic events over {sims:,} SIMs …")
        start = time.perf_counter()
        rows = in_child_process(_generate, str(path), events, sims, seed)["rows"]
        report = MeteringBenchReport(events, sims, rows, time.perf_counter() - start)
        progress("bill path: ingest into memory + rate 12 months …")
        report.bill = in_child_process(_bill_path, str(path))
        progress("bare GROUP BY …")
        report.group_by = in_child_process(_group_by, str(path))
        progress("store path: ingest into a DuckDB file …")
        report.store = in_child_process(_store_path, str(path), str(Path(directory) / "store.duckdb"))
    return report


def write_jsonl_log(path: Path, lines: int, sims: int = 100_000) -> None:
    """A JSONL log of ``lines`` events: registrations of ``sims`` SIMs, then daily traffic over a year."""
    start = 1_767_193_200  # 2026-01-01 00:00 JST
    with path.open("w", encoding="utf-8") as stream:
        for sim in range(min(sims, lines)):
            stream.write(
                f'{{"ts": "2026-01-01T00:00:00+09:00", "type": "sim.registered", "account": "acct-{sim % 10}", '
                f'"id": "r{sim}", "sim": "8981300{sim % 10:02d}000{sim:07d}"}}\n'
            )
        chunk: list[str] = []
        for number in range(lines - min(sims, lines)):
            sim = number % sims
            moment = time.gmtime(start + 86_400 * ((number // sims) % 365) + 43_200)
            chunk.append(
                f'{{"ts": "{time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)}", "type": "sim.traffic", '
                f'"account": "acct-{sim % 10}", "id": "t{number}", "sim": "8981300{sim % 10:02d}000{sim:07d}", '
                f'"up_bytes": {30_000 + number % 977}, "down_bytes": 15000, "route": "closed"}}\n'
            )
            if len(chunk) >= 100_000:
                stream.write("".join(chunk))
                chunk = []
        stream.write("".join(chunk))


BILL_STAGES: Final = {
    "read": "read, check and store the lines",
    "settle": "settle repeated ids",
    "aggregate": "aggregate per SIM and month",
    "replay": "replay the other events per account",
    "vectorise": "rate the columns",
    "totals": "invoice totals",
    "documents": "build the documents (evidence ids included)",
}
"""What each stage that :func:`metering.fast.rate_fast` times does, in the words of the report."""


def _bill_jsonl(path: str, queue: Any) -> None:
    from metering.fast import rate_fast
    from metering.tariff import load_tariff

    began = time.perf_counter()
    stages: dict[str, float] = {}
    rating = rate_fast([Path(path)], None, load_tariff(), list(range(2026 * 12, 2026 * 12 + 12)), stages)
    total = sum(invoice.total for document in rating.documents.values() for invoice in document.invoices)
    queue.put(
        {
            "seconds": time.perf_counter() - began,
            "stages": stages,
            "peak_mb": _peak_rss_mb(),
            "errors": len(rating.errors),
            "total": str(total),
        }
    )


JSONL_COLUMNS: Final = (
    "{'ts': 'VARCHAR', 'type': 'VARCHAR', 'account': 'VARCHAR', 'id': 'VARCHAR', 'sim': 'VARCHAR', "
    "'up_bytes': 'BIGINT', 'down_bytes': 'BIGINT', 'route': 'VARCHAR'}"
)
"""The columns of :func:`write_jsonl_log`'s lines, declared to DuckDB's reader as the bare read does."""


def _bare_jsonl(path: str, queue: Any) -> None:
    """DuckDB alone: read the log with declared columns, JST month of ``ts``, GROUP BY sim, month (3 runs)."""
    literal = path.replace("'", "''")
    _bare_query(
        f"SELECT sim, {month_sql('epoch_us(ts::TIMESTAMPTZ)')} AS month, sum(up_bytes + down_bytes) "
        f"FROM read_json('{literal}', format = 'newline_delimited', columns = {JSONL_COLUMNS}) "
        "WHERE type = 'sim.traffic' GROUP BY ALL",
        queue,
    )


def _store_unchecked(path: str, queue: Any) -> None:
    """The columnar path's floor: DuckDB parses every field of every line and stores its text, unchecked.

    The chunks are read and prepared on the reader thread, as the bill's are (:func:`prepared_chunks`).
    """
    from metering.fast import STREAM_MEMORY_LIMIT
    from metering.jsonl_ingest import JSON_FIELDS, JSON_STRUCTURE, prepared_chunks
    from metering.store import EventStore

    with EventStore(":memory:", memory_limit=STREAM_MEMORY_LIMIT) as store:
        fields = ", ".join(f"{name} VARCHAR" for name in JSON_FIELDS)  # the order v.* expands in
        store.connection.execute(f"CREATE TABLE unchecked (line BIGINT, {fields})")
        began = time.perf_counter()
        for prepared in prepared_chunks(Path(path), compressed=False):
            if prepared.table is None:
                raise RuntimeError(f"{path}: not UTF-8 text")  # the benchmark writes the log itself
            store.connection.register("jsonl_chunk", prepared.table)
            store.connection.execute(
                f"INSERT INTO unchecked SELECT line, v.* FROM "
                f"(SELECT line, json_transform(text, '{JSON_STRUCTURE}') AS v FROM jsonl_chunk)"
            )
            store.connection.unregister("jsonl_chunk")
        queue.put({"seconds": time.perf_counter() - began, "peak_mb": _peak_rss_mb()})


def run_jsonl_bench(lines: int, workdir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Write a JSONL log of ``lines`` lines; bill 12 months of it, then DuckDB's bare read + GROUP BY.

    Then the floor of the columnar path: DuckDB parsing every field of every line and storing it,
    with no check and no conversion (what no exact check can go below).

    Each in a fresh child process, one after the other on the same file (in the page cache for both).
    """
    path = workdir / f"bench-{lines}.jsonl"
    progress(f"writing {lines:,} JSONL lines to {path} …")
    write_jsonl_log(path, lines)
    try:
        progress("billing it (12 months) in a fresh process …")
        found = in_child_process(_bill_jsonl, str(path))
        progress("DuckDB's bare read_json + GROUP BY sim, JST month (3 runs) …")
        found["bare"] = in_child_process(_bare_jsonl, str(path))
        progress("DuckDB parsing every field and storing it, unchecked (the columnar path's floor) …")
        found["unchecked"] = in_child_process(_store_unchecked, str(path))
        found.update(lines=lines, megabytes=path.stat().st_size / 1e6)
    finally:
        path.unlink()
    return found
