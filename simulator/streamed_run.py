"""A run of a fleet too large for one process's memory, shard by shard, its outputs streamed.

Accounts share nothing (a fleet's gateway belongs to its account), so a large scenario is run as
shards of whole accounts, one after the other (:func:`shards_of`: at most ``shard_sims`` SIMs a
shard, accounts in the order invoices list them). Each shard is simulated and metered on its own
(:func:`~simulator.shard.simulate_shard`, the SIM numbers and random streams of the whole
scenario), its events are appended to the folder's log (Parquet row groups, or JSONL), and its
invoices to the twelve month documents — then it is dropped. What stays in memory is one shard,
and per account and month a digest of the invoices (totals and amounts per item) for the report,
the summary and the ``[expect]`` checks.

The month documents are written as the joined document of a serial run would be: the text of each
shard's document is cut into its header, its invoices and its end, and the invoices of the shards
are joined in account order under the common header — byte for byte ``InvoiceDocument.dumps()``
of all the invoices (a test holds a sharded run to the serial one, whatever the shard size).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from metering.atomic import fsync_file, open_write_behind
from metering.collector import paused_collector
from metering.eventlog import EventLogAppender, log_format
from metering.invoice import InvoiceDocument, Line
from metering.rating import Rating
from metering.timeutil import format_month

if TYPE_CHECKING:  # the CLI reads SHARD_SIMS at start-up: the run's modules load when a run does
    from simulator.results import RunResult, ShardResult
    from simulator.scenario import Scenario

LOG = logging.getLogger(__name__)
SHARD_SIMS: Final = 50_000
"""Default bound of a shard: a fleet of more SIMs is run in shards of at most this many (whole accounts)."""
_INVOICES_KEY: Final = '"invoices": ['
_DOCUMENT_END: Final = "\n ]\n}"


def shards_of(scenario: Scenario, shard_sims: int) -> list[frozenset[str]]:
    """The accounts in shards of at most ``shard_sims`` SIMs, in account order (an account larger is one shard)."""
    sims: Counter[str] = Counter()
    for fleet in scenario.fleets:
        sims[fleet.account] += fleet.count
    shards: list[frozenset[str]] = []
    current: list[str] = []
    size = 0
    for account in sorted(scenario.accounts):
        if current and size + sims[account] > shard_sims:
            shards.append(frozenset(current))
            current, size = [], 0
        current.append(account)
        size += sims[account]
    if current:
        shards.append(frozenset(current))
    return shards


def document_parts(document: InvoiceDocument) -> tuple[str, str]:
    """A document's text cut into its header (up to the invoices' list) and its invoices ("" for none)."""
    text = document.dumps()
    cut = text.index(_INVOICES_KEY) + len(_INVOICES_KEY)
    if not document.invoices:
        return text[:cut], ""
    if not text.endswith(_DOCUMENT_END):
        raise AssertionError("an invoice document's text does not end with its list of invoices")
    return text[:cut], text[cut + 1 : -len(_DOCUMENT_END)]


class MonthDocuments:
    """The run's month documents, written as the shards come: one open file per month."""

    def __init__(self, folder: Path, months: Iterable[int]) -> None:
        """Open ``folder/invoices/YYYY-MM.json`` for every month (written when :meth:`close` is called)."""
        (folder / "invoices").mkdir(parents=True, exist_ok=True)
        self.paths = {month: folder / "invoices" / f"{format_month(month)}.json" for month in months}
        self.files: dict[int, IO[str]] = {
            month: io.TextIOWrapper(open_write_behind(path), encoding="utf-8") for month, path in self.paths.items()
        }
        self.headers: dict[int, str] = {}
        self.started: set[int] = set()

    def add(self, texts: Mapping[int, tuple[str, str]]) -> None:
        """Append one shard's invoices, month → (header, invoices) text (its accounts come after those before)."""
        for month, stream in self.files.items():
            header, invoices = texts[month]
            if month not in self.headers:
                self.headers[month] = header
                stream.write(header)
            elif header != self.headers[month]:
                raise AssertionError(f"{format_month(month)}: shards wrote different document headers")
            if invoices:
                stream.write(",\n" if month in self.started else "\n")
                stream.write(invoices)
                self.started.add(month)

    def close(self) -> list[Path]:
        """End every document, sync it to disk, and return the paths."""
        for month, stream in self.files.items():
            stream.write((_DOCUMENT_END if month in self.started else "]\n}") + "\n")
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()
        return list(self.paths.values())


def laid_out(result: ShardResult) -> ShardResult:
    """The shard with its month documents laid out as text and its rating reduced to the digest.

    What a Ray worker hands back for a run in shards: the driver then only appends texts, and the
    invoice lines do not cross the process boundary at all.
    """
    texts = {month: document_parts(document) for month, document in result.rating.documents.items()}
    return dataclasses.replace(result, rating=digest(result.rating), document_texts=texts)


@paused_collector()  # a line per item and invoice of every account: all kept
def digest(rating: Rating) -> Rating:
    """The rating with each invoice's lines summed per item, and no outcomes: all the report, summary and checks read.

    Taking the digest of a digest changes nothing.
    """
    documents = {}
    for month, document in rating.documents.items():
        invoices = []
        for invoice in document.invoices:
            amounts: dict[str, Line] = {}
            for line in invoice.lines:
                held = amounts.get(line.item)
                amounts[line.item] = (
                    Line(line.item, "", "", 0, line.amount, line.amount, (), "")
                    if held is None
                    else held._replace(amount=held.amount + line.amount)
                )
            invoices.append(dataclasses.replace(invoice, lines=tuple(amounts.values())))
        documents[month] = InvoiceDocument(month, document.tariff, tuple(invoices))
    return Rating(documents, {})


def serial_shards(scenario: Scenario, shards: list[frozenset[str]], rater: str = "fast") -> Iterator[ShardResult]:
    """Each shard simulated and metered in this process, one after the other."""
    from simulator.shard import simulate_shard  # the engines: loaded for a run, not for every command

    for number, accounts in enumerate(shards, start=1):
        LOG.info("shard %d of %d: %s", number, len(shards), ", ".join(sorted(accounts)))
        yield simulate_shard(scenario, accounts, rater, "fast", keep_events=True)


def run_in_shards(
    scenario: Scenario,
    folder: Path | None,
    log_name: str,
    results: Iterable[ShardResult],
    count: int,
    progress: Callable[[float], None] | None = None,
) -> tuple[RunResult, list[Path]]:
    """Write the results of ``count`` shards, handed in account order, into ``folder``: the log and the month documents.

    Without a folder nothing is written (``mgwsim run`` without ``--out``): the shards are only joined.

    ``results`` is :func:`serial_shards` or the Ray engine's
    :func:`~simulator.ray_engine.shard_results`. The returned result holds no events, and its
    documents hold each invoice's totals and one line per item (amounts summed): what the
    report, the summary and the ``[expect]`` checks read.
    """
    from simulator.results import RunResult, join_shards

    log = EventLogAppender(folder / log_name, log_format(folder / log_name)) if folder is not None else None
    documents = MonthDocuments(folder, scenario.billing_months) if folder is not None else None
    joined: ShardResult | None = None
    try:
        for number, shard in enumerate(results, start=1):
            if log is not None and documents is not None:
                log.add(shard.events)
                documents.add(
                    shard.document_texts
                    if shard.document_texts is not None
                    else {month: document_parts(document) for month, document in shard.rating.documents.items()}
                )
            # one shard at a time: this one's events and invoices are written, its digest is joined
            kept = dataclasses.replace(shard, events=[], rating=digest(shard.rating), document_texts=None)
            del shard
            joined = kept if joined is None else join_shards([joined, kept])
            if progress is not None:
                progress(number / count)
    finally:
        written = []
        if folder is not None and log is not None and documents is not None:  # no folder: nothing is written
            log.close()
            fsync_file(folder / log_name)
            written = [folder / log_name, *documents.close()]
    result = RunResult(**vars(joined if joined is not None else join_shards([])), scenario=scenario)
    return result, written
