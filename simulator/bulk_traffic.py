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
        sim: The SIM number of each piece.
        day: JST day number.
        start: Scenario second the piece starts.
        end: Scenario second the piece ends (exclusive).
        up: Uplink bytes.
        down: Downlink bytes.
        day_groups: Where each run of pieces of one (SIM, day) begins, when known.
    """

    session: IntArray
    sim: IntArray
    day: IntArray
    start: IntArray
    end: IntArray
    up: IntArray
    down: IntArray
    day_groups: IntArray | None = None


def cut_at_midnights(
    sims: IntArray, starts: IntArray, ends: IntArray, origin_jst_s: int
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Sessions ``[starts[i], ends[i])`` of SIMs ``sims[i]`` cut at JST midnights.

    Returns:
        The session, SIM, JST day, start and end of each piece, in session order.
    """
    first_day = (origin_jst_s + starts) // DAY
    counts = (origin_jst_s + ends - 1) // DAY - first_day + 1
    if int(counts.max(initial=1)) == 1:  # no session crosses a midnight: one piece each
        return np.arange(len(starts)), sims, first_day, starts, ends
    # piece p of a session whose first piece is at position b lies on day first_day + (p - b)
    first_piece = np.cumsum(counts) - counts
    session = np.repeat(np.arange(len(starts)), counts)
    day = (first_day - first_piece)[session] + np.arange(len(session))
    start, end = starts[session], ends[session]
    # only the pieces of sessions that cross a midnight need clipping to their day
    crossing = np.flatnonzero(counts > 1)
    crossing_counts = counts[crossing]
    clipped = np.repeat(first_piece[crossing] - (np.cumsum(crossing_counts) - crossing_counts), crossing_counts)
    clipped += np.arange(len(clipped))
    day_start = day[clipped] * DAY - origin_jst_s
    start[clipped] = np.maximum(start[clipped], day_start)
    end[clipped] = np.minimum(end[clipped], day_start + DAY)
    return session, sims[session], day, start, end


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
            from a week before the first session on, in time order.
    """
    session, sim, day, start, end = cut_at_midnights(sims, starts, ends, origin_jst_s)
    if profile.telemetry_interval_s:
        interval = profile.telemetry_interval_s
        offset = ((phases[sims, 0] * interval).astype(np.int64) + 1)[session]
        ticks = (end - offset) // interval - (start - offset) // interval
        up, down = ticks * profile.telemetry_up, ticks * profile.telemetry_down
    else:
        up, down = np.zeros(len(day), dtype=np.int64), np.zeros(len(day), dtype=np.int64)
    groups = None
    if profile.daily_upload_bytes and len(day):
        # one upload per (SIM, day), drawn once: the pieces of one are adjacent
        groups = np.flatnonzero(np.concatenate(([True], (sim[1:] != sim[:-1]) | (day[1:] != day[:-1]))))
        upload_at, size = daily_uploads(profile, seed, sim[groups], day[groups])
        at = np.repeat(day[groups] * DAY - origin_jst_s + upload_at, np.diff(np.append(groups, len(day))))
        carrying = np.flatnonzero((at >= start) & (at < end))
        up[carrying] += size[np.searchsorted(groups, carrying, side="right") - 1]  # the group of each
    if profile.firmware_bytes and len(day) and len(firmware_months):
        # a download at month start + shift (shift under a week) falls on one of the eight days
        # from a month start; months being weeks apart, a day can only hold its month's download
        candidate = np.full(int(day.max()) + 1, -1, dtype=np.int64)
        for month_start in firmware_months.tolist():
            near_day = (month_start + origin_jst_s) // DAY
            candidate[max(near_day - 1, 0) : max(near_day + 8, 0)] = month_start
        near = np.flatnonzero((candidate >= 0)[day])
        at = candidate[day[near]] + (phases[sim[near], 2] * 7 * DAY).astype(np.int64)
        down[near[(at >= start[near]) & (at < end[near])]] += profile.firmware_bytes
    return Pieces(session, sim, day, start, end, up, down, groups)


def daily_records(
    routes: IntArray, pieces: Pieces
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """One record per (SIM, JST day) with traffic: the sums of its pieces.

    The pieces must come grouped by SIM and in time order within a SIM (as the fast engine plans
    devices one by one, stretch after stretch). A record is stamped at the last second of the
    day's last piece with traffic and keeps the route of the day's first such piece.

    Args:
        routes: The route code of each session.
        pieces: The sessions' pieces.

    Returns:
        SIM number, day, up, down, stamp and route code per record.
    """
    sim, day = pieces.sim, pieces.day
    carrying = (pieces.up + pieces.down) > 0
    if not len(day) or not carrying.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty, empty
    first = pieces.day_groups
    if first is None:
        first = np.flatnonzero(np.concatenate(([True], (sim[1:] != sim[:-1]) | (day[1:] != day[:-1]))))
    up = np.add.reduceat(pieces.up, first)
    down = np.add.reduceat(pieces.down, first)
    kept = np.flatnonzero((up + down) > 0)
    # a kept group has a carrying piece: its first and last are found among the carrying positions
    # (far fewer groups than pieces; pieces of a group are in time order, so its last ends last)
    carriers = np.flatnonzero(carrying)
    group_end = np.append(first[1:], len(day))
    first_carrying = carriers[np.searchsorted(carriers, first[kept])]
    last_carrying = carriers[np.searchsorted(carriers, group_end[kept]) - 1]
    return (
        sim[first[kept]],
        day[first[kept]],
        up[kept],
        down[kept],
        pieces.end[last_carrying] - 1,
        routes[pieces.session[first_carrying]],
    )
