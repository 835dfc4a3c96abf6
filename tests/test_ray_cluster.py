"""Simulations on an existing Ray cluster (``flower.ray_address``).

A one-node cluster is started with ``ray start --head --block`` on 127.0.0.1 in a temporary directory,
in a process session of its own; one SL round and one FL round run on it; the cluster's own record of
its actors (Ray's GCS) must list the virtual clients' actors, which a local Ray (the address ignored)
would not. Only that session's processes are stopped at the end (``ray stop`` would stop every Ray on
the machine, other tests' too).
"""

from __future__ import annotations

import os
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

from fl_split.config import ConfigError
from fl_split.fl.config import load_fl_config
from fl_split.launch import free_port
from fl_split.sl.config import load_sl_config

RAY = Path(sys.executable).with_name("ray")


def _session(sid: int) -> list[int]:
    """The processes of session ``sid``: ``ray start --block`` in a session of its own and everything it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # after "pid (comm)": state, ppid, pgrp, session
                pids.append(int(entry.name))
    return pids


def _stop(sid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while _session(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A running one-node Ray cluster on 127.0.0.1: its address (``host:port``)."""
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    folder = tempfile.mkdtemp(prefix="flsray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    cmd += [f"--temp-dir={folder}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    cmd += [f"--ray-client-server-port={free_port()}"]  # not the fixed 10001 another cluster may hold
    env = {**os.environ, "RAY_worker_niceness": "0"}
    log = open(Path(folder) / "ray-start.log", "wb")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _accepts(port):
            if head.poll() is not None or time.monotonic() > deadline:
                tail = (Path(folder) / "ray-start.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"`ray start --head` did not come up on port {port} (exit {head.poll()}):\n{tail}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head.pid)
        head.wait(timeout=30)
        log.close()
        assert not _session(head.pid), "a process of the test's Ray cluster outlived it"
        shutil.rmtree(folder, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _cluster_actors(address: str) -> list[str]:
    """The class names of every actor the cluster has run (alive or dead), from its GCS."""
    code = (
        f"import json, ray; from ray._private import state; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(json.dumps([a['ActorClassName'] for a in state.actors().values()])); ray.shutdown()"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    import json

    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_sl_and_fl_rounds_run_on_an_existing_cluster(cluster: str, tmp_path: Path) -> None:
    from simulations.fl import run_fl
    from simulations.sl import run_sl

    assert "ClientAppActor" not in " ".join(_cluster_actors(cluster))  # nothing ran on it yet
    flower = {"ray_address": cluster, "engine_wait_ms": 2.0}
    values = {"clients": 2, "rounds": 1, "max_steps_per_round": 3, "progress": False, "out_dir": str(tmp_path / "sl")}
    sl = load_sl_config("sl", values=values)
    sl = sl.replace(flower={**sl.flower.to_dict(), **flower})
    summary = run_sl(sl)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    actors = _cluster_actors(cluster)
    assert actors.count("ClientAppActor") >= 1, actors
    fl = load_fl_config("fl", values={"clients": 2, "rounds": 1, "progress": False, "out_dir": str(tmp_path / "fl")})
    fl = fl.replace(flower={**fl.flower.to_dict(), "ray_address": cluster})
    summary = run_fl(fl)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    assert len(_cluster_actors(cluster)) > len(actors)  # the FL run's actors ran there too


def test_an_unreachable_cluster_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simulations import engine
    from simulations.sl import run_sl

    monkeypatch.setattr(engine, "RAY_START_PAUSE_S", 0.0)
    sl = load_sl_config("sl", values={"clients": 1, "rounds": 1, "progress": False, "out_dir": str(tmp_path)})
    sl = sl.replace(flower={**sl.flower.to_dict(), "ray_address": f"127.0.0.1:{free_port()}"})
    with pytest.raises(RuntimeError, match=r"could not connect to the Ray cluster at flower\.ray_address"):
        run_sl(sl)


@pytest.mark.parametrize("address", ["10.0.0.1", "host:port", "10.0.0.1:70000"])
def test_a_malformed_ray_address_is_refused_up_front(address: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        load_sl_config("sl", [f"flower.ray_address={address}"])
