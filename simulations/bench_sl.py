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

``--server-batching both`` runs every cell with and without server batching (``batching_gains``:
samples/s with over without); ``--server-device cuda`` puts the server half on a GPU.
``--many N`` adds a multi-round ``splitfed2`` run of the default digits config on N virtual clients
over stock Flower (``many_clients``: s/round and the process tree's RSS after every round).
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

from fl_split.sl.config import SLConfig, load_sl_config
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

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        """Receive through the inner transport."""
        return self.inner.receive(timeout_s)

    def release(self, node_id: int) -> None:
        """Release through the inner transport."""
        self.inner.release(node_id)

    def stats(self, round_: int) -> dict[str, Any]:
        """The inner transport's counters."""
        return self.inner.stats(round_)


def cell_config(
    model: str,
    clients: int,
    k: int,
    steps: int,
    engine: str,
    wait_ms: float,
    batching: bool = False,
    device: str = "cpu",
) -> SLConfig:
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
            "server_batching": batching,
            "server_device": device,
            "client_device": "cpu",  # the clients' half on the CPU, as on an edge device (gpu-check varies it)
        },
    )


def measure(config: SLConfig, transport: Transport, engine: str) -> dict[str, Any]:
    """Run one cell's round; its throughput and time breakdown."""
    strategy = SplitLearningStrategy(config)
    with PeakRss() as rss:
        strategy.start(transport)
    row = strategy.rows[0]
    train_s = row["train_s"]
    transport_s = row.get("transport_s", 0.0)
    client_s = row.get("client_s", 0.0)
    return {
        "model": config.model,
        "engine": engine,
        "mode": config.mode,
        "clients": row["clients"],
        "batches_per_message": config.batches_per_message,
        "batch_size": config.batch_size,
        "server_batching": config.server_batching,
        "server_device": config.server_device,
        "client_device": config.client_device,
        "steps": row["steps"],
        "server_steps": row["server_steps"],
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


def run_inprocess(
    model: str,
    clients: list[int],
    ks: list[int],
    steps: int,
    batching: tuple[bool, ...] = (False,),
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """All cells of one model on the in-process engine (after a warm-up cell that is not reported)."""
    measure(cell_config(model, 1, 1, 2, "inprocess", 100.0, device=device), InProcessTransport(1), "inprocess")
    out = []
    for n in clients:
        for k in ks:
            for b in batching:
                config = cell_config(model, n, k, steps, "inprocess", 100.0, b, device)
                out.append(measure(config, InProcessTransport(n), "inprocess"))
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def run_flower(
    model: str,
    clients: list[int],
    ks: list[int],
    steps: int,
    wait_ms: float,
    batching: tuple[bool, ...] = (False,),
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """All cells of one model in one Flower simulation of ``max(clients)`` virtual nodes."""
    from flwr.app import Context
    from flwr.serverapp import Grid

    from fl_split.sl.transport.flower import FlowerTransport
    from simulations.apps import build_client_app, build_server_app
    from simulations.engine import run_flower_simulation

    out: list[dict[str, Any]] = []
    engine = "flower" if wait_ms == 100.0 else f"flower-wait{wait_ms:g}ms"

    def cells(grid: Grid, context: Context) -> None:
        transport = FlowerTransport(grid)
        warm = cell_config(model, max(clients), 1, 1, "flower", wait_ms, device=device)
        SplitLearningStrategy(warm).start(transport)  # Ray and the actors start here, not in a cell
        for n in clients:
            for k in ks:
                for b in batching:
                    config = cell_config(model, n, k, steps, "flower", wait_ms, b, device)
                    out.append(measure(config, FirstNodes(transport, n), engine))
                    print(json.dumps(out[-1]), file=sys.stderr, flush=True)

    run_flower_simulation(build_server_app(cells), build_client_app(), max(clients), engine_wait_ms=wait_ms)
    return out


def run_many(clients: int, rounds: int) -> dict[str, Any]:
    """The default digits run on ``clients`` virtual nodes over stock Flower: s/round and RSS after each round."""
    from simulations.apps import build_client_app, build_server_app
    from simulations.engine import run_flower_simulation

    config = load_sl_config("sl", values={"clients": clients, "rounds": rounds, "progress": False})
    strategy = SplitLearningStrategy(config)
    per_round: list[dict[str, Any]] = []
    last = [time.perf_counter()]

    def on_round(row: dict[str, Any]) -> None:
        now = time.perf_counter()
        per_round.append(
            {
                "round": row["round"],
                "s": round(now - last[0], 2),
                "rss_mb": round(tree_rss_mb(), 1),
                "test_accuracy": row["test_accuracy"],
            }
        )
        last[0] = now
        print(json.dumps(per_round[-1]), file=sys.stderr, flush=True)

    strategy.on_round = on_round
    t0 = time.perf_counter()
    with PeakRss() as rss:
        app = build_server_app(lambda grid, _context: strategy.start(grid, local=True))
        run_flower_simulation(app, build_client_app(), clients)
    later = [r["s"] for r in per_round[1:]]
    return {
        "clients": clients,
        "mode": config.mode,
        "rounds": rounds,
        "completed": len(per_round) == rounds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "first_round_s": per_round[0]["s"] if per_round else None,  # includes Ray and the actors starting
        "s_per_round": round(sum(later) / len(later), 2) if later else None,  # rounds 2..
        "peak_rss_mb": round(rss.peak_mb, 1),
        "rss_growth_mb_after_round_1": round(per_round[-1]["rss_mb"] - per_round[0]["rss_mb"], 1)
        if per_round
        else None,
        "final_test_accuracy": per_round[-1]["test_accuracy"] if per_round else None,
        "per_round": per_round,
    }


def _cell(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["model"], r["clients"], r["batches_per_message"], r.get("server_batching", False))


def batching_gains(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples/s with server batching over without, per engine and cell that ran both ways."""
    off = {(r["engine"], *_cell(r)[:3]): r for r in runs if not r.get("server_batching")}
    out = []
    for r in runs:
        ref = off.get((r["engine"], *_cell(r)[:3]))
        if r.get("server_batching") and ref is not None:
            out.append(
                {
                    "model": r["model"],
                    "engine": r["engine"],
                    "clients": r["clients"],
                    "batches_per_message": r["batches_per_message"],
                    "samples_per_s_gain": round(r["samples_per_s"] / ref["samples_per_s"], 3),
                    "server_compute_s": [ref["server_compute_s"], r["server_compute_s"]],
                    "server_steps": [ref.get("server_steps"), r.get("server_steps")],
                }
            )
    return out


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Flower cell's samples/s as a fraction of the in-process cell with the same model, clients, k, batching."""
    base = {_cell(r): r for r in runs if r["engine"] == "inprocess"}
    out = []
    for r in runs:
        ref = base.get(_cell(r))
        if r["engine"] != "inprocess" and ref is not None:
            out.append(
                {
                    "model": r["model"],
                    "engine": r["engine"],
                    "clients": r["clients"],
                    "batches_per_message": r["batches_per_message"],
                    "server_batching": r.get("server_batching", False),
                    "throughput_vs_inprocess": round(r["samples_per_s"] / ref["samples_per_s"], 3),
                    "ms_per_step": r["ms_per_step"],
                    "inprocess_ms_per_step": ref["ms_per_step"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench sl [--quick] [--models ...] [--engines ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench sl", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a couple of minutes: fewer cells and steps")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--wait-ms", type=float, default=2.0, help="the engine wait of flower-fast, ms")
    parser.add_argument(
        "--steps", type=int, help="batches per client per cell (default 16, quick 8; resnet18 a quarter)"
    )
    parser.add_argument("--clients", nargs="*", type=int, help="client counts (default 1 4 16, quick 1 4)")
    parser.add_argument("--ks", nargs="*", type=int, help="batches_per_message values (default 1 4 8 16, quick 1 8)")
    parser.add_argument(
        "--server-batching", choices=("off", "on", "both"), default="off", help="run cells with server batching"
    )
    parser.add_argument("--server-device", default="cpu", help="the server half's device (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--many", type=int, help="also a multi-round run on this many clients over stock Flower (default 100; quick 0)"
    )
    parser.add_argument("--many-rounds", type=int, default=6, help="rounds of the --many run")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    clients = args.clients or ([1, 4] if args.quick else [1, 4, 16])
    ks = args.ks or ([1, 8] if args.quick else [1, 4, 8, 16])
    if min(clients + ks) < 1:
        parser.error("--clients and --ks take values >= 1")
    batching = {"off": (False,), "on": (True,), "both": (False, True)}[args.server_batching]
    many = args.many if args.many is not None else (0 if args.quick else 100)
    from fl_split.config import ConfigError
    from strategies.split_learning import server_device

    try:
        server_device(load_sl_config("sl", values={"server_device": args.server_device})["server_device"])
    except ConfigError as err:
        parser.error(str(err))
    steps = args.steps or (8 if args.quick else 16)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for model in args.models:
        model_steps = steps if model == "digits_cnn" else max(2, steps // 4)  # ResNet18's server half is ~100x
        for engine in args.engines:
            if engine == "inprocess":
                runs += run_inprocess(model, clients, ks, model_steps, batching, args.server_device)
            else:
                wait = 100.0 if engine == "flower" else args.wait_ms
                runs += run_flower(model, clients, ks, model_steps, wait, batching, args.server_device)
    result: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "steps_per_client": steps,
        "wall_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "ratios": ratios(runs),
        "batching_gains": batching_gains(runs),
    }
    if many:
        result["many_clients"] = run_many(many, args.many_rounds)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
