"""Random numbers keyed by (seed, stream, SIM, period): any SIM's draws are reproducible on their own.

Two kinds, both independent of which other SIMs exist, in which order they are simulated, or
which engine or shard runs them:

* :func:`keyed_uniform`, a counter-based hash (SplitMix64 finaliser over the key), vectorised with
  numpy: one uniform number per (SIM, period, draw) without creating a generator — what the fast
  engine needs for 10^5 SIMs x 365 days;
* :func:`keyed_generator`, a full numpy generator seeded by the key, for bulk draws of one SIM.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

STREAM_TRAFFIC: Final = 1
STREAM_COVERAGE: Final = 2
STREAM_FLEET: Final = 3
STREAM_PHASE: Final = 4

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(value: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The SplitMix64 finaliser (in place): a bijective avalanche of 64-bit values."""
    value ^= value >> np.uint64(30)
    value *= np.uint64(0xBF58476D1CE4E5B9)
    value ^= value >> np.uint64(27)
    value *= np.uint64(0x94D049BB133111EB)
    value ^= value >> np.uint64(31)
    return value


def keyed_uniform(
    seed: int, stream: int, sims: npt.ArrayLike, periods: npt.ArrayLike, draw: int = 0
) -> npt.NDArray[np.float64]:
    """Uniform numbers in [0, 1), one per (SIM, period), for draw number ``draw`` of the key.

    Args:
        seed: The scenario seed.
        stream: What the numbers are for (``STREAM_*``).
        sims: SIM numbers (scalar or array).
        periods: Periods, e.g. JST day numbers (scalar or array, broadcast with ``sims``).
        draw: Which of several numbers of the same key.
    """
    with np.errstate(over="ignore"):
        raw = ((seed & 0xFFFFFFFF) * 0x9E3779B97F4A7C15 + stream * 1_000_003 + draw) & 0xFFFFFFFFFFFFFFFF
        key = _mix(np.array([raw], dtype=np.uint64))
        sim = np.asarray(sims, dtype=np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
        period = np.asarray(periods, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        value = np.bitwise_xor(sim, period)
        value ^= key[0]
        value = _mix(np.atleast_1d(value))
    result = (value >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return result if np.ndim(sims) or np.ndim(periods) else result.reshape(())


def keyed_generator(seed: int, stream: int, sim: int, period: int = 0) -> np.random.Generator:
    """A numpy generator for one (seed, stream, SIM, period) key."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, sim, period])))
