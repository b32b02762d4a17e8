"""Simulator invariants under random scenarios (the scenarios of the differential test).

Whatever hypothesis draws — gateways switched and deleted, SIMs deleted and re-registered, PIN
lockouts, coverage outages — the log the simulator writes keeps the rules of the service:
traffic only inside a session of a registered SIM, no session of a locked or dead SIM, and no
charge for a deleted SIM after its deletion month.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from test_engine_differential import resolve_times, scenarios

from metering.fast import rate_events
from metering.timeutil import month_of_instant
from simulator.fast_engine import FastEngine
from simulator.scenario import ScenarioError, scenario_from_text


def fields(event: Any) -> dict[str, Any]:
    return json.loads(event.extra) if event.extra else {}


@settings(
    max_examples=int(os.environ.get("MGWSIM_DIFFERENTIAL_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_the_log_keeps_the_rules_of_the_service(text: str) -> None:
    text = text.replace('traffic_records = "daily"', 'traffic_records = "session"')
    try:
        scenario = scenario_from_text(resolve_times(text), "drawn.toml")
    except ScenarioError as exc:
        assume(not any(word in str(exc) for word in ("exist then", "exists then", "enabled then")))
        raise
    events = list(FastEngine(scenario).run())
    registered: dict[str, bool] = {}
    blocked: dict[str, str] = {}
    open_sessions: dict[str, tuple[str, str]] = {}  # session -> (sim, imei)
    deleted_in: dict[str, int] = {}
    for event in events:  # in log order
        if event.type == "sim.registered" and event.sim:
            registered[event.sim] = True
            deleted_in.pop(event.sim, None)
        elif event.type == "sim.deleted" and event.sim:
            registered[event.sim] = False
            deleted_in[event.sim] = month_of_instant(event.ts)
        elif event.type in ("sim.locked", "sim.dead"):
            blocked[fields(event)["sim"]] = event.type
        elif event.type == "sim.unlocked":
            blocked.pop(fields(event)["sim"], None)
        elif event.type == "session.created":
            found = fields(event)
            sim = found["sim"]
            assert registered.get(sim), f"session of unregistered {sim}"
            assert sim not in blocked, f"session of a {blocked.get(sim)} SIM {sim}"
            open_sessions[found["session"]] = (sim, found["imei"])
        elif event.type == "session.deleted" and "session" in fields(event):
            open_sessions.pop(fields(event)["session"], None)
        elif event.type == "sim.traffic":
            assert event.session in open_sessions, f"traffic outside a session: {event.id}"
            assert registered.get(event.sim or ""), f"traffic of an unregistered SIM: {event.id}"
    rating = rate_events(events, scenario.tariff, scenario.billing_months)
    assert not rating.errors
    for month, document in rating.documents.items():
        for invoice in document.invoices:
            for line in invoice.lines:
                if line.subject in deleted_in:
                    assert month <= deleted_in[line.subject], f"{line.subject} charged after its deletion"
