"""Malcom-PSGD against CHOCO-SGD: measured bits to a target accuracy and model sparsity (JSON + Markdown).

Digits, nodes on a ring and on a 2-D torus (8 and 16 nodes by default), the in-process transport,
one seed. Methods (``METHODS``): Malcom-PSGD (dithered quantization with source coding, the L1
prox), CHOCO-SGD with the same quantizer and no prox (what the prox changes), CHOCO-SGD with
fixed-length ``qsgd`` (fl-split's stated baseline, ``docs/papers.md``: sign + 4 bits per element + a norm per 512) and
with ``topk`` at 1 %. Per cell: the first evaluated round whose average model reaches the target
accuracy, the bytes all nodes had sent over all edges by then (``len(payload)`` per edge), the
final accuracy, sparsity, consensus distance, total bytes and seconds per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from fl_split.gossip.config import load_gossip_config
from fl_split.gossip.run import run_gossip
from fl_split.metrics import read_metrics

#: (label, algorithm, codec spec, L1 weight or None for the algorithm's default).
METHODS: list[tuple[str, str, str, float | None]] = [
    ("malcom", "malcom", "dither:levels=15,rescale=true", None),
    ("choco+dither", "choco", "dither:levels=15,rescale=true", 0.0),
    ("choco+qsgd", "choco", "qsgd:levels=15", 0.0),
    ("choco+topk", "choco", "topk:keep=0.01", 0.0),
]


def cell(
    label: str, algorithm: str, codec: str, l1: float | None, topology: str, nodes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One run; what it measured."""
    out = Path(args.tmp) / f"{topology}{nodes}_{label.replace('+', '_')}"
    values: dict[str, Any] = {
        "algorithm": algorithm,
        "codec": codec,
        "l1": l1,
        "topology": topology,
        "nodes": nodes,
        "rounds": args.rounds,
        "eval_every": args.eval_every,
        "out_dir": str(out),
        "existing_out": "overwrite",
    }
    row: dict[str, Any] = {"topology": topology, "nodes": nodes, "method": label, "codec": codec}
    try:
        summary = run_gossip(load_gossip_config(values=values))
    except Exception as exc:  # a diverging cell is a result too
        row |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row
    rows = read_metrics(out / "metrics.jsonl")
    hit = next((r for r in rows if r["test_accuracy"] >= args.target), None)
    last = rows[-1]
    row |= {
        "status": "completed",
        "l1": summary["l1"],
        "rounds_to_target": hit["round"] if hit else None,
        "mbits_to_target": round(8 * hit["cum_uplink_bytes"] / 1e6, 3) if hit else None,
        "final_test_accuracy": round(last["test_accuracy"], 4),
        "best_test_accuracy": round(max(r["test_accuracy"] for r in rows), 4),
        "final_model_sparsity": round(last["model_sparsity"], 4),
        "final_consensus_distance": round(last["consensus_distance"], 4),
        "total_mbits": round(8 * last["cum_uplink_bytes"] / 1e6, 3),
        "bits_per_param_per_message": round(
            8 * last["cum_uplink_bytes"] / (last["round"] * 2 * last["edges"] * summary["model_numel"]), 4
        ),
        "s_per_round": round(last["wall_s"] / last["round"], 4),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    """The table as Markdown (``docs/results/gossip.md``)."""
    s = result["setup"]
    lines = [
        "# Malcom-PSGD vs CHOCO-SGD (`fl-split bench gossip`)",
        "",
        f"Digits CNN, in-process nodes, {s['rounds']} rounds (one SGD step and one exchange each), evaluation every "
        f"{s['eval_every']} rounds, target test accuracy {s['target']} of the average model, seed 0. Bits are "
        "8 × the payload bytes all nodes sent over all edges (each payload once per neighbour).",
        "",
        "| graph | method | codec | L1 | rounds to target | Mbit to target | final acc | sparsity | consensus dist "
        "| bits/param/msg | total Mbit | s/round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        if r["status"] != "completed":
            lines.append(f"| {r['topology']} {r['nodes']} | {r['method']} | {r['codec']} | failed: {r['error']} |")
            continue
        to_target = "not reached" if r["rounds_to_target"] is None else str(r["rounds_to_target"])
        lines.append(
            f"| {r['topology']} {r['nodes']} | {r['method']} | `{r['codec']}` | {r['l1']} | {to_target} "
            f"| {r['mbits_to_target'] if r['mbits_to_target'] is not None else '–'} | {r['final_test_accuracy']} "
            f"| {r['final_model_sparsity']} | {r['final_consensus_distance']} | {r['bits_per_param_per_message']} "
            f"| {r['total_mbits']} | {r['s_per_round']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench gossip [--topologies ...] [--nodes ...] [--rounds R] [--target A] [--out F] [--md F]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench gossip", description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", nargs="*", default=["ring", "torus"], choices=["ring", "torus", "complete"])
    parser.add_argument("--nodes", nargs="*", type=int, default=[8, 16])
    parser.add_argument("--methods", nargs="*", default=[m[0] for m in METHODS], choices=[m[0] for m in METHODS])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy of the average model")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--md", help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    setup = {"dataset": "digits", "rounds": args.rounds, "eval_every": args.eval_every, "target": args.target}
    with tempfile.TemporaryDirectory(prefix="fl-split-bench-gossip-") as tmp:
        args.tmp = tmp
        table = [
            cell(label, algorithm, codec, l1, topology, nodes, args)
            for topology in args.topologies
            for nodes in args.nodes
            for label, algorithm, codec, l1 in METHODS
            if label in args.methods
        ]
    result = {"setup": setup, "table": table}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.md:
        Path(args.md).write_text(markdown(result), encoding="utf-8")
    return 0
