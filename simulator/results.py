"""What a run produces: the result types shared by the runner, the Ray engine, the report and the CLI.

They live apart from the code that makes them, so that the runner, the Ray engine and the report
import them without importing each other; so does :func:`join_shards`, which the Ray engine and a
run in shards both fold their shards with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from metering.compact import concatenate_logs
from metering.events import Event
from metering.invoice import InvoiceDocument
from metering.rating import Rating, merge_ratings
from simulator.scenario import Scenario
from simulator.world import RunStats


@dataclass
class ShardResult:
    """What simulating and rating some accounts of a scenario produced (all of them, serially).

    ``events`` is empty when the caller did not ask to keep the log; ``event_count`` counts it.
    """

    events: Sequence[Event]
    event_count: int
    stats: RunStats
    sim_states: Counter[str]
    rating: Rating
    simulate_seconds: float = 0.0
    """Seconds spent simulating (summed over shards with ``--engine ray``)."""
    rate_seconds: float = 0.0
    """Seconds spent rating (likewise)."""
    document_texts: Mapping[int, tuple[str, str]] | None = None
    """Month → the header and the invoices of its document as text, when the shard laid them out
    itself (a Ray worker, for a run in shards): ``rating`` then holds the digest only
    (see :func:`simulator.streamed_run.laid_out`)."""


@dataclass
class RunResult(ShardResult):
    """What one run produced: the shard of every account, with its scenario."""

    scenario: Scenario = field(kw_only=True)

    @property
    def documents(self) -> list[InvoiceDocument]:
        """The invoice documents, month by month."""
        return [self.rating.documents[month] for month in sorted(self.rating.documents)]

    def charges_by_item(self) -> dict[int, Counter[str]]:
        """Month → item → amount (all accounts)."""
        found: dict[int, Counter[str]] = {}
        for document in self.documents:
            month = found.setdefault(document.month, Counter())
            for invoice in document.invoices:
                for line in invoice.lines:
                    month[line.item] += line.amount  # type: ignore[assignment]
        return found


class MeteringFailure(Exception):
    """The run's own event log did not rate: a defect of the simulator, reported as such."""


def join_shards(shards: list[ShardResult]) -> ShardResult:
    """One result of the results of disjoint accounts, as a serial run would give it."""
    stats = RunStats()
    states: Counter[str] = Counter()
    for shard in shards:
        stats = stats.merged(shard.stats)
        states.update(shard.sim_states)
    events = concatenate_logs([shard.events for shard in shards]) if any(shard.events for shard in shards) else []
    return ShardResult(
        events,
        sum(shard.event_count for shard in shards),
        stats,
        states,
        merge_ratings(shard.rating for shard in shards),
        sum(shard.simulate_seconds for shard in shards),
        sum(shard.rate_seconds for shard in shards),
    )
