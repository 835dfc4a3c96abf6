"""Federated learning at scale and its accuracy table (JSON; not a timed test).

``scale``: the default FL run (digits CNN, signed MS + error feedback) on many virtual clients
(default 1000) at 1 % and 10 % sampled per round, over Flower's simulation engine on this machine.
Each entry of ``runs``: ``clients``, ``fraction``, ``rounds``, ``completed``, ``s_per_round``
(rounds after the first), ``start_s`` (round 1's wall time less one steady round: Ray, its
actors, node registration, imports),
``peak_rss_mb`` (the whole process tree, Ray actors included, sampled every 0.25 s),
``residual_mb`` (error-feedback residuals held in the clients' ``context.state`` after the last
round), ``final_test_accuracy``.

``accuracy``: digits, 10 clients, IID and Dirichlet 0.3, codecs ``none``, ``fp16``, ``qsgd``,
``topk`` ± EF, signed ``ms`` ± EF, ``powersgd``, ``sign`` + EF: final accuracy and cumulative
uplink/downlink MB, measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from fl_split.fl.config import load_fl_config
from fl_split.metrics import read_metrics
from simulations.bench_sl import PeakRss
from simulations.fl import run_fl

#: (label, uplink spec, error feedback) of the accuracy table.
CODECS: list[tuple[str, str, bool]] = [
    ("none", "none", False),
    ("fp16", "fp16", False),
    ("qsgd", "qsgd:levels=16", False),
    ("topk", "topk:keep=0.01", False),
    ("topk+EF", "topk:keep=0.01", True),
    ("ms", "ms:keep=0.01,bits=2,signed=true", False),
    ("ms+EF", "ms:keep=0.01,bits=2,signed=true", True),
    ("powersgd", "powersgd:rank=2", False),
    ("sign+EF", "sign", True),
]


def scale_run(clients: int, fraction: float, rounds: int, out_dir: Path) -> dict[str, Any]:
    """One multi-round run on ``clients`` virtual nodes; its timings, memory and residuals."""
    config = load_fl_config(
        "fl",
        values={
            "clients": clients,
            "fraction": fraction,
            "rounds": rounds,
            "progress": False,
            "out_dir": str(out_dir),
            "existing_out": "overwrite",
        },
    )
    with PeakRss() as rss:
        summary = run_fl(config)
    rows = read_metrics(out_dir / "metrics.jsonl")
    return {
        "clients": clients,
        "fraction": fraction,
        "rounds": rounds,
        "completed": summary["rounds_completed"] == rounds,
        "s_per_round": summary["s_per_round"],
        "start_s": summary["start_s"],
        "peak_rss_mb": round(rss.peak_mb, 1),
        "residual_mb": round(rows[-1]["residual_bytes"] / 1e6, 2) if rows else None,
        "sampled_per_round": rows[-1]["clients"] if rows else None,
        "final_test_accuracy": summary["final_test_accuracy"],
        "uplink_mb_per_round": round(rows[-1]["uplink_bytes"] / 1e6, 3) if rows else None,
    }


def accuracy_table(rounds: int, out_dir: Path, partitions: list[str]) -> list[dict[str, Any]]:
    """Every codec of :data:`CODECS` on each partition: final accuracy and cumulative MB."""
    out = []
    for partition in partitions:
        for label, spec, ef in CODECS:
            cell_dir = out_dir / f"{partition}_{label.replace('+', '_')}"
            config = load_fl_config(
                "fl",
                values={
                    "uplink": spec,
                    "error_feedback": ef,
                    "partition": partition,
                    "rounds": rounds,
                    "progress": False,
                    "out_dir": str(cell_dir),
                    "existing_out": "overwrite",
                },
            )
            summary = run_fl(config)
            out.append(
                {
                    "partition": partition,
                    "codec": label,
                    "uplink": spec,
                    "error_feedback": ef,
                    "final_test_accuracy": summary["final_test_accuracy"],
                    "best_test_accuracy": summary["best_test_accuracy"],
                    "uplink_mb": round(summary["total_uplink_bytes"] / 1e6, 3),
                    "downlink_mb": round(summary["total_downlink_bytes"] / 1e6, 3),
                    "dropped": summary["total_dropped"],
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench fl [scale|accuracy] [--clients N] [--fractions ...] [--rounds R] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench fl", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="scale", choices=["scale", "accuracy"])
    parser.add_argument("--clients", type=int, default=1000, help="scale: virtual clients (default 1000)")
    parser.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.1], help="scale: sampled per round")
    parser.add_argument("--rounds", type=int, help="rounds (default: scale 5, accuracy 30)")
    parser.add_argument("--partitions", nargs="*", default=["iid", "dirichlet"], choices=["iid", "dirichlet", "shard"])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fl-split-bench-fl-") as tmp:
        if args.what == "scale":
            rounds = args.rounds or 5
            runs = [scale_run(args.clients, f, rounds, Path(tmp) / f"f{f}") for f in args.fractions]
            result: dict[str, Any] = {"runs": runs, "torch_threads": torch.get_num_threads()}
        else:
            table = accuracy_table(args.rounds or 30, Path(tmp), args.partitions)
            result = {"setup": {"dataset": "digits", "clients": 10, "rounds": args.rounds or 30}, "table": table}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0
