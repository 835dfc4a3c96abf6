"""The DDP codec hook: step time against plain DDP, and BIRD against top-k + EF at equal measured bytes (JSON).

``speed``: 2 local gloo ranks (CPU) train the digits CNN for ``--steps`` steps with plain DDP (its
own float32 all-reduce) and with the hook for ``none``, ``fp16``, ``topk``, ``ms``, ``powersgd`` and
``bird``. Per codec: the median step time (after the first steps) and its ratio to plain DDP, the
hook's encode / exchange / decode time per step, the payload bytes per step and rank as measured,
the compression ratio against float32 gradients, the error-feedback memory and the test accuracy.
All numbers come from the same run of this script, on this machine.

``bird``: BIRD (sign mode, no error feedback, as in its paper) at ``keep`` 0.1 and 0.3 against
``topk`` + error feedback whose ``keep`` is chosen so that its payloads have the same size as
BIRD's measured mean bytes per step (sizes found by encoding bucket-sized tensors, then measured
again in the run), and against ``topk`` + EF at its usual ``keep = 0.01``: compression ratio, encode
time, residual memory and final accuracy (mean and spread over ``--seeds`` runs: BIRD samples at
random). Also BIRD with error feedback, and matched ``topk`` without it. A run that fails (diverges)
is reported as failed with its error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.multiprocessing import ProcessRaisedException

from fl_split.codecs import codec_from_spec
from fl_split.codecs.parts import encode_parts
from fl_split.ddp.config import load_ddp_config
from fl_split.ddp.train import run_ddp
from fl_split.fl.client import build_model
from fl_split.launch import read_rank_results

#: (label, codec spec or None for plain DDP, error feedback) of the speed table.
SPEED: list[tuple[str, str | None, bool]] = [
    ("plain DDP", None, False),
    ("none", "none", False),
    ("fp16", "fp16", False),
    ("topk+EF", "topk:keep=0.01", True),
    ("ms+EF", "ms:keep=0.01,bits=2,signed=true", True),
    ("powersgd+EF", "powersgd:rank=2", True),
    ("bird", "bird:keep=0.1", False),
]


def model_numel() -> int:
    """Gradient elements of the digits CNN (what plain DDP all-reduces per step, as float32)."""
    return sum(p.numel() for p in build_model(load_ddp_config(), seed=0).parameters())


def cell(label: str, spec: str | None, ef: bool, steps: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """One 2-rank run; rank 0's timings, the largest step time over ranks, and the measured bytes."""
    values: dict[str, Any] = {"steps": steps, "log_every": steps, "out_dir": str(out), "seed": seed}
    values["existing_out"] = "overwrite"  # the benchmark owns its folders
    values |= {"hook": False} if spec is None else {"codec": spec, "error_feedback": ef}
    row: dict[str, Any] = {"codec": label, "spec": spec, "error_feedback": ef}
    try:
        results = run_ddp(load_ddp_config(values=values))
    except ProcessRaisedException:  # a run that diverges or fails is a result too
        errors = [r.get("error", "") for r in read_rank_results(out, 2) if r.get("error")]
        row |= {"status": "failed", "error": errors[0] if errors else "a rank raised"}
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row
    assert results is not None
    r0 = results[0]
    row |= {
        "status": "completed",
        "step_ms": round(1e3 * max(r["step_s"] for r in results), 3),
        "test_accuracy": r0["test_accuracy"],
    }
    if spec is not None:
        sent = r0["bytes_sent"] / steps  # mean over steps: BIRD's size varies from step to step
        row |= {
            "bytes_per_step": round(sent, 1),
            "compression_ratio": round(4 * model_numel() / sent, 2),
            "encode_ms": round(1e3 * r0["encode_s"] / steps, 3),
            "exchange_ms": round(1e3 * r0["exchange_s"] / steps, 3),
            "decode_ms": round(1e3 * r0["decode_s"] / steps, 3),
            "residual_bytes": r0["residual_bytes"],
            "bucket_numel": r0["bucket_numel"],
        }
    print(json.dumps({k: v for k, v in row.items() if k != "bucket_numel"}), file=sys.stderr, flush=True)
    return row


def cell_seeds(label: str, spec: str | None, ef: bool, steps: int, out: Path, seeds: int) -> dict[str, Any]:
    """:func:`cell` for seeds ``0..seeds-1`` (model init, batch order, the codec's draws).

    Numbers are averaged over the seeds that completed and accuracies listed; ``status`` is
    ``completed`` (every seed), ``partial`` (some seeds failed: ``failed_seeds``, the first ``error``)
    or ``failed`` (none completed).
    """
    runs = [cell(label, spec, ef, steps, out / f"seed{s}", seed=s) for s in range(seeds)]
    done = [r for r in runs if r["status"] == "completed"]
    failed = [r for r in runs if r["status"] != "completed"]
    if not done:
        return failed[0] | {"failed_seeds": len(failed), "seeds": seeds}
    row = dict(done[0])
    for key, value in done[0].items():
        if isinstance(value, float) and key != "test_accuracy":
            row[key] = round(statistics.fmean(r[key] for r in done), 3)
    accs = [r["test_accuracy"] for r in done]
    row |= {
        "seeds": seeds,
        "test_accuracy": round(statistics.fmean(accs), 4),
        "test_accuracy_std": round(statistics.pstdev(accs), 4),
        "test_accuracy_seeds": [round(a, 4) for a in accs],
    }
    if failed:
        row |= {"status": "partial", "failed_seeds": len(failed), "error": failed[0]["error"]}
    return row


def matching_topk_keep(bucket_numel: list[int], target_bytes: float) -> float:
    """The ``topk`` keep whose payloads for these buckets add up closest to ``target_bytes`` (bisection)."""
    tensors = [torch.randn(n, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(bucket_numel)]

    def size(keep: float) -> int:
        codec = codec_from_spec(f"topk:keep={keep:.6g}")
        return sum(len(encode_parts(codec, t, None)) for t in tensors)

    lo, hi = 1.0 / max(bucket_numel), 1.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if size(mid) < target_bytes else (lo, mid)
    return float(f"{hi:.6g}")


def speed_table(steps: int, out: Path) -> list[dict[str, Any]]:
    """Every codec of :data:`SPEED`, with its step time over plain DDP's."""
    rows = [cell(label, spec, ef, steps, out / f"s{i}") for i, (label, spec, ef) in enumerate(SPEED)]
    plain = rows[0]["step_ms"]
    for r in rows:
        if r["status"] == "completed":
            r["step_time_vs_plain"] = round(r["step_ms"] / plain, 3)
        r.pop("bucket_numel", None)
    return rows


def bird_table(steps: int, out: Path, keeps: list[float], seeds: int) -> list[dict[str, Any]]:
    """BIRD at each ``keep`` against top-k + EF at the same measured bytes per step (``seeds`` runs per cell)."""

    def run(label: str, spec: str | None, ef: bool, steps: int, out: Path) -> dict[str, Any]:
        return cell_seeds(label, spec, ef, steps, out, seeds)

    rows = [run("plain DDP", None, False, steps, out / "plain")]
    for keep in keeps:
        bird = run(f"bird keep={keep}", f"bird:keep={keep}", False, steps, out / f"bird{keep}")
        if bird["status"] == "failed":
            rows.append(bird | {"budget": f"bird keep={keep}"})
            continue
        topk_keep = matching_topk_keep(bird["bucket_numel"], bird["bytes_per_step"])
        budget = f"bird keep={keep}"
        rows += [
            bird | {"budget": budget},
            run(f"bird+EF keep={keep}", f"bird:keep={keep}", True, steps, out / f"birdef{keep}") | {"budget": budget},
            run(f"topk+EF keep={topk_keep}", f"topk:keep={topk_keep}", True, steps, out / f"topkef{keep}")
            | {"budget": budget},
            run(f"topk keep={topk_keep}", f"topk:keep={topk_keep}", False, steps, out / f"topk{keep}")
            | {"budget": budget},
        ]
    rows.append(run("topk+EF keep=0.01", "topk:keep=0.01", True, steps, out / "topk001") | {"budget": "topk default"})
    for r in rows:
        r.pop("bucket_numel", None)
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables as Markdown (``docs/results/ddp.md``)."""
    setup = result["setup"]
    lines = [
        "# DDP codec hook: step time and BIRD vs top-k + EF (`fl-split bench ddp`)",
        "",
        f"Digits CNN ({setup['model_gradient_elements']:,} gradient elements), {setup['ranks']} ranks on "
        f"{setup['backend']}, {setup['cpus']} CPUs, {setup['torch_threads_per_rank']} torch thread per rank, "
        f"DDP buckets of {setup['bucket_cap_mb']} MB. Bytes are the payloads each rank sent per step (mean over "
        "steps), compression is 4 × elements / bytes, times are per step on rank 0 (step time: the slower rank's "
        "median).",
    ]
    if "speed" in result:
        lines += [
            "",
            f"## Step time against plain DDP ({result['speed']['steps']} steps, one seed)",
            "",
            "| codec | EF | step ms | vs plain | encode ms | exchange ms | decode ms | bytes/step | compression "
            "| residual bytes | test acc |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["speed"]["table"]:
            lines.append(
                f"| {r['spec'] or 'plain DDP (all-reduce)'} | {'yes' if r['error_feedback'] else 'no'} "
                f"| {_fmt(r.get('step_ms'), 1)} | {_fmt(r.get('step_time_vs_plain'), 2)} "
                f"| {_fmt(r.get('encode_ms'), 2)} | {_fmt(r.get('exchange_ms'), 2)} | {_fmt(r.get('decode_ms'), 2)} "
                f"| {_fmt(r.get('bytes_per_step'), 0)} | {_fmt(r.get('compression_ratio'), 1)} "
                f"| {_fmt(r.get('residual_bytes'))} | {_fmt(r.get('test_accuracy'), 4)} |"
            )
    if "bird" in result:
        b = result["bird"]
        lines += [
            "",
            f"## BIRD against top-k at the same measured bytes ({b['steps']} steps, {b['seeds']} seeds per row)",
            "",
            "| budget | codec | EF | status | bytes/step | compression | encode ms | decode ms | residual bytes "
            "| test acc (mean ± sd) | per seed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in b["table"]:
            acc = (
                f"{r['test_accuracy']:.4f} ± {r['test_accuracy_std']:.4f}"
                if r.get("test_accuracy") is not None
                else "–"
            )
            status = r["status"] + (f" ({r['failed_seeds']}/{r['seeds']} failed)" if r.get("failed_seeds") else "")
            lines.append(
                f"| {r.get('budget', '–')} | {r['spec'] or 'plain DDP'} | {'yes' if r['error_feedback'] else 'no'} "
                f"| {status} | {_fmt(r.get('bytes_per_step'), 0)} | {_fmt(r.get('compression_ratio'), 1)} "
                f"| {_fmt(r.get('encode_ms'), 2)} | {_fmt(r.get('decode_ms'), 2)} | {_fmt(r.get('residual_bytes'))} "
                f"| {acc} | {', '.join(f'{a:.3f}' for a in r.get('test_accuracy_seeds', []))} |"
            )
        errors = sorted({r["error"].split(";")[0] for r in b["table"] if r.get("error")})
        if errors:
            lines += ["", "Failures (first error of each):", ""] + [f"- `{e}`" for e in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench ddp [speed|bird|all] [--steps N] [--bird-keeps ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench ddp", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["speed", "bird", "all"])
    parser.add_argument("--steps", type=int, help="steps per run (default: speed 60, bird 120)")
    parser.add_argument("--bird-keeps", nargs="*", type=float, default=[0.1, 0.3], help="bird: BIRD's keep values")
    parser.add_argument("--seeds", type=int, default=3, help="bird: runs per cell (seeds 0..N-1)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--md", help="also write the tables as Markdown here")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "setup": {
            "dataset": "digits",
            "model_gradient_elements": model_numel(),
            "ranks": 2,
            "backend": "gloo (CPU)",
            "torch_threads_per_rank": max(1, (os.cpu_count() or 1) // 2),
            "cpus": os.cpu_count(),
            "bucket_cap_mb": 25.0,
        }
    }
    with tempfile.TemporaryDirectory(prefix="fl-split-bench-ddp-") as tmp:
        if args.what in ("speed", "all"):
            result["speed"] = {"steps": args.steps or 60, "table": speed_table(args.steps or 60, Path(tmp) / "speed")}
        if args.what in ("bird", "all"):
            steps = args.steps or 120
            table = bird_table(steps, Path(tmp) / "bird", args.bird_keeps, args.seeds)
            result["bird"] = {"steps": steps, "seeds": args.seeds, "table": table}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.md:
        Path(args.md).write_text(markdown(result), encoding="utf-8")
    return 0
