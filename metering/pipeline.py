"""Inputs of a rating run: event logs and/or a store, a tariff and months, and the raters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metering.eventlog import read_event_logs
from metering.events import Event
from metering.rating import Rating
from metering.reference import rate_reference
from metering.tariff import Tariff


@dataclass
class Inputs:
    """Validated inputs of ``bill`` and ``explain``.

    Attributes:
        paths: Event log files, in the order given.
        db: A DuckDB event store, or ``None``.
        tariff: The tariff.
        months: Month indexes to bill.
    """

    paths: Sequence[Path]
    db: Path | None
    tariff: Tariff
    months: Sequence[int]
    _events: list[Event] | None = field(default=None, repr=False)

    def events(self) -> list[Event]:
        """All events (store first, then files in order), read and validated once."""
        if self._events is None:
            events: list[Event] = []
            if self.db is not None:
                from metering.store import EventStore

                with EventStore(self.db, read_only=True) as store:
                    events.extend(store.read_events())
            events.extend(read_event_logs(self.paths))
            self._events = events
        return self._events

    def events_by_id(self) -> dict[tuple[str, str], Event]:
        """Events by ``(account, id)`` (first occurrence), for evidence in explanations."""
        found: dict[tuple[str, str], Event] = {}
        for event in self.events():
            found.setdefault((event.account, event.id), event)
        return found

    def rate(self, rater: str = "fast") -> Rating:
        """Rate the months with the named rater: ``fast`` (columnar) or ``reference`` (per event)."""
        if rater == "reference":
            return rate_reference(self.events(), self.tariff, self.months)
        if rater != "fast":
            raise ValueError(f"unknown rater {rater!r}")
        from metering.fast import rate_fast

        return rate_fast(self.paths, self.db, self.tariff, self.months)


def load_inputs(paths: Sequence[Path], db: Path | None, tariff: Tariff, months: Sequence[int]) -> Inputs:
    """Bundle the inputs; files are read lazily by the rater that needs them."""
    return Inputs(list(paths), db, tariff, list(months))
