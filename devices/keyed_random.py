"""Random numbers keyed by (seed, SIM, period): any SIM's draws are reproducible on their own.

A generator is derived from ``SeedSequence([seed, stream, sim, period])``, so the values drawn
for one SIM and one period do not depend on which other SIMs exist, in which order they are
simulated, or on which engine or shard runs them.
"""

from __future__ import annotations

from typing import Final

import numpy as np

STREAM_TRAFFIC: Final = 1
STREAM_COVERAGE: Final = 2
STREAM_FLEET: Final = 3
STREAM_PHASE: Final = 4


def keyed_generator(seed: int, stream: int, sim: int, period: int = 0) -> np.random.Generator:
    """A numpy generator for one (seed, stream, SIM, period) key."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, sim, period])))
