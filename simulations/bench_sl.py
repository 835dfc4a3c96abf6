"""Split-learning throughput: in process vs over Flower's simulation engine (JSON; not a timed test).

For each model, clients × batches_per_message, it runs one round of split learning with a fixed
number of steps per client and reports samples/s, ms per step, messages/s, peak RSS of the process
tree (Ray actors included, sampled every 0.25 s) and where the time went, all measured in the same run:

``server_compute_s`` / ``server_codec_s``
    the server's steps (forward, backward, optimizer) / its decode + gradient encode;
``client_s`` / ``client_codec_s``
    the clients' message handlers, summed over clients / their codec calls;
``wait_s``
    the server blocked on messages: Flower's engine and Ray (over Flower), nothing (in process).

Over Flower, all cells of a model share one simulation (one Ray start-up, excluded by a warm-up
round): a ServerApp runs each cell's strategy on the first ``clients`` nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fl_split.sl.config import load_sl_config
from fl_split.sl.transport import InProcessTransport, Reply, Transport
from strategies.split_learning import SplitLearningStrategy

ENGINES = ("inprocess", "flower", "flower-fast")
MODELS = {
    "digits_cnn": {"dataset": "digits", "model": "digits_cnn", "batch_size": 32},
    "resnet18": {"dataset": "synthetic_cifar10", "model": "resnet18", "batch_size": 32},
}


def tree_rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants, MB (Linux ``/proc``)."""
    root = pid or os.getpid()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    total_kb = 0
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class PeakRss:
    """Samples :func:`tree_rss_mb` every ``interval_s`` in a thread while the block runs; ``peak_mb`` is the max."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s, self.peak_mb = interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, tree_rss_mb())
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb())


class FirstNodes:
    """A transport limited to its first ``n`` nodes (cells with fewer clients share one simulation)."""

    def __init__(self, inner: Transport, n: int) -> None:
        self.inner, self.n = inner, n

    def node_ids(self) -> list[int]:
        """The first ``n`` nodes of the inner transport."""
        return self.inner.node_ids()[: self.n]

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Send through the inner transport."""
        return self.inner.send(node_id, kind, fields, round_)

    def receive(self) -> list[Reply]:
        """Receive through the inner transport."""
        return self.inner.receive()


def cell_config(model: str, clients: int, k: int, steps: int, engine: str, wait_ms: float) -> dict[str, Any]:
    """The config of one benchmark cell: one round, ``steps`` batches per client, MS uplink."""
    spec = MODELS[model]
    return load_sl_config(
        "sl",
        values={
            **spec,
            "engine": engine,
            "mode": "splitfed2",
            "clients": clients,
            "rounds": 1,
            "local_epochs": 64,
            "max_steps_per_round": steps,
            "batches_per_message": k,
            "progress": False,
            "optimizer": {"lr": 0.005},  # throughput does not depend on it; 0.02 diverged with 16 clients
            "flower": {"engine_wait_ms": wait_ms},
        },
    )


def measure(config: dict[str, Any], transport: Transport, engine: str) -> dict[str, Any]:
    """Run one cell's round; its throughput and time breakdown."""
    strategy = SplitLearningStrategy(config)
    with PeakRss() as rss:
        strategy.start(transport)
    row = strategy.rows[0]
    train_s = row["train_s"]
    transport_s = row.get("transport_s", 0.0)
    client_s = row.get("client_s", 0.0)
    return {
        "model": config["model"],
        "engine": engine,
        "mode": config["mode"],
        "clients": row["clients"],
        "batches_per_message": config["batches_per_message"],
        "batch_size": config["batch_size"],
        "steps": row["steps"],
        "samples": row["samples"],
        "messages": row["messages"],
        "train_s": train_s,
        "samples_per_s": round(row["samples"] / train_s, 1),
        "ms_per_step": round(1000 * train_s / row["steps"], 2),
        "messages_per_s": round(row["messages"] / train_s, 1),
        "server_compute_s": row.get("server_compute_s", 0.0),
        "server_codec_s": row.get("server_codec_s", 0.0),
        "client_s": client_s,
        "client_codec_s": row.get("client_codec_s", 0.0),
        # in process the client runs inside send(): the server never waits
        "wait_s": round(transport_s - client_s if engine == "inprocess" else transport_s, 4),
        "peak_rss_mb": round(rss.peak_mb, 1),  # process tree (Ray actors included), sampled every 0.25 s
    }


def run_inprocess(model: str, clients: list[int], ks: list[int], steps: int) -> list[dict[str, Any]]:
    """All cells of one model on the in-process engine (after a warm-up cell that is not reported)."""
    measure(cell_config(model, 1, 1, 2, "inprocess", 100.0), InProcessTransport(1), "inprocess")
    out = []
    for n in clients:
        for k in ks:
            config = cell_config(model, n, k, steps, "inprocess", 100.0)
            out.append(measure(config, InProcessTransport(n), "inprocess"))
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def run_flower(model: str, clients: list[int], ks: list[int], steps: int, wait_ms: float) -> list[dict[str, Any]]:
    """All cells of one model in one Flower simulation of ``max(clients)`` virtual nodes."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from simulations.client_app import make_client_app
    from simulations.engine import run_flower_simulation
    from strategies.flower_transport import FlowerTransport

    out: list[dict[str, Any]] = []
    engine = "flower" if wait_ms == 100.0 else f"flower-wait{wait_ms:g}ms"
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        transport = FlowerTransport(grid)
        warm = cell_config(model, max(clients), 1, 1, "flower", wait_ms)
        SplitLearningStrategy(warm).start(transport)  # Ray and the actors start here, not in a cell
        for n in clients:
            for k in ks:
                config = cell_config(model, n, k, steps, "flower", wait_ms)
                out.append(measure(config, FirstNodes(transport, n), engine))
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)

    run_flower_simulation(app, make_client_app(), max(clients), engine_wait_ms=wait_ms)
    return out


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Flower cell's samples/s as a fraction of the in-process cell with the same model, clients and k."""
    base = {(r["model"], r["clients"], r["batches_per_message"]): r for r in runs if r["engine"] == "inprocess"}
    out = []
    for r in runs:
        ref = base.get((r["model"], r["clients"], r["batches_per_message"]))
        if r["engine"] != "inprocess" and ref is not None:
            out.append(
                {
                    "model": r["model"],
                    "engine": r["engine"],
                    "clients": r["clients"],
                    "batches_per_message": r["batches_per_message"],
                    "throughput_vs_inprocess": round(r["samples_per_s"] / ref["samples_per_s"], 3),
                    "ms_per_step": r["ms_per_step"],
                    "inprocess_ms_per_step": ref["ms_per_step"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench sl [--quick] [--models ...] [--engines ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a couple of minutes: fewer cells and steps")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--wait-ms", type=float, default=2.0, help="the engine wait of flower-fast, ms")
    parser.add_argument(
        "--steps", type=int, help="batches per client per cell (default 16, quick 8; resnet18 a quarter)"
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    clients = [1, 4] if args.quick else [1, 4, 16]
    ks = [1, 8] if args.quick else [1, 4, 8, 16]
    steps = args.steps or (8 if args.quick else 16)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for model in args.models:
        model_steps = steps if model == "digits_cnn" else max(2, steps // 4)  # ResNet18's server half is ~100x
        for engine in args.engines:
            if engine == "inprocess":
                runs += run_inprocess(model, clients, ks, model_steps)
            else:
                wait = 100.0 if engine == "flower" else args.wait_ms
                runs += run_flower(model, clients, ks, model_steps, wait)
    result = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "steps_per_client": steps,
        "wall_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "ratios": ratios(runs),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
