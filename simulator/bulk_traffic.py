"""The traffic of many sessions of many devices at once, counted arithmetically.

The fast engine knows each session's interval; what a device sends in it follows from its
profile and its fixed phases: telemetry every ``interval`` seconds at the device's offset, a daily
upload at a keyed random second of each JST day, a firmware download at a keyed day of every
``firmware_every_months``-th month. No burst is generated: each session is cut at JST midnights
into pieces, and each piece's bytes are counted with integer arithmetic — the same numbers
:func:`devices.traffic.session_bursts` would sum (the differential test holds the engines to it).

Sessions of devices with the same profile are done together, so the numpy overhead is paid once
per batch rather than once per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from devices.traffic import DAY, TrafficProfile, daily_uploads

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Pieces:
    """Sessions cut at JST midnights, with the traffic of each piece.

    Rows are in the order of the sessions (and in time order within a session).

    Attributes:
        session: The session (its position in the input) of each piece.
        day: JST day number.
        start: Scenario second the piece starts.
        end: Scenario second the piece ends (exclusive).
        up: Uplink bytes.
        down: Downlink bytes.
    """

    session: IntArray
    day: IntArray
    start: IntArray
    end: IntArray
    up: IntArray
    down: IntArray


def split_at_midnights(starts: IntArray, ends: IntArray, origin_jst_s: int) -> tuple[IntArray, IntArray]:
    """The session and JST day of each piece of sessions ``[starts[i], ends[i])`` cut at midnights."""
    first_day = (origin_jst_s + starts) // DAY
    counts = (origin_jst_s + ends - 1) // DAY - first_day + 1
    if int(counts.max(initial=1)) == 1:  # no session crosses a midnight: one piece each
        return np.arange(len(starts)), first_day
    session = np.repeat(np.arange(len(starts)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return session, first_day[session] + offsets


def piece_traffic(
    profile: TrafficProfile,
    seed: int,
    origin_jst_s: int,
    sims: IntArray,
    starts: IntArray,
    ends: IntArray,
    phases: npt.NDArray[np.float64],
    firmware_months: IntArray,
) -> Pieces:
    """The pieces of sessions and their bytes.

    Args:
        profile: The profile of every device concerned.
        seed: The scenario seed.
        origin_jst_s: The scenario start in JST seconds since the epoch.
        sims: The SIM number of each session.
        starts: Session starts (scenario seconds).
        ends: Session ends (exclusive).
        phases: Phases per SIM number (rows of :func:`devices.traffic.device_phases`).
        firmware_months: Scenario seconds of the starts of the months with a firmware download,
            from a week before the first session on.
    """
    session, day = split_at_midnights(starts, ends, origin_jst_s)
    sim = sims[session]
    start = np.maximum(starts[session], day * DAY - origin_jst_s)
    end = np.minimum(ends[session], (day + 1) * DAY - origin_jst_s)
    up = np.zeros(len(day), dtype=np.int64)
    down = np.zeros(len(day), dtype=np.int64)
    if profile.telemetry_interval_s:
        interval = profile.telemetry_interval_s
        offset = (phases[sim, 0] * interval).astype(np.int64)
        ticks = (end - 1 - offset) // interval - (start - 1 - offset) // interval
        up += ticks * profile.telemetry_up
        down += ticks * profile.telemetry_down
    if profile.daily_upload_bytes and len(day):
        # draw once per (SIM, day): the pieces of one are adjacent
        first = np.flatnonzero(np.concatenate(([True], (sim[1:] != sim[:-1]) | (day[1:] != day[:-1]))))
        lengths = np.diff(np.append(first, len(day)))
        upload_at, size = daily_uploads(profile, seed, sim[first], day[first])
        at = day * DAY - origin_jst_s + np.repeat(upload_at, lengths)
        up += np.where((at >= start) & (at < end), np.repeat(size, lengths), 0)
    if profile.firmware_bytes and len(day):
        shift = (phases[sim, 2] * 7 * DAY).astype(np.int64)
        for month_start in firmware_months.tolist():
            at = month_start + shift
            down += np.where((at >= start) & (at < end), profile.firmware_bytes, 0)
    return Pieces(session, day, start, end, up, down)


def daily_records(
    sims: IntArray, routes: IntArray, pieces: Pieces
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """One record per (SIM, JST day) with traffic: the sums of its pieces.

    The pieces must come grouped by SIM and in time order within a SIM (as the fast engine plans
    devices one by one, stretch after stretch). A record is stamped at the last second of the
    day's last piece with traffic and keeps the route of the day's first such piece.

    Args:
        sims: The SIM number of each session.
        routes: The route code of each session.
        pieces: The sessions' pieces.

    Returns:
        SIM number, day, up, down, stamp and route code per record.
    """
    carrying = (pieces.up + pieces.down) > 0
    sim = sims[pieces.session][carrying]
    day = pieces.day[carrying]
    if not len(day):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty, empty
    first = np.flatnonzero(np.concatenate(([True], (sim[1:] != sim[:-1]) | (day[1:] != day[:-1]))))
    return (
        sim[first],
        day[first],
        np.add.reduceat(pieces.up[carrying], first),
        np.add.reduceat(pieces.down[carrying], first),
        np.maximum.reduceat(pieces.end[carrying], first) - 1,
        routes[pieces.session][carrying][first],
    )
