"""Split learning on a real local deployment: ``flower-superlink`` + two ``flower-supernode`` processes.

Select with ``pytest -k deploy``. Every process started here is stopped when the block exits,
also when a run fails (checked).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fl_split.metrics import read_metrics
from simulations.deploy import DeploymentError, LocalDeployment, free_port, run_config_arg

REPO = Path(__file__).resolve().parent.parent


def test_run_config_arg_is_toml() -> None:
    assert run_config_arg({"rounds": 1, "lr": 0.5, "out-dir": 'a "b"', "progress": False}) == (
        'rounds=1 lr=0.5 out-dir="a \\"b\\"" progress=false'
    )


def test_deploy_two_tls_supernodes_train_over_both_transports_and_fl_and_every_process_is_stopped(
    tmp_path: Path,
) -> None:
    """docs/deployment.md's real-device setup on one host: a TLS SuperLink whose certificates also serve the stream.

    One deployment runs split learning over messages (k = 2: one message per client for its two
    steps) and over the TLS stream, then federated learning (``mode = "fl"``) through the same app.
    """
    runs = {"messages": tmp_path / "messages", "stream": tmp_path / "stream"}
    fl_out = tmp_path / "fl"
    logs: dict[str, str] = {}  # what `flwr run --stream` showed
    started: list[subprocess.Popen[bytes]] = []
    with LocalDeployment(2, tmp_path / "deploy", tls=True) as dep:
        assert dep.certs is not None
        ca, cert, key = dep.certs
        started = [p for _, p in dep.procs]
        assert len(started) == 3 and all(p.poll() is None for p in started)
        assert "--insecure" not in " ".join(str(a) for p in started for a in p.args)
        with pytest.raises(DeploymentError, match="flwr run exited"):  # a run-config key the app does not have
            dep.run(REPO, {"no-such-key": 1}, timeout_s=120)
        for transport, out in runs.items():
            values = {
                "clients": 2,
                "rounds": 1,
                "max-steps-per-round": 2,
                "batches-per-message": 2,
                "out-dir": str(out),
                "transport": transport,
            }
            if transport == "stream":  # the ServerApp's stream server, reachable from the SuperNodes on this host
                values |= {
                    "stream.host": "127.0.0.1",
                    "stream.bind": "127.0.0.1",
                    "stream.ssl-certfile": str(cert),
                    "stream.ssl-keyfile": str(key),
                    "stream.ssl-ca-certfile": str(ca),
                }
            logs[transport] = dep.run(REPO, values, timeout_s=300)
        # federated learning through the same app and deployment (mode = "fl")
        # no uplink or lr restated: mode = "fl" takes `fl-split fl`'s defaults, not split learning's
        fl_values = {"mode": "fl", "clients": 2, "rounds": 1}
        logs["fl"] = dep.run(REPO, {**fl_values, "out-dir": str(fl_out)}, timeout_s=300)
    assert all(p.poll() is not None for p in started)  # superlink and both supernodes are gone
    (fl_row,) = read_metrics(fl_out / "metrics.jsonl")
    fl_config = json.loads((fl_out / "summary.json").read_text())["config"]
    assert (fl_config["uplink"], fl_config["optimizer"]["lr"]) == ("ms:keep=0.01,bits=2,signed=true", 0.05)
    assert (fl_row["clients"], fl_row["dropped"], fl_row["failed_clients"]) == (2, 0, 0)
    assert fl_row["uplink_bytes"] > 0 and fl_row["residual_bytes"] > 0
    (msg,) = read_metrics(runs["messages"] / "metrics.jsonl")
    (stream,) = read_metrics(runs["stream"] / "metrics.jsonl")
    for row in (msg, stream):  # both SuperNodes trained their partition: 2 steps each, nobody failed
        assert (row["clients"], row["steps"], row["failed_clients"], row["dropped"]) == (2, 4, 0, 0)
        assert row["uplink_activation_bytes"] > 0 and row["downlink_gradient_bytes"] > 0
    # the same batches: the same measured payload bytes on both transports
    keys = ("uplink_activation_bytes", "uplink_label_bytes", "downlink_gradient_bytes", "downlink_model_bytes")
    assert [msg[k] for k in keys] == [stream[k] for k in keys]
    # the stream's announcement to each client: its token and the CA certificate it verifies the stream with
    assert stream["downlink_other_bytes"] == 2 * (32 + len(ca.read_bytes()))
    assert stream["stream_broken"] == stream["stream_refused"] == 0
    assert stream["stream_s"] > 0 and "stream_s" not in msg
    # a line per round in Flower's log, as Flower's strategies print (the numbers are the rows')
    for name, row, desc in (("messages", msg, "SL splitfed2 (flower)"), ("fl", fl_row, "FL")):
        line = f"{desc} round 1/1: loss {row['train_loss']:.4f}, acc {row['test_accuracy']:.4f}, "
        assert line + f"up {row['cum_uplink_bytes'] / 1e6:.2f} MB" in logs[name], logs[name][-2000:]


def _streams_to(port: int, pgid: int) -> bool:
    """Whether a process of group ``pgid`` holds an established TCP connection to ``port`` on this host.

    The SuperNode's ClientApp is a grandchild (SuperNode -> flower-superexec -> flwr-clientapp) in the
    SuperNode's process group (``LocalDeployment`` starts each process in its own session).
    """
    inodes = set()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for fd in (entry / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except (OSError, ValueError, IndexError):
            continue
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                return True
    return False


def _kill_while_streaming(
    supernode: subprocess.Popen[bytes], port: int, killed: list[bool], stop: threading.Event
) -> None:
    """SIGKILL the SuperNode and its ClientApp one second into its round's stream (a device vanishing).

    It watches until the run is over (``stop``), however long a loaded machine takes to get the
    round going (a fixed 240 s once ran out before the stream started).
    """
    while not stop.is_set() and supernode.poll() is None:
        if _streams_to(port, supernode.pid):
            time.sleep(1.0)
            os.killpg(supernode.pid, signal.SIGKILL)
            killed.append(True)
            return
        time.sleep(0.05)


def test_deploy_a_supernode_killed_mid_round_is_dropped_and_nothing_hangs(tmp_path: Path) -> None:
    out = tmp_path / "kill"
    killed: list[bool] = []
    port = free_port()
    with LocalDeployment(2, tmp_path / "deploy") as dep:
        victim = dep.procs[2][1]  # SuperNode 1 (partition 1)
        stop = threading.Event()
        killer = threading.Thread(target=_kill_while_streaming, args=(victim, port, killed, stop), daemon=True)
        killer.start()
        values = {
            "clients": 2,
            "rounds": 2,
            "local-epochs": 12,  # about 270 steps per node: the stream runs for several seconds
            "out-dir": str(out),
            "transport": "stream",
            "stream.host": "127.0.0.1",
            "stream.bind": "127.0.0.1",
            "stream.port": port,
            # a vanished node is noticed at once (its socket resets); the timeouts only bound the waits for a
            # node that never answers (its round-2 sl_begin). 20 s once ran out on a loaded CI machine before
            # the live ClientApps had started (both timed out in round 1)
            "stream.timeout-s": 60.0,
            "flower.timeout-s": 60.0,
        }
        t0 = time.monotonic()
        try:
            dep.run(REPO, values, timeout_s=400)
        finally:
            stop.set()
        elapsed = time.monotonic() - t0
        killer.join(5)
    assert killed and victim.poll() is not None
    r1, r2 = read_metrics(out / "metrics.jsonl")
    # round 1: the killed node's steps so far were taken, then it was dropped; the other node finished
    assert (r1["clients"], r1["failed_clients"], r1["dropped"]) == (2, 1, 1) and r1["stream_broken"] >= 1
    # round 2 sampled again: the dead node failed (no reply within flower.timeout-s, or Flower's error for
    # an offline node) or was no longer listed; the live node trained its full round
    assert r2["failed_clients"] == r2["clients"] - 1 and r2["steps"] < r1["steps"] < 2 * r2["steps"]
    assert elapsed < 300  # nothing waited on the dead node longer than its timeouts


def test_a_deployment_that_fails_to_start_stops_what_it_started(tmp_path: Path) -> None:
    dep = LocalDeployment(1, tmp_path / "deploy", start_timeout_s=0.0)  # nothing can listen in 0 s
    with pytest.raises(DeploymentError, match="did not listen"):
        dep.__enter__()
    assert len(dep.procs) == 1 and dep.procs[0][1].poll() is not None  # the SuperLink it had started is gone
