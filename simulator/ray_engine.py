"""``--engine ray``: the fast engine, one Ray task per account or shard, for fleets beyond one process.

Accounts share nothing in a scenario (a fleet's gateway belongs to its account), so each account
— or, in a run in shards, each shard of whole accounts, the serial run's own — is simulated and
rated on its own (:func:`~simulator.shard.simulate_shard`) as a Ray task; the driver joins the
invoices, the figures and — when asked — the event logs.

Randomness needs no coordination: every random draw of a SIM comes from a stream keyed by
``(seed, stream, SIM number, period)`` (a ``numpy.random.SeedSequence`` per key, or the counter
hash of :mod:`devices.keyed_random`), and a shard keeps the SIM numbers, ICCIDs and operation
numbers of the whole scenario. The shards therefore write exactly the events of a serial run, and
the invoices are byte-identical to it.

Without an address a local Ray is started with the machine's CPUs (``num_cpus``); with
``ray://…`` or ``HOST:PORT`` the tasks go to that cluster, whose workers must have mgwsim installed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from metering.atomic import STOP_SIGNALS
from metering.compact import CompactLog, concatenate_logs
from metering.events import Event
from metering.store import THREADS_VARIABLE
from simulator.results import ShardResult, join_shards
from simulator.scenario import Scenario
from simulator.shard import simulate_shard

LOG = logging.getLogger(__name__)
"""How the shards were joined, at INFO (``mgwsim -v``)."""


class RayUnavailable(Exception):
    """Ray is not installed, or the cluster cannot be reached (one-line message)."""


PROBE_SECONDS = 5.0
"""How long a cluster's address may take to accept a connection before the run is refused.

``ray.init`` itself retries an address that does not answer for minutes before it fails."""
CLIENT_PORT = 10001
"""The port of a ``ray://HOST`` address without one (Ray Client's default)."""


def probe_address(address: str) -> None:
    """Refuse at once an address of the form ``HOST:PORT`` or ``ray://HOST[:PORT]`` that nothing answers on.

    Other forms (``auto``, ``local``) are left to ``ray.init``.

    Raises:
        RayUnavailable: Naming the address and why it cannot be reached.
    """
    client = address.startswith("ray://")
    where = address.removeprefix("ray://").split("/", 1)[0]
    host, colon, port_text = where.rpartition(":")
    if not colon:
        host, port_text = (where, str(CLIENT_PORT)) if client else ("", "")
    if not host or not port_text.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port_text)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {reason}") from None


_AUTH_SETUP_LOGGER: Final = "ray._private.authentication.authentication_token_setup"
"""The logger of Ray's notices about its token authentication."""

_DEFAULT_AUTH_NOTICE: Final = "Token authentication is enabled for this Ray cluster."
"""How Ray's notice begins, on every ``ray.init`` with ``RAY_AUTH_MODE`` unset, that its default is on."""


def _without_default_auth_notice(record: logging.LogRecord) -> bool:
    """Drop Ray's notice that its default, token authentication, is on; keep every other record.

    A warning that authentication is *off* still reaches the user.
    """
    return not record.getMessage().startswith(_DEFAULT_AUTH_NOTICE)


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray; return whether this call started it.

    Raises:
        RayUnavailable: If Ray is missing or the cluster does not answer.
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'mgwsim[ray]'") from None
    if ray.is_initialized():
        return False
    if address is not None:
        probe_address(address)
    logging.getLogger(_AUTH_SETUP_LOGGER).addFilter(_without_default_auth_notice)
    handlers = _stop_handlers()
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise RayUnavailable(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    except BaseException as stopped:  # stopped while ray.init ran: take down the Ray it was starting
        ray.shutdown()
        caller = handlers.get(signal.SIGTERM)
        if isinstance(stopped, SystemExit) and stopped.code == signal.SIGTERM and callable(caller):
            caller(signal.SIGTERM, None)  # ray.init's handler exited: the caller's own way to stop instead
        raise
    finally:
        _restore(handlers)
    return True


def _stop_handlers() -> dict[signal.Signals, Any]:
    """The caller's handlers of the stop signals, which ``ray.init`` may replace (empty off the main thread).

    Ray's ``worker.init`` sets SIGTERM's; SIGINT's is saved as well, in case Ray's core worker sets one.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in STOP_SIGNALS}


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    """Put back the handlers ``ray.init`` replaced.

    ``ray.init`` makes SIGTERM exit the driver at once (status 1, a stack dump from its core
    worker); the caller's handler unwinds instead, so a stopped run removes what it was writing.
    """
    for number, handler in handlers.items():
        if handler is not None:  # (None: set outside Python, nothing to put back)
            signal.signal(number, handler)


SHARD_RETRIES = 3
"""How often Ray runs a shard again whose worker died (a shard is idempotent: it only reads the scenario)."""


def run_sharded(
    scenario: Scenario,
    rater: str,
    address: str | None,
    keep_events: bool,
    progress: Callable[[float], None] | None = None,
    num_cpus: int | None = None,
    window: int | None = None,
) -> ShardResult:
    """Simulate and rate every account as a Ray task; join the results in account order (see :func:`shard_results`)."""
    total: ShardResult | None = None
    logs: list[Sequence[Event]] = []
    for result in shard_results(scenario, rater, address, keep_events, progress, num_cpus, window):
        if keep_events:  # the log is the output itself: kept as the shards' pieces, joined once
            logs.append(result.events)
            result = dataclasses.replace(result, events=[])
        total = result if total is None else join_shards([total, result])  # only the running join is kept
    if total is None:
        return join_shards([])
    return dataclasses.replace(total, events=concatenate_logs(logs)) if any(logs) else total


def shard_results(
    scenario: Scenario,
    rater: str,
    address: str | None,
    keep_events: bool,
    progress: Callable[[float], None] | None = None,
    num_cpus: int | None = None,
    window: int | None = None,
    lay_out: bool = False,
    tasks: Sequence[frozenset[str]] | None = None,
) -> Iterator[ShardResult]:
    """Every task (by default one account each) simulated and rated on Ray, its result handed out in account order.

    ``tasks`` are shards of whole accounts in account order (:func:`~simulator.streamed_run.shards_of`).
    With ``lay_out`` each worker hands back its invoice documents as text and its rating as the
    digest (:func:`~simulator.streamed_run.laid_out`), as a run in shards writes them.

    At most ``window`` tasks (default: twice the cluster's CPUs) are submitted or waiting to be
    handed out at any time, so the driver holds a few shards' results, not the fleet's: a result
    is handed out as soon as the accounts before it are. A task whose worker dies (SIGKILL, a
    lost node) is run again by Ray, up to :data:`SHARD_RETRIES` times.

    Raises:
        RayUnavailable: When Ray cannot be reached, or a shard failed after its retries.
    """
    import ray

    started = start_ray(address, num_cpus)
    try:
        task = ray.remote(max_retries=SHARD_RETRIES)(_shard)
        shared = ray.put(scenario)
        shards = list(tasks) if tasks is not None else [frozenset({account}) for account in sorted(scenario.accounts)]
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        limit = window or max(2, 2 * int(resources.get("CPU", 1)))
        positions: dict[Any, int] = {}
        ready: dict[int, ShardResult] = {}
        handed = submitted = held = 0
        while handed < len(shards):
            while submitted < len(shards) and len(positions) + len(ready) < limit:
                # Ray's stubs type remote functions of up to four parameters; _shard has five
                reference = task.remote(shared, shards[submitted], rater, keep_events, lay_out)  # type: ignore[call-arg]
                positions[reference] = submitted
                submitted += 1
            done, _ = ray.wait(list(positions), num_returns=1)
            for reference in done:
                position = positions.pop(reference)
                try:
                    ready[position] = ray.get(reference)
                except ray.exceptions.RayError as exc:
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    raise RayUnavailable(
                        f"shard of {_named(shards[position])} failed after {SHARD_RETRIES} retries: {reason}"
                    ) from None
            held = max(held, len(ready))
            while handed in ready:
                yield ready.pop(handed)
                handed += 1
            if progress is not None:
                progress(handed / len(shards))
        LOG.info("%d shards joined, at most %d results held at once (window %d)", len(shards), held, limit)
    finally:
        if started:
            ray.shutdown()


def _named(accounts: frozenset[str]) -> str:
    """``account A`` or ``accounts A, B`` (a shard in an error)."""
    return ("account " if len(accounts) == 1 else "accounts ") + ", ".join(sorted(accounts))


def _shard(
    scenario: Scenario, accounts: frozenset[str], rater: str, keep_events: bool, lay_out: bool = False
) -> ShardResult:
    # one task per CPU already: DuckDB's own threads would only fight the other tasks for the cores
    os.environ.setdefault(THREADS_VARIABLE, "1")
    result = simulate_shard(scenario, accounts, rater, "fast", keep_events)
    if isinstance(result.events, CompactLog):  # sorted here, on a worker's core, not by the driver
        result.events.put_in_log_order()
    if lay_out:  # a run in shards: the worker lays out its invoice text, the driver only appends it
        from simulator.streamed_run import laid_out

        return laid_out(result)
    return result
