"""Traffic profiles and the bursts a device sends inside a session.

A profile says what a device does: periodic telemetry, a daily upload, a firmware download every
few months, platform (Mono) messages, SMS, or a runaway that floods its session. The bursts of one
SIM in an interval are computed in bulk with numpy; their random parts (phases, daily sizes) come
from the generator keyed by (seed, SIM, period), so they do not depend on processing order.

Times are whole seconds since the scenario start; ``origin_jst_s`` (the scenario start in JST
seconds since the epoch) places days and months on the JST calendar.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from devices.keyed_random import STREAM_PHASE, STREAM_TRAFFIC, keyed_uniform

DAY: Final = 86_400
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """What one kind of device sends.

    Attributes:
        name: Profile name.
        destination: ``closed`` (through the switch) or ``internet``.
        telemetry_interval_s: Seconds between telemetry messages (0: none).
        telemetry_up: Uplink bytes per telemetry message.
        telemetry_down: Downlink bytes per telemetry message.
        daily_upload_bytes: Bytes uploaded once a day at a random time (±10 %; 0: none).
        firmware_bytes: Bytes downloaded by a firmware update (0: none).
        firmware_every_months: Months between firmware updates (3: every quarter).
        platform_messages_per_day: Mono Platform messages a day (each also a telemetry-sized burst).
        platform_message_bytes: Payload bytes of one platform message.
        sms_per_day: SMS the account sends to the device a day (not session traffic).
        sms_kind: ``2fa`` or ``a2p``.
        runaway_bytes_per_minute: A misbehaving device's uplink flood (0: none).
    """

    name: str
    destination: str = "closed"
    telemetry_interval_s: int = 0
    telemetry_up: int = 0
    telemetry_down: int = 0
    daily_upload_bytes: int = 0
    firmware_bytes: int = 0
    firmware_every_months: int = 3
    platform_messages_per_day: int = 0
    platform_message_bytes: int = 64
    sms_per_day: int = 0
    sms_kind: str = "a2p"
    runaway_bytes_per_minute: int = 0


PROFILES: Final[dict[str, TrafficProfile]] = {
    profile.name: profile
    for profile in (
        TrafficProfile("telemetry", telemetry_interval_s=600, telemetry_up=200, telemetry_down=100),
        TrafficProfile(
            "fleet",
            telemetry_interval_s=600,
            telemetry_up=200,
            telemetry_down=100,
            daily_upload_bytes=50_000,
            firmware_bytes=5_000_000,
        ),
        TrafficProfile("daily_upload", daily_upload_bytes=50_000),
        TrafficProfile("firmware", telemetry_interval_s=3600, telemetry_up=100, firmware_bytes=5_000_000),
        TrafficProfile("platform", platform_messages_per_day=24),
        TrafficProfile("sms", telemetry_interval_s=3600, telemetry_up=100, sms_per_day=2),
        TrafficProfile(
            "internet", destination="internet", telemetry_interval_s=900, telemetry_up=500, telemetry_down=2000
        ),
        TrafficProfile("runaway", telemetry_interval_s=600, telemetry_up=200, runaway_bytes_per_minute=2_000_000),
        TrafficProfile("idle"),
    )
}
"""The built-in profiles; a scenario may define more."""


@dataclass(frozen=True)
class Bursts:
    """Traffic of one SIM in an interval, one row per burst, sorted by time.

    Attributes:
        times: Seconds since the scenario start.
        up: Uplink bytes.
        down: Downlink bytes.
        messages: Platform messages carried by the burst (0 for plain traffic).
    """

    times: IntArray
    up: IntArray
    down: IntArray
    messages: IntArray

    def __len__(self) -> int:
        """Number of bursts."""
        return len(self.times)

    def volume(self) -> IntArray:
        """Bytes per burst, both directions."""
        return self.up + self.down

    def cut(self, count: int) -> Bursts:
        """The first ``count`` bursts."""
        return Bursts(self.times[:count], self.up[:count], self.down[:count], self.messages[:count])


def _empty() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def month_starts(origin_jst_s: int, start: int, end: int, every: int) -> list[int]:
    """Scenario seconds of the JST month starts from the month containing ``start`` up to ``end``.

    Only months whose index (year * 12 + month - 1) is a multiple of ``every`` are listed.
    """
    from datetime import UTC, datetime

    found: list[int] = []
    moment = datetime.fromtimestamp(origin_jst_s + start, UTC)
    year, month = moment.year, moment.month
    while True:
        at = int(datetime(year, month, 1, tzinfo=UTC).timestamp()) - origin_jst_s
        if at >= end:
            return found
        if (year * 12 + month - 1) % every == 0:
            found.append(at)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


@functools.lru_cache(maxsize=65_536)
def device_phases(seed: int, sim: int) -> tuple[float, float, float, float]:
    """A device's fixed phases in [0, 1): telemetry, platform messages, firmware day, spare."""
    telemetry, platform, firmware, spare = (float(keyed_uniform(seed, STREAM_PHASE, sim, 0, draw)) for draw in range(4))
    return telemetry, platform, firmware, spare


def all_device_phases(seed: int, count: int) -> npt.NDArray[np.float64]:
    """The phases of devices ``0 … count-1`` at once: row ``i`` is ``device_phases(seed, i)``."""
    sims = np.arange(count, dtype=np.int64)
    return np.stack(
        [keyed_uniform(seed, STREAM_PHASE, sims, np.zeros(count, np.int64), draw) for draw in range(4)], axis=1
    )


def daily_uploads(
    profile: TrafficProfile, seed: int, sims: npt.ArrayLike, days: npt.ArrayLike
) -> tuple[IntArray, IntArray]:
    """Second of the JST day and size (±10 %) of the daily upload of each (SIM, day), vectorised."""
    draw = keyed_uniform(seed, STREAM_TRAFFIC, sims, days)
    offsets = (draw * DAY).astype(np.int64)
    jitter = (draw * (1 << 20)) % 1.0
    sizes = (profile.daily_upload_bytes * (0.9 + 0.2 * jitter)).astype(np.int64)
    return np.atleast_1d(offsets), np.atleast_1d(sizes)


def session_bursts(profile: TrafficProfile, seed: int, sim: int, start: int, end: int, origin_jst_s: int) -> Bursts:
    """The bursts a device sends in ``[start, end)`` (scenario seconds)."""
    if end <= start:
        return Bursts(_empty(), _empty(), _empty(), _empty())
    phases = device_phases(seed, sim)
    parts: list[tuple[IntArray, IntArray, IntArray, IntArray]] = []
    if profile.telemetry_interval_s:
        interval = profile.telemetry_interval_s
        offset = int(phases[0] * interval)
        first = start + (offset - start) % interval
        times = np.arange(first, end, interval, dtype=np.int64)
        count = len(times)
        parts.append(
            (
                times,
                np.full(count, profile.telemetry_up),
                np.full(count, profile.telemetry_down),
                np.zeros(count, np.int64),
            )
        )
    first_day = (origin_jst_s + start) // DAY
    last_day = (origin_jst_s + end - 1) // DAY
    for day in range(first_day, last_day + 1):
        day_start = day * DAY - origin_jst_s
        if profile.daily_upload_bytes:
            upload_at, size = daily_uploads(profile, seed, sim, np.array([day]))
            at = day_start + int(upload_at[0])
            if start <= at < end:
                parts.append((np.array([at]), size, np.array([0]), np.array([0])))
        if profile.platform_messages_per_day:
            spacing = DAY // profile.platform_messages_per_day
            offsets = np.arange(profile.platform_messages_per_day, dtype=np.int64) * spacing + int(phases[1] * spacing)
            times = day_start + offsets
            times = times[(times >= start) & (times < end)]
            count = len(times)
            parts.append(
                (
                    times,
                    np.full(count, profile.platform_message_bytes),
                    np.zeros(count, np.int64),
                    np.ones(count, np.int64),
                )
            )
    if profile.firmware_bytes:
        for month_start in month_starts(origin_jst_s, start - 7 * DAY, end, profile.firmware_every_months):
            at = month_start + int(phases[2] * 7 * DAY)
            if start <= at < end:
                parts.append((np.array([at]), np.array([0]), np.array([profile.firmware_bytes]), np.array([0])))
    if profile.runaway_bytes_per_minute:
        times = np.arange(start + (-start) % 60, end, 60, dtype=np.int64)
        count = len(times)
        parts.append(
            (
                times,
                np.full(count, profile.runaway_bytes_per_minute),
                np.zeros(count, np.int64),
                np.zeros(count, np.int64),
            )
        )
    if not parts:
        return Bursts(_empty(), _empty(), _empty(), _empty())
    times = np.concatenate([part[0] for part in parts]).astype(np.int64)
    order = np.argsort(times, kind="stable")
    return Bursts(
        times[order],
        np.concatenate([part[1] for part in parts]).astype(np.int64)[order],
        np.concatenate([part[2] for part in parts]).astype(np.int64)[order],
        np.concatenate([part[3] for part in parts]).astype(np.int64)[order],
    )
