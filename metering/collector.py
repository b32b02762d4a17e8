"""The cyclic garbage collector, paused while millions of objects that are all kept are built.

CPython's collector runs a pass every few hundred allocations, and a full pass over every live
object each time the long-lived ones grew by a quarter. Building a month document of a large
fleet (a named tuple per invoice line, its evidence and its note) or reading a capture (sessions
and bearers that refer to each other) allocates millions of objects that all stay alive: the
passes find nothing to free and cost a tenth of the time or more. Inside :func:`paused_collector`
they do not run; what the block leaves behind is collected by the next pass after it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_collector() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; restore its state after (also on an error).

    Nested pauses leave it paused until the outermost one ends; a collector that was disabled
    before stays disabled.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
