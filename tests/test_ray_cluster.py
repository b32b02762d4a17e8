"""``--engine ray`` on a real two-node Ray cluster on this machine, as a user would run one.

The cluster is started with Ray's own command line: ``ray start --head`` and a second node with
``ray start --address …``, each its own raylet with 1 CPU. The run is ``mgwsim run … --engine ray
--ray-address``; its invoices must be byte-identical to the serial run's, also when a worker is
killed with SIGKILL in the middle of a shard (Ray runs the shard again).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, folder_files

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mgwsim[ray]'")

RAY = Path(sys.executable).parent / "ray"
SCENARIO = ROOT / "scenarios" / "load-100k.toml"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "COLUMNS": "200"}
"""A throw-away cluster on one machine: no token (a real cluster keeps Ray's token authentication)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ray(*args: str) -> str:
    done = subprocess.run([str(RAY), *args], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a running two-node cluster (head and one worker node, 1 CPU each)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX
    try:
        head = _ray(
            "start", "--head", f"--port={_free_port()}", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={temp}", "--disable-usage-stats",
        )  # fmt: skip
        found = re.search(r"ray start --address='([^']+)'", head)
        assert found, head
        address = found.group(1)
        _ray("start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats")
        deadline = time.monotonic() + 60
        while "/2.0 CPU" not in (status := _ray("status", f"--address={address}")):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert status.count("node_") >= 2, status
        yield address
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _run(out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator.cli",
            "-v",
            "run",
            str(SCENARIO),
            "--scale",
            "0.03",
            "--out",
            str(out),
            *extra,
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def serial_invoices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial") / "run"
    run = _run(out)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    return _invoices(out)


def _invoices(out: Path) -> dict[str, bytes]:
    found = {path.name: path.read_bytes() for path in sorted((out / "invoices").iterdir())}
    assert len(found) == 12
    return found


def _shard_workers() -> list[int]:
    """Processes of Ray workers running a shard right now (Ray titles them ``ray::_shard``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::_shard"):
                found.append(int(entry.name))
    return found


def test_two_nodes_give_the_serial_invoices_and_the_driver_holds_a_few_shards(
    cluster: str, serial_invoices: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = _run(out, "--engine", "ray", "--ray-address", cluster)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    assert _invoices(out) == serial_invoices
    held = re.search(r"(\d+) shards joined, at most (\d+) results held at once \(window (\d+)\)", err)
    assert held, err[-2000:]
    shards, most, window = map(int, held.groups())
    assert shards == 10 and window == 4 and most <= window < shards


def test_a_worker_killed_in_the_middle_of_a_shard_is_retried_and_the_invoices_are_the_same(
    cluster: str, serial_invoices: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = _run(out, "--engine", "ray", "--ray-address", cluster)
    killed = 0
    while run.poll() is None and not killed:
        for pid in _shard_workers():
            os.kill(pid, signal.SIGKILL)
            killed += 1
            break
        time.sleep(0.02)
    _, err = run.communicate(timeout=600)
    assert killed == 1, "no shard was caught running"
    assert run.returncode == 0, err[-2000:]
    assert _invoices(out) == serial_invoices


def test_a_run_in_shards_on_the_cluster_writes_the_serial_run_folder_byte_for_byte(
    cluster: str, serial_invoices: dict[str, bytes], tmp_path: Path
) -> None:
    """With --shard-sims below the fleet, --engine ray runs the serial run's shards as its tasks.

    Its whole folder (the Parquet log, whose row groups follow the shards, the invoices, the
    summary, the report) is the serial run's in shards, byte for byte; the invoices are those of
    the run whole.
    """
    serial, out = tmp_path / "serial", tmp_path / "ray"
    for folder, extra in ((serial, ()), (out, ("--engine", "ray", "--ray-address", cluster))):
        run = _run(folder, *extra, "--shard-sims", "1000", "--log-format", "parquet")  # fewer than 1 M events
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-2000:]
    assert "4 shards joined" in err  # 10 accounts of 300 SIMs: 3, 3, 3 and 1 a shard
    assert _invoices(out) == serial_invoices
    written = folder_files(out)
    assert {"events.parquet", "summary.json", "report.png", "manifest.json"} <= set(written)
    assert written == folder_files(serial)


def test_an_address_nothing_answers_on_is_refused_at_once_naming_it(tmp_path: Path) -> None:
    """Ray's own ``ray.init`` retries such an address for minutes; mgwsim says so in one line, exit 3."""
    address = f"127.0.0.1:{_free_port()}"
    began = time.monotonic()
    run = _run(tmp_path / "run", "--engine", "ray", "--ray-address", address)
    try:
        _, err = run.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        pytest.fail(f"mgwsim still waited for {address} after 90 s")
    assert run.returncode == 3
    assert (
        err.strip().splitlines()[-1] == f"mgwsim: error: cannot reach the Ray cluster at {address}: Connection refused"
    )
    assert time.monotonic() - began < 60
    assert not (tmp_path / "run").exists()


def test_the_probe_reads_every_address_form_and_leaves_the_others_to_ray() -> None:
    from simulator.ray_engine import RayUnavailable, probe_address

    port = _free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", f"[::1]:{port}"):
        with pytest.raises(RayUnavailable, match=re.escape(f"cannot reach the Ray cluster at {address}: ")):
            probe_address(address)
    for address in ("auto", "local", "127.0.0.1", "ray://"):
        probe_address(address)  # not HOST:PORT: ray.init decides
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        probe_address(f"127.0.0.1:{listening.getsockname()[1]}")  # something answers: on to ray.init
