"""Split learning on a real local deployment: messages vs stream transport, per k (JSON; not a timed test).

Starts ``flower-superlink`` and ``--supernodes`` ``flower-supernode`` processes on 127.0.0.1
(:class:`~simulations.deploy.LocalDeployment`), submits the app with ``flwr run`` once per cell
(transport × ``batches_per_message``), and reads the round's metrics row. Per cell:

``train_s``
    the round, end to end: ``sl_begin`` out to the last client's weights back (Flower messages
    included on both transports);
``s_per_step``
    ``train_s`` over the steps one client made;
``stream_step_ms``
    stream only: from a round's first stream frame to its last, per step of one client (what a
    step costs once the round is under way);
``flower_messages``
    the Flower messages the round sent (the stream sends one per client).

The in-process engine runs the same config in this process for the reference (``inprocess``:
ms per step, ``k = 1``, and its client/server split); ``stream_over_inprocess`` is the stream's
``stream_step_ms`` at ``k = 1`` over it (the target: at most 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fl_split.metrics import read_metrics
from fl_split.sl.config import load_sl_config
from fl_split.sl.transport import InProcessTransport
from simulations.deploy import LocalDeployment
from strategies.split_learning import SplitLearningStrategy

APP = Path(__file__).resolve().parent.parent


def cell_values(transport: str, k: int, steps: int, clients: int, out_dir: Path) -> dict[str, Any]:
    """The run config of one cell (digits, splitfed2, the default codecs)."""
    return {
        "clients": clients,
        "rounds": 1,
        "max-steps-per-round": steps,
        "batches-per-message": k,
        "transport": transport,
        "stream.host": "127.0.0.1",
        "stream.bind": "127.0.0.1",
        "out-dir": str(out_dir),
    }


def run_cell(dep: LocalDeployment, transport: str, k: int, steps: int, workdir: Path) -> dict[str, Any]:
    """One ``flwr run`` on the deployment; its row, reduced to the timings."""
    out = workdir / f"{transport}_k{k}"
    t0 = time.perf_counter()
    dep.run(APP, cell_values(transport, k, steps, dep.num_supernodes, out), timeout_s=1800)
    wall = time.perf_counter() - t0
    (row,) = read_metrics(out / "metrics.jsonl")
    per_client = row["steps"] / max(row["clients"], 1)
    cell: dict[str, Any] = {
        "transport": transport,
        "k": k,
        "supernodes": dep.num_supernodes,
        "steps": row["steps"],
        "failed_clients": row["failed_clients"],
        "train_s": row["train_s"],
        "s_per_step": round(row["train_s"] / per_client, 4),
        "flower_messages": row["clients"] if transport == "stream" else row["messages"],
        "flwr_run_wall_s": round(wall, 2),
        # where a step's time goes: the client's handler (forward, apply, codec) and the server's step
        "client_ms_per_step": round(1000 * row.get("client_s", 0.0) / max(row["steps"], 1), 2),
        "server_ms_per_step": round(
            1000 * (row.get("server_compute_s", 0.0) + row.get("server_codec_s", 0.0)) / max(row["steps"], 1), 2
        ),
        "test_accuracy": round(row["test_accuracy"], 4),
        "uplink_bytes": row["uplink_bytes"],
        "downlink_bytes": row["downlink_bytes"],
    }
    if transport == "stream":
        intervals = per_client - k  # frames come every k steps; the window spans all but the first frame's
        cell["stream_s"] = row["stream_s"]
        cell["stream_step_ms"] = round(1000 * row["stream_s"] / intervals, 2) if intervals > 0 else None
    return cell


def inprocess_step_ms(steps: int, clients: int, repeats: int = 3) -> dict[str, float]:
    """Median ms per step of one client, same config, in this process (no transport), and its split."""
    config = load_sl_config(
        "sl",
        values={
            "engine": "inprocess",
            "clients": clients,
            "rounds": repeats,
            "max_steps_per_round": steps,
            "progress": False,
        },
    )
    strategy = SplitLearningStrategy(config)
    rows = strategy.start(InProcessTransport(clients))
    mid = sorted(rows, key=lambda r: r["train_s"] / r["steps"])[len(rows) // 2]
    return {
        "step_ms": round(1000 * mid["train_s"] / (mid["steps"] / clients), 2),
        "client_ms_per_step": round(1000 * mid["client_s"] / mid["steps"], 2),
        "server_ms_per_step": round(1000 * (mid["server_compute_s"] + mid["server_codec_s"]) / mid["steps"], 2),
    }


def run(
    supernodes: int, steps: int, ks: list[int], transports: list[str], stream_steps: int | None = None
) -> dict[str, Any]:
    """Every cell on one deployment, then the in-process reference (at the stream's step count)."""
    stream_steps = stream_steps or steps
    cells = []
    with (
        tempfile.TemporaryDirectory(prefix="fl-split-bench-deploy-") as tmp,
        LocalDeployment(supernodes, Path(tmp) / "deploy") as dep,
    ):
        for transport in transports:
            for k in ks:
                n = stream_steps if transport == "stream" else steps
                cells.append(run_cell(dep, transport, k, n, Path(tmp)))
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    ref = inprocess_step_ms(stream_steps, supernodes)
    stream_k1 = [c for c in cells if c["transport"] == "stream" and c["k"] == 1 and c.get("stream_step_ms")]
    return {
        "setup": {
            "supernodes": supernodes,
            "steps_per_client": {"messages": steps, "stream": stream_steps},
            "dataset": "digits",
            "mode": "splitfed2",
            "uplink": "ms:keep=0.01,bits=2",
            "downlink": "none",
            "torch_threads": torch.get_num_threads(),
        },
        "cells": cells,
        "inprocess": ref,
        "stream_over_inprocess": round(stream_k1[0]["stream_step_ms"] / ref["step_ms"], 3) if stream_k1 else None,
        "target": 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench deploy [--supernodes N] [--steps S] [--ks ...] [--transports ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=1, help="flower-supernode processes (default 1)")
    parser.add_argument("--steps", type=int, default=16, help="batches per client in a messages round (default 16)")
    parser.add_argument(
        "--stream-steps",
        type=int,
        default=45,
        help="batches per client in a stream round (default 45: one epoch of a single node's partition)",
    )
    parser.add_argument("--ks", nargs="*", type=int, default=[1, 4, 16], help="batches_per_message values")
    parser.add_argument(
        "--transports", nargs="*", default=["messages", "stream"], choices=["messages", "stream"], help="transports"
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.supernodes, args.steps, args.stream_steps, *args.ks) < 1:
        parser.error("--supernodes, --steps, --stream-steps and every --ks value must be >= 1")
    result = run(args.supernodes, args.steps, args.ks, args.transports, args.stream_steps)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0
