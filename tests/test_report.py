"""The PNG report: counts are drawn as whole numbers (the SIMs-by-state axis once read 19.2, 19.4 …)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from simulator.report import report_figure
from simulator.runner import run_scenario
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_the_axes_of_counts_have_whole_number_ticks_only() -> None:
    result = run_scenario(load_scenario(ROOT / "scenarios" / "quickstart.toml"), keep_events=False)
    figure = report_figure(result)
    try:
        states, cuts = figure.axes[1], figure.axes[3]
        assert "SIMs by state" in states.get_title() and "sessions cut" in cuts.get_title()
        low, high = states.get_ylim()
        assert high - low < 3, "20 SIMs, one leaving: the default ticks fall between whole numbers (19.2, 19.4 …)"
        ticks = [float(tick) for tick in states.get_yticks() if low <= tick <= high]
        assert len(ticks) >= 2 and all(tick.is_integer() for tick in ticks), ticks
        cut_ticks = [float(tick) for tick in cuts.get_yticks()]
        assert all(tick.is_integer() for tick in cut_ticks), cut_ticks
    finally:
        plt.close(figure)
