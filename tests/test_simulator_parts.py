"""The simulator's pure parts without SimPy: gateway, policies, coverage, traffic."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.coverage import Outages, merge, merge_arrays, route_outages
from devices.traffic import DAY, PROFILES, all_device_phases, device_phases, month_starts, session_bursts
from gateway.mobile_gateway import GatewayCommand, GatewayState, IllegalGatewayCommand, MobileGateway
from gateway.policy import MassTrafficPolicy, TrafficControl
from simulator.bulk_traffic import piece_traffic
from simulator.heap import keep_freed_blocks

SIM = "8981300000000000001"
ORIGIN = 1_767_225_600 + 9 * 3600  # 2026-01-01T00:00+09:00 in JST seconds


def gateway(*commands: GatewayCommand) -> MobileGateway:
    base = MobileGateway("gw-1", "acct-1").apply(GatewayCommand.ADD_SIM, (SIM,))
    for command in commands:
        base = base.apply(command)
    return base


@pytest.mark.parametrize(
    ("commands", "registered", "destination", "ok", "cause"),
    [
        ((GatewayCommand.POWER_ON, GatewayCommand.CONNECT_SWITCH), True, "closed", True, ""),
        ((GatewayCommand.POWER_ON,), True, "closed", False, "no_route"),
        ((GatewayCommand.CONNECT_SWITCH,), True, "closed", False, "gateway_off"),
        ((GatewayCommand.POWER_ON, GatewayCommand.CONNECT_SWITCH), False, "closed", False, "not_registered"),
        ((GatewayCommand.POWER_ON, GatewayCommand.ENABLE_INTERNET), True, "internet", True, ""),
        ((GatewayCommand.POWER_ON, GatewayCommand.CONNECT_SWITCH), True, "internet", False, "no_route"),
        ((GatewayCommand.POWER_ON, GatewayCommand.ENABLE_INTERNET), True, "closed", False, "no_route"),
    ],
)
def test_article_34_availability(
    commands: tuple[GatewayCommand, ...], registered: bool, destination: str, ok: bool, cause: str
) -> None:
    admission = gateway(*commands).admit(SIM, "350000000000001", destination, registered)
    assert (admission.ok, admission.cause) == (ok, cause)
    if ok:
        assert admission.route == destination


def test_terminal_lock_refuses_another_imei() -> None:
    locked = gateway(GatewayCommand.POWER_ON, GatewayCommand.CONNECT_SWITCH).apply(
        GatewayCommand.LOCK_IMEI, (SIM,), ("350000000000001",)
    )
    assert locked.admit(SIM, "350000000000001", "closed", True).ok
    assert locked.admit(SIM, "359999999999999", "closed", True).cause == "imei_mismatch"


def test_illegal_gateway_commands_leave_it_unchanged() -> None:
    on = gateway(GatewayCommand.POWER_ON)
    with pytest.raises(IllegalGatewayCommand):
        on.apply(GatewayCommand.POWER_ON)
    with pytest.raises(IllegalGatewayCommand):
        on.apply(GatewayCommand.ADD_SIM, (SIM,))
    deleted = on.apply(GatewayCommand.DELETE)
    for command in GatewayCommand:
        with pytest.raises(IllegalGatewayCommand):
            deleted.apply(command, (SIM,), ("1",))
    assert deleted.state is GatewayState.DELETED and on.state is GatewayState.ON
    assert deleted.admit(SIM, "", "closed", True).cause == "not_registered"


def test_ip_address_assignment_is_stable() -> None:
    two = gateway().apply(GatewayCommand.ADD_SIM, ("8981300000000000002",))
    assert two.address_of(SIM) == "10.128.0.16" and two.address_of("8981300000000000002") == "10.128.0.17"


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(1, 120), st.integers(0, 5_000_000)), min_size=1, max_size=80),
    st.integers(1, 20_000_000),
    st.integers(1, 3600),
)
def test_a_cut_session_carried_at_most_threshold_plus_one_window(
    gaps_and_sizes: list[tuple[int, int]], threshold: int, window: int
) -> None:
    times = np.cumsum([gap for gap, _ in gaps_and_sizes]).astype(np.int64)
    volumes = np.array([size for _, size in gaps_and_sizes], dtype=np.int64)
    policy = MassTrafficPolicy(threshold, window)
    cut = policy.cut_at(times, volumes)
    windows = [volumes[(times > t - window) & (times <= t)].sum() for t in times]
    if cut is None:
        assert max(windows) <= threshold
    else:
        assert windows[cut] > threshold and all(w <= threshold for w in windows[:cut])
        last_window = volumes[(times > times[cut] - window) & (times <= times[cut])].sum()
        assert last_window <= threshold + volumes[cut], "the cut comes with the burst that crossed the threshold"


def test_traffic_control_caps_after_the_quota() -> None:
    control = TrafficControl(quota_bytes=1000, throttle_kbps=8)
    allowed, hit = control.apply(np.array([400, 400, 400, 100_000]), used_before=100)
    assert hit and allowed.tolist() == [400, 400, 400, 60_000]


def test_outages() -> None:
    assert merge([(5, 10), (0, 3), (8, 12)]) == [(0, 3), (5, 12)]
    outages = Outages.of(((100, 200), (300, 400)))
    assert outages.state_at(50) == (False, 100)
    assert outages.state_at(100) == (True, 200)
    assert outages.state_at(250) == (False, 300)
    assert outages.state_at(500) == (False, 2**62)
    tunnel = route_outages(("tunnel",), seed=1, sim=7, horizon_s=30 * 86_400)
    assert tunnel == route_outages(("tunnel",), seed=1, sim=7, horizon_s=30 * 86_400)
    assert 0.02 < tunnel.total_seconds() / (30 * 86_400) < 0.09, "about 3 minutes an hour"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50)), max_size=40))
def test_vectorised_merge_equals_the_obvious_one(drawn: list[tuple[int, int]]) -> None:
    intervals = [(start, start + length) for start, length in drawn]
    starts, ends = merge_arrays(
        np.array([start for start, _ in intervals], dtype=np.int64),
        np.array([end for _, end in intervals], dtype=np.int64),
    )
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == merge(intervals)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PROFILES)), st.integers(0, 40 * 86_400), st.integers(1, 20 * 86_400), st.integers(0, 100))
def test_bursts_split_anywhere_add_up(profile: str, start: int, length: int, sim: int) -> None:
    middle = start + length // 3
    end = start + length
    whole = session_bursts(PROFILES[profile], 9, sim, start, end, ORIGIN)
    first = session_bursts(PROFILES[profile], 9, sim, start, middle, ORIGIN)
    second = session_bursts(PROFILES[profile], 9, sim, middle, end, ORIGIN)
    assert np.array_equal(whole.times, np.concatenate([first.times, second.times]))
    assert np.array_equal(whole.volume(), np.concatenate([first.volume(), second.volume()]))
    assert np.array_equal(whole.messages, np.concatenate([first.messages, second.messages]))


def test_phases_drawn_at_once_equal_those_drawn_one_by_one() -> None:
    table = all_device_phases(seed=42, count=300)
    assert [tuple(row) for row in table.tolist()] == [device_phases(42, sim) for sim in range(300)]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["telemetry", "fleet", "daily_upload", "firmware", "internet", "idle"]),
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 60 * 86_400), st.integers(1, 9 * 86_400)), min_size=1, max_size=6
    ),
    st.integers(0, 1000),
)
def test_counted_traffic_equals_the_sum_of_generated_bursts(
    name: str, sessions: list[tuple[int, int, int]], seed: int
) -> None:
    """The arithmetic of the fast engine against the bursts of the reference, per (SIM, JST day)."""
    profile, origin = PROFILES[name], 1_767_193_200 + 9 * 3600  # 2026-01-01 00:00 JST
    sims = np.array([sim for sim, _, _ in sessions], dtype=np.int64)
    starts = np.array([start for _, start, _ in sessions], dtype=np.int64)
    ends = starts + np.array([length for _, _, length in sessions], dtype=np.int64)
    firmware = np.array(month_starts(origin, -7 * DAY, int(ends.max()), profile.firmware_every_months), dtype=np.int64)
    pieces = piece_traffic(profile, seed, origin, sims, starts, ends, all_device_phases(seed, 6), firmware)
    counted: dict[tuple[int, int], list[int]] = {}
    for session, day, up, down in zip(pieces.session, pieces.day, pieces.up, pieces.down, strict=True):
        total = counted.setdefault((int(session), int(day)), [0, 0])
        total[0] += int(up)
        total[1] += int(down)
    generated: dict[tuple[int, int], list[int]] = {}
    for session, (sim, start, end) in enumerate(zip(sims, starts, ends, strict=True)):
        bursts = session_bursts(profile, seed, int(sim), int(start), int(end), origin)
        for time, up, down in zip(bursts.times, bursts.up, bursts.down, strict=True):
            total = generated.setdefault((session, int((origin + time) // DAY)), [0, 0])
            total[0] += int(up)
            total[1] += int(down)

    def carrying(totals: dict[tuple[int, int], list[int]]) -> dict[tuple[int, int], list[int]]:
        return {key: value for key, value in totals.items() if sum(value)}

    assert carrying(counted) == carrying(generated)


def test_large_freed_blocks_are_kept_for_reuse_on_linux() -> None:
    """The fast engine's batches reuse their memory (glibc's thresholds are raised)."""
    assert keep_freed_blocks() is sys.platform.startswith("linux")


def test_an_unknown_engine_is_an_error_not_a_fallback() -> None:
    import pytest

    from simulator.runner import run_scenario
    from simulator.scenario import load_scenario

    scenario = load_scenario(ROOT / "scenarios/pin-lockout.toml")
    with pytest.raises(ValueError, match="unknown engine 'slow'"):
        run_scenario(scenario, engine_name="slow")
