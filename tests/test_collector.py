"""The cyclic garbage collector is paused while invoice documents of a fleet are built, and only then.

Building a month document allocates a named tuple per line, all kept: without the pause the
collector's passes over them cost a tenth of a large run's metering (measured with
``gc.callbacks``). The tests make the collector run at every allocation and count its passes.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from metering.collector import paused_collector
from metering.compact import CompactLog
from metering.fast import rate_connection
from metering.store import EventStore
from simulator.scenario import Scenario
from simulator.streamed_run import digest


@contextmanager
def counted_passes(inside: str | None) -> Iterator[list[int]]:
    """The collector made to run at every allocation; yields the passes it starts (a list of one count).

    With ``inside``, only the passes started while a function of that name is running count.
    """
    passes = [0]

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and (inside is None or _running(inside)):
            passes[0] += 1

    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    gc.enable()
    gc.set_threshold(1, 1, 1)
    gc.callbacks.append(count)
    try:
        yield passes
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


def _running(name: str) -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def passes_during(work: Callable[[], object], inside: str | None = None) -> int:
    """How many collector passes started while ``work`` ran (with ``inside``: in that function)."""
    with counted_passes(inside) as passes:
        work()
    return passes[0]


def test_the_collector_is_paused_only_inside_the_block_and_restored_after() -> None:
    assert passes_during(lambda: [[index] for index in range(200)]) > 0  # the counter sees passes
    with paused_collector():
        assert not gc.isenabled()
        with paused_collector():
            assert not gc.isenabled()
        assert not gc.isenabled()  # an inner pause does not end the outer one
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), paused_collector():
        _ = 1 / 0
    assert gc.isenabled()  # restored after an error
    gc.disable()
    try:
        with paused_collector():
            pass
        assert not gc.isenabled()  # a collector disabled before stays disabled
    finally:
        gc.enable()


def test_no_collector_pass_runs_while_a_document_or_its_digest_is_built(
    small_load: Scenario, small_load_log: CompactLog
) -> None:
    scenario = small_load
    with EventStore(":memory:") as store:
        store.append(list(small_load_log))
        rating = rate_connection(store.connection, scenario.tariff, scenario.billing_months)
        month = scenario.billing_months[0]
        built: list[Any] = []
        # without the pause, hundreds of passes (682 here); with it, only the few as it ends
        assert passes_during(lambda: built.append(rating.documents[month]), inside="_build_document") <= 5
        document = built[0]
        assert sum(len(invoice.lines) for invoice in document.invoices) > 150  # a line per SIM at least
        assert gc.isenabled()
        assert passes_during(lambda: built.append(digest(rating)), inside="digest") <= 5
        assert built[1].documents[month].invoices[0].total == document.invoices[0].total
