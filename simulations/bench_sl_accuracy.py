"""Split-learning accuracy at equal measured budgets: codecs × modes × datasets (JSON + a Markdown table).

Each row is a full run on the in-process engine (the same client/server step functions as over
Flower, so the same accuracy and bytes); accuracies and byte totals are read from its metrics.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fl_split.config import CONF_DIR
from fl_split.sl.config import SLConfig, load_sl_config
from simulations.sl import run_sl
from strategies.split_learning import TrainingFailed

DEFAULT_CONFIG = CONF_DIR / "bench_sl_accuracy.yaml"


def run(bench: dict[str, Any], out_dir: Path, groups: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (group, mode, codec[, varied value]) cell over the group's seeds; one row per cell."""
    rows = []
    for group, spec in bench["groups"].items():
        if groups and group not in groups:
            continue
        codecs = {k: v for k, v in bench["codecs"].items() if k in spec.get("codecs", bench["codecs"])}
        vary_key, vary_values = next(iter(spec.get("vary", {"": [None]}).items()))
        seeds = spec.get("seeds", [bench["base"].get("seed", 0)])
        for mode, (label, codec), value in itertools.product(spec["modes"], codecs.items(), vary_values):
            values = {**bench["base"], **spec.get("set", {}), "mode": mode, "uplink": codec}
            if vary_key:
                values[vary_key] = value
            cells = []
            for seed in seeds:
                cell_dir = out_dir / f"{group}-{mode}-{label}-{value}-{seed}"
                values.update(seed=seed, out_dir=str(cell_dir), existing_out="overwrite")
                cells.append(run_cell(load_sl_config("sl", values=values)))
            row = {"group": group, "mode": mode, "codec": codec, **({vary_key: value} if vary_key else {})}
            rows.append({**row, **aggregate(cells, seeds)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def aggregate(cells: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One row from a cell's runs over several seeds: mean and std of the accuracies, the rest of seed 0's run."""
    done = [c for c in cells if c["status"] == "completed"]
    if len(done) < len(cells):
        failed = next(c for c in cells if c["status"] != "completed")
        return {**failed, "seeds": seeds}
    out = dict(done[0])
    for key in ("final_test_accuracy", "final_test_accuracy_dense", "best_test_accuracy"):
        values = [c[key] for c in done]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out[f"{key}_per_seed"] = values
    out["seeds"] = seeds
    out["wall_s"] = round(sum(c["wall_s"] for c in done), 1)
    return out


def run_cell(config: SLConfig) -> dict[str, Any]:
    """One run; its accuracies and measured byte totals."""
    t0 = time.perf_counter()
    try:
        summary = run_sl(config)
    except TrainingFailed as exc:  # report the cell, go on with the others
        return {"status": "failed", "error": str(exc), "wall_s": round(time.perf_counter() - t0, 1)}
    metrics = [json.loads(line) for line in Path(summary["files"]["metrics"]).read_text().splitlines()]
    activation_bytes = sum(r.get("uplink_activation_bytes", 0) for r in metrics)
    return {
        "status": "completed",
        "final_test_accuracy": summary["final_test_accuracy"],
        "final_test_accuracy_dense": summary["final_test_accuracy_dense"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "cum_uplink_activation_mb": activation_bytes / 1e6,
        "cum_uplink_mb": metrics[-1]["cum_uplink_bytes"] / 1e6,
        "cum_downlink_mb": metrics[-1]["cum_downlink_bytes"] / 1e6,
        "bits_per_element": 8 * activation_bytes / _elements(metrics, config),
        "rounds": len(metrics),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _elements(metrics: list[dict[str, Any]], config: SLConfig) -> int:
    """Activation elements sent over the run: samples × elements per sample at the cut."""
    from fl_split.sl.setup import check_model_fits_data

    per_sample = 1
    for d in check_model_fits_data(config):
        per_sample *= d
    return sum(r["samples"] for r in metrics) * per_sample


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| data | mode | uplink codec | final acc (mean ± std over seeds) | final acc (dense eval) | bits/elem "
        "| uplink act. MB | uplink MB | downlink MB |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if r["status"] != "completed":
            lines.append(f"| {r['group']} | {r['mode']} | `{r['codec']}` | failed: {r['error'][:80]} |")
            continue
        vary = "".join(f" {k}={r[k]}" for k in r if k == "batches_per_message")
        std = f" ± {r['final_test_accuracy_std']:.4f}" if len(r["seeds"]) > 1 else ""
        lines.append(
            f"| {r['group']}{vary} | {r['mode']} | `{r['codec']}` | {r['final_test_accuracy']:.4f}{std} | "
            f"{r['final_test_accuracy_dense']:.4f} | {r['bits_per_element']:.3f} | "
            f"{r['cum_uplink_activation_mb']:.2f} | "
            f"{r['cum_uplink_mb']:.2f} | {r['cum_downlink_mb']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``fl-split bench sl-accuracy [--config PATH] [--groups ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="fl-split bench sl-accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="benchmark YAML (base, codecs, groups)")
    parser.add_argument("--groups", nargs="*", help="run only these groups")
    parser.add_argument("--set", action="extend", nargs="+", default=[], help="override base keys: key=value")
    parser.add_argument("--out", help="write the JSON here (the Markdown table goes next to it)")
    args = parser.parse_args(argv)
    bench = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    for item in args.set:
        key, _, value = item.partition("=")
        bench["base"][key] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(bench, Path(tmp), args.groups)
    text = json.dumps({"rows": rows}, indent=2)
    print(text)
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".md").write_text(markdown(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
