"""The PNG report of a run (matplotlib): charges, SIM states, traffic and interruptions."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from metering.atomic import AtomicWriter
from metering.rules import ITEMS
from metering.timeutil import format_month

if TYPE_CHECKING:
    from simulator.results import RunResult

EPOCH = date(1970, 1, 1)


def write_report(result: RunResult, path: Path) -> None:
    """Draw the four panels of a run into ``path`` (PNG, written atomically)."""
    figure = report_figure(result)
    with AtomicWriter(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def report_figure(result: RunResult) -> Figure:
    """The report's figure: charges per month by item, SIMs by state, traffic per day, cut sessions.

    Counts (SIMs, sessions) are drawn on axes with whole-number ticks only.
    """
    figure, axes = plt.subplots(2, 2, figsize=(13, 8), dpi=90)
    figure.suptitle(
        f"mgwsim — {result.scenario.name}: {result.scenario.sim_count} SIMs, {result.scenario.months} month(s)"
    )

    charges = result.charges_by_item()
    months = sorted(charges)
    labels = [format_month(month) for month in months]
    bottom = [0.0] * len(months)
    panel = axes[0][0]
    for item in ITEMS:
        values = [float(charges[month].get(item, 0)) for month in months]
        if any(values):
            panel.bar(labels, values, bottom=bottom, label=item)
            bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    panel.set_title(f"charges per month by item ({result.scenario.tariff.currency}, before tax)")
    panel.legend(fontsize=7)

    panel = axes[0][1]
    days = sorted(result.stats.status_per_day)
    start = EPOCH + timedelta(seconds=(result.scenario.start_us // 1_000_000 + 9 * 3600))
    when = [start + timedelta(days=day) for day in days]
    for status in ("registered", "active", "locked", "unlocked", "dead"):
        values = [result.stats.status_per_day[day].get(status, 0) for day in days]
        if any(values):
            panel.plot(when, values, label=status)
    panel.set_title("SIMs by state (daily)")
    panel.yaxis.set_major_locator(MaxNLocator(integer=True))
    panel.legend(fontsize=7)

    panel = axes[1][0]
    traffic = sorted(result.stats.traffic_per_day.items())
    panel.bar([EPOCH + timedelta(days=day) for day, _ in traffic], [volume / 1e6 for _, volume in traffic], width=0.9)
    panel.set_title("traffic per day (MB, up + down)")

    panel = axes[1][1]
    cuts = sorted(result.stats.interruptions_per_day.items())
    panel.bar(
        [EPOCH + timedelta(days=day) for day, _ in cuts], [count for _, count in cuts], width=0.9, color="tab:red"
    )
    panel.set_title(f"sessions cut for mass traffic (Art. 49(2)): {result.stats.interruptions}")
    panel.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not cuts:
        panel.text(0.5, 0.5, "none", ha="center", va="center", transform=panel.transAxes)
        panel.set_xticks([])
        panel.set_yticks([])
    for row in axes:
        for panel in row:
            for label in panel.get_xticklabels():
                label.set_rotation(30)
                label.set_fontsize(7)
    figure.tight_layout()
    return figure
