"""Time to accuracy on emulated edge links: a real deployment with every SuperNode behind a shaped link.

``fl-split bench edge`` (root: it makes network namespaces) deploys ``flower-superlink`` and
``--clients`` ``flower-supernode`` processes across a :class:`~simulations.netns.ShapedNetwork` (each
SuperNode and its ClientApps in a namespace of its own, its link shaped per direction by ``tbf``) and
runs, per link profile, split learning over the stream transport (uplink codecs at equal budget,
``k = 1``, and MS at a larger ``k``) and federated learning (dense, signed MS, top-k + error feedback)
on digits until ``--target`` test accuracy. First it runs every configuration on unshaped links: the
link model (:mod:`fl_split.link`) predicts each shaped run's time from that run's measured rows alone,
and the report sets the prediction against the measurement. With ``--seeds 0,1,2`` every configuration
runs once per seed (seed 0's runs in ``OUT/PROFILE``, seed N's in ``OUT/seedN/PROFILE``) and each shaped
run is predicted from the mean of its configuration's unshaped runs over all the seeds: one unshaped run
on a shared machine varied by up to 41 % per round between runs (docs/results.md), and the prediction
carried that noise. Every process of the deployment runs torch with ``--threads`` intra-op threads
(default: the machine's cores shared among the SuperNodes and the server, at least one): with torch's
default of one per core, five processes on two cores competed for them, unshaped runs (all of them
computing at once) more than shaped ones, and the model over-predicted the Wi-Fi runs by up to 24 %.

Per run (``edge.json``'s ``runs``): ``profile``, ``scheme`` (``sl``/``fl``), ``codec``, ``k``,
``time_to_target_s`` (the rows' wall clock at the end of the first round at or above the target;
``null`` when not reached), ``rounds_to_target``, ``uplink_bytes``/``downlink_bytes`` (measured, to the
target, else the whole run), ``link_s`` (the model's share of that time for moving the bytes),
``compute_s`` (the rest: compute, Flower's messages), ``seed``, ``predicted_s`` (the model, to the same
round, averaged over the configuration's unshaped runs: ``predicted_from_runs`` of them) and
``prediction_error`` (``predicted_s / time_to_target_s - 1``), ``threads`` (torch's intra-op threads
per process; ``null`` for a run kept from a version that did not record them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_split.link import PROFILES, UNSHAPED, LinkProfile, link_share_s, parse_link, predict_time_to_round
from fl_split.metrics import read_metrics

APP = Path(__file__).resolve().parent.parent

#: Split learning's uplink codecs at (about) equal budget in bits per activation element (as compare).
SL_CODECS = {"none": "none", "ms": "ms:keep=0.01,bits=2", "topk": "topk:keep=0.036", "quant": "quant:bits=2"}
#: Federated learning's update codecs: (spec, error feedback).
FL_CODECS = {
    "none": ("none", False),
    "ms": ("ms:keep=0.01,bits=2,signed=true", True),
    "topk+ef": ("topk:keep=0.01", True),
}


@dataclass(frozen=True)
class Spec:
    """One configuration: its scheme, codec label, ``k`` (SL) and run-config values."""

    scheme: str
    codec: str
    k: int
    values: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{self.scheme}_{self.codec}_k{self.k}".replace("+", "")


def specs(args: argparse.Namespace, server_ip: str, seed: int = 0) -> list[Spec]:
    """The configurations of one profile and seed (the same on every profile)."""
    out: list[Spec] = []
    sl_base = {
        "clients": args.clients,
        "rounds": args.sl_rounds,
        "max-steps-per-round": args.steps,
        "stop-at-accuracy": args.target,
        "transport": "stream",
        "stream.host": server_ip,
        "stream.bind": "0.0.0.0",
        "stream.insecure": True,  # plaintext between namespaces made for this run; TLS: docs/deployment.md
        "seed": seed,
    }
    for label in args.sl_codecs:
        ks = [1, args.large_k] if label == "ms" and args.large_k > 1 else [1]
        for k in ks:
            out.append(Spec("sl", label, k, {**sl_base, "uplink": SL_CODECS[label], "batches-per-message": k}))
    for label in args.fl_codecs:
        spec, ef = FL_CODECS[label]
        values = {"mode": "fl", "clients": args.clients, "rounds": args.fl_rounds, "uplink": spec, "seed": seed}
        out.append(Spec("fl", label, 1, {**values, "error-feedback": ef}))
    return out


def profile_dir(out: Path, link: LinkProfile, seed: int = 0) -> Path:
    """Where a profile's runs of ``seed`` go: ``OUT/PROFILE`` for seed 0, ``OUT/seedN/PROFILE`` for the others."""
    return (out if seed == 0 else out / f"seed{seed}") / link.name.replace("=", "").replace(",", "_")


def run_profile(
    profile: LinkProfile, args: argparse.Namespace, workdir: Path, failures: list[dict[str, str]], seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Every configuration on ``profile``'s links; the metrics rows per configuration name.

    A configuration whose run fails is recorded in ``failures`` (with its error) and the others go on;
    one that finished in an earlier invocation (its ``summary.json`` is there) is not run again.
    """
    from simulations.deploy import DeploymentError, LocalDeployment
    from simulations.netns import ShapedNetwork

    rows: dict[str, list[dict[str, Any]]] = {}
    names = [spec.name for spec in specs(args, "", seed)]  # the names do not depend on the address
    if all(_finished(workdir / name) for name in names):  # nothing to run: no network or deployment to start
        for name in names:
            _keep(workdir, name, profile, rows, args.threads)
        return rows
    with ShapedNetwork([profile] * args.clients) as net:
        with LocalDeployment(args.clients, workdir / "deploy", network=net, threads=args.threads) as dep:
            for spec in specs(args, net.server_ip, seed):
                out = workdir / spec.name
                if _finished(out):
                    _keep(workdir, spec.name, profile, rows, args.threads)
                    continue
                t0 = time.perf_counter()
                try:
                    out.mkdir(parents=True, exist_ok=True)  # the count first: a run that finishes has it
                    (out / THREADS_FILE).write_text(json.dumps({"threads": args.threads}) + "\n", encoding="utf-8")
                    dep.run(APP, {**spec.values, "out-dir": str(out)}, timeout_s=args.run_timeout_s)
                    rows[spec.name] = read_metrics(out / "metrics.jsonl")
                except (DeploymentError, OSError) as exc:
                    failures.append(
                        {"profile": profile.name, "seed": str(seed), "run": spec.name, "error": str(exc)[-2000:]}
                    )
                    print(f"  {profile.name:9s} {spec.name:14s} FAILED: {str(exc)[-300:]}", file=sys.stderr)
                    continue
                print(f"  {profile.name:9s} {spec.name:14s} {time.perf_counter() - t0:6.1f} s", file=sys.stderr)
    return rows


def _finished(run_dir: Path) -> bool:
    """Whether an earlier invocation finished the run in ``run_dir`` (kept; delete its ``summary.json`` to rerun)."""
    return (run_dir / "summary.json").exists()


def _keep(workdir: Path, name: str, profile: LinkProfile, rows: dict[str, list[dict[str, Any]]], threads: int) -> None:
    rows[name] = read_metrics(workdir / name / "metrics.jsonl")
    kept = run_threads(workdir / name)
    note = "" if kept == threads else f"; it ran with {kept or 'torch default'} threads, not {threads}"
    print(f"  {profile.name:9s} {name:14s} (kept from an earlier run{note})", file=sys.stderr)


def stored_rows(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of a profile's earlier runs under ``workdir`` (``--report-only``)."""
    rows = {}
    for spec in specs(args, ""):  # the names do not depend on the seed
        path = workdir / spec.name / "metrics.jsonl"
        if path.exists():
            rows[spec.name] = read_metrics(path)
    return rows


#: Written beside a finished run's metrics: the torch threads per process it ran with.
THREADS_FILE = "bench_edge.json"


def run_threads(run_dir: Path) -> int | None:
    """The torch threads per process a run in ``run_dir`` ran with (``None``: not recorded)."""
    path = run_dir / THREADS_FILE
    return int(json.loads(path.read_text(encoding="utf-8"))["threads"]) if path.exists() else None


def default_threads(clients: int, cpus: int | None = None) -> int:
    """The cores this process may use, shared among ``clients`` SuperNodes and the server: at least 1 each."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // (clients + 1))


def _hit(rows: Sequence[Mapping[str, Any]], target: float) -> Mapping[str, Any] | None:
    return next((r for r in rows if float(r["test_accuracy"]) >= target), None)


def _extended(rows: Sequence[Mapping[str, Any]], last_round: int) -> list[Mapping[str, Any]]:
    """``rows`` continued to ``last_round`` with their mean round (a baseline that stopped sooner)."""
    out = list(rows)
    if not out or int(out[-1]["round"]) >= last_round:
        return out
    n = len(out)
    mean = {k: sum(float(r[k]) for r in out) / n for k in ("uplink_bytes", "downlink_bytes")}
    mean_wall = float(out[-1]["wall_s"]) / n
    for rnd in range(int(out[-1]["round"]) + 1, last_round + 1):
        prev = out[-1]
        out.append({**prev, **mean, "round": rnd, "wall_s": float(prev["wall_s"]) + mean_wall})
    return out


def summarize(
    spec: Spec,
    profile: LinkProfile,
    rows: Sequence[Mapping[str, Any]],
    baselines: Sequence[Sequence[Mapping[str, Any]]],
    target: float,
    clients: int,
    seed: int = 0,
) -> dict[str, Any]:
    """One run's entry of ``edge.json``; ``baselines``: the configuration's unshaped runs (one per seed) whose
    predictions to the run's round are averaged (none: no prediction)."""
    hit = _hit(rows, target)
    last = hit if hit is not None else rows[-1]
    rnd = int(last["round"])
    upto = [r for r in rows if int(r["round"]) <= rnd]
    up = sum(int(r["uplink_bytes"]) for r in upto)
    down = sum(int(r["downlink_bytes"]) for r in upto)
    seq = False  # splitfed2 and FL: a round's clients run in parallel, each on its own link
    link_s = link_share_s(rows, profile, rnd, clients, sequential=seq)
    measured = float(last["wall_s"])
    baselines = [b for b in baselines if b]
    predicted = None
    if baselines:
        each = [
            predict_time_to_round(_extended(b, rnd), profile, rnd, clients, UNSHAPED, sequential=seq) for b in baselines
        ]
        predicted = sum(each) / len(each)
    return {
        "profile": profile.name,
        "up_mbit": profile.up_mbit,
        "down_mbit": profile.down_mbit,
        "scheme": spec.scheme,
        "codec": spec.codec,
        "codec_spec": spec.values["uplink"],
        "k": spec.k,
        "time_to_target_s": round(measured, 2) if hit is not None else None,
        "rounds_to_target": rnd if hit is not None else None,
        "wall_s": round(measured, 2),
        "final_accuracy": float(last["test_accuracy"]),
        "uplink_bytes": up,
        "downlink_bytes": down,
        "link_s": round(link_s, 2),
        "compute_s": round(measured - link_s, 2),
        "seed": seed,
        "predicted_s": None if predicted is None else round(predicted, 2),
        "predicted_from_runs": len(baselines),
        "prediction_error": None if predicted is None else round(predicted / measured - 1, 4),
    }


def table(runs: Sequence[Mapping[str, Any]], target: float) -> str:
    """Markdown: a row per run."""
    head = (
        f"| profile | scheme | codec | k | seed | time to {target:g} (s) | rounds | MB up | MB down | link s | other s "
        "| predicted s | error |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in runs:
        t = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        err = "" if r["prediction_error"] is None else f"{100 * r['prediction_error']:+.1f} %"
        pred = "" if r["predicted_s"] is None else f"{r['predicted_s']:.1f}"
        lines.append(
            f"| {r['profile']} | {r['scheme']} | {r['codec']} | {r['k']} | {r['seed']} | {t} "
            f"| {r['rounds_to_target'] or ''} "
            f"| {r['uplink_bytes'] / 1e6:.2f} | {r['downlink_bytes'] / 1e6:.2f} | {r['link_s']:.1f} "
            f"| {r['compute_s']:.1f} | {pred} | {err} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(runs: Sequence[Mapping[str, Any]], target: float, clients: int, path: Path, seed: int | None = None) -> None:
    """Time to target per configuration, one panel per profile; SL and FL in two colours; link time hatched
    (``seed``: the seed whose runs these are, named in the title when the report holds several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r["profile"] for r in runs))
    labels = list(
        dict.fromkeys(f"{r['scheme'].upper()} {r['codec']}" + (f" k={r['k']}" if r["k"] > 1 else "") for r in runs)
    )
    fig, axes = plt.subplots(
        1,
        len(profiles),
        figsize=(4.2 * len(profiles), 0.45 * len(labels) + 1.6),
        sharey=True,
        sharex=True,
        squeeze=False,
    )
    colors = {"sl": "#1f77b4", "fl": "#ff7f0e"}
    for ax, name in zip(axes[0], profiles, strict=True):
        mine = {
            f"{r['scheme'].upper()} {r['codec']}" + (f" k={r['k']}" if r["k"] > 1 else ""): r
            for r in runs
            if r["profile"] == name
        }
        xmax = max((r["wall_s"] for r in mine.values()), default=1.0)
        for y, label in enumerate(labels):
            r = mine.get(label)
            if r is None:
                continue
            if r["time_to_target_s"] is None:
                ax.text(
                    0.02 * xmax,
                    y,
                    f"not reached ({r['final_accuracy']:.3f} at {r['wall_s']:.0f} s)",
                    va="center",
                    fontsize=8,
                    color="0.3",
                )
                continue
            ax.barh(y, r["compute_s"], color=colors[r["scheme"]], alpha=0.45)
            ax.barh(y, r["link_s"], left=r["compute_s"], color=colors[r["scheme"]], hatch="//", edgecolor="white")
            if r["predicted_s"] is not None:
                ax.plot([r["predicted_s"]], [y], marker="|", markersize=14, color="black")
        first = next(iter(mine.values()))
        ax.set_title(
            f"{name}: {first['up_mbit']:g}/{first['down_mbit']:g} Mbit/s"
            if first["up_mbit"]
            else f"{name} (no shaping)",
            fontsize=10,
        )
        ax.set_xlabel(f"seconds to {target:g} test accuracy")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].set_ylim(len(labels) - 0.5, -0.5)  # first configuration on top; room for the last row's text
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    schemes = [s for s in ("sl", "fl") if any(r["scheme"] == s for r in runs)]  # only those plotted
    handles = [
        *(
            patch
            for s in schemes
            for patch in (
                Patch(color=colors[s], alpha=0.45, label=f"{s.upper()}: the rest (compute, Flower)"),
                Patch(facecolor=colors[s], hatch="//", edgecolor="white", label=f"{s.upper()}: link (model)"),
            )
        ),
        Line2D(
            [],
            [],
            marker="|",
            markersize=12,
            color="black",
            linestyle="none",
            label="predicted from the unshaped run(s)",
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(
        f"Time to accuracy on shaped edge links (digits, {clients} SuperNodes, each behind its own link"
        + ("" if seed is None else f"; the runs of seed {seed}")
        + ")",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fl-split bench edge",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="link profiles: " + "; ".join(p.describe() for p in PROFILES.values()),
    )
    p.add_argument(
        "--profiles",
        default="iot,lte,wifi",
        help="comma-separated profile names or `up=MBIT,down=MBIT[,rtt=MS]` rates (';' between custom ones)",
    )
    p.add_argument("--clients", type=int, default=4, help="SuperNodes, each on its own link")
    p.add_argument("--target", type=float, default=0.95, help="test accuracy to reach")
    p.add_argument("--sl-codecs", default=",".join(SL_CODECS), help=f"of {', '.join(SL_CODECS)}")
    p.add_argument("--fl-codecs", default=",".join(FL_CODECS), help=f"of {', '.join(FL_CODECS)}")
    p.add_argument("--large-k", type=int, default=4, help="MS also at this batches_per_message (1: not)")
    p.add_argument("--steps", type=int, default=12, help="split learning: a client's batches per round (12: an epoch)")
    p.add_argument("--sl-rounds", type=int, default=6, help="split learning: most rounds (stops at the target)")
    p.add_argument("--fl-rounds", type=int, default=8, help="federated learning: rounds")
    p.add_argument(
        "--seeds",
        "--seed",
        default="0",
        help="comma-separated seeds: every configuration runs once per seed, and each shaped run is predicted "
        "from the mean of its configuration's unshaped runs (seed 0 in OUT/PROFILE, seed N in OUT/seedN/PROFILE)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads in every deployed process (0: the cores shared among the SuperNodes and "
        "the server, at least 1)",
    )
    p.add_argument("--run-timeout-s", type=float, default=1800.0)
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: rebuild edge.json, .md and .png from the runs in --out"
    )
    p.add_argument("--out", default="runs/bench_edge", help="folder for edge.json, edge.md, edge.png and the runs")
    args = p.parse_args(argv)
    args.sl_codecs = [c for c in args.sl_codecs.split(",") if c]
    args.fl_codecs = [c for c in args.fl_codecs.split(",") if c]
    try:
        args.seeds = list(dict.fromkeys(int(t) for t in str(args.seeds).split(",") if t.strip()))
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not args.seeds or min(args.seeds) < 0:
        p.error(f"--seeds: expected one or more seeds >= 0, got {args.seeds!r}")
    if args.threads < 0:
        p.error(f"--threads: expected 0 (automatic) or a count >= 1, got {args.threads}")
    args.threads = args.threads or default_threads(args.clients)
    for label in args.sl_codecs:
        if label not in SL_CODECS:
            p.error(f"--sl-codecs: unknown {label!r}; choose from {', '.join(SL_CODECS)}")
    for label in args.fl_codecs:
        if label not in FL_CODECS:
            p.error(f"--fl-codecs: unknown {label!r}; choose from {', '.join(FL_CODECS)}")
    sep = ";" if ";" in args.profiles or "=" in args.profiles else ","
    try:
        args.links = [parse_link(t) for t in args.profiles.split(sep) if t.strip()]
    except ValueError as exc:
        p.error(f"--profiles: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()  # the ServerApps write here from the SuperLink's folder
    if not args.report_only:
        from simulations.netns import NetnsError, check_can_create

        try:
            check_can_create()
        except NetnsError as exc:
            print(f"fl-split bench edge: {exc}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failures: list[dict[str, str]] = []
    names = {s.name: s for s in specs(args, "")}

    def rows_of(link: LinkProfile, seed: int) -> dict[str, list[dict[str, Any]]]:
        where = profile_dir(out, link, seed)
        if args.report_only:
            return stored_rows(args, where)
        print(f"{link.describe()}, seed {seed}: {len(names)} runs", file=sys.stderr)
        return run_profile(link, args, where, failures, seed)

    baselines = {seed: rows_of(UNSHAPED, seed) for seed in args.seeds}
    runs = [
        summarize(names[n], UNSHAPED, rows, [], args.target, args.clients, seed)
        | {"threads": run_threads(profile_dir(out, UNSHAPED, seed) / n)}
        for seed, base in baselines.items()
        for n, rows in base.items()
        if rows
    ]
    for link in args.links:
        for seed in args.seeds:
            measured = rows_of(link, seed)
            runs += [
                summarize(
                    names[n], link, rows, [b.get(n, []) for b in baselines.values()], args.target, args.clients, seed
                )
                | {"threads": run_threads(profile_dir(out, link, seed) / n)}
                for n, rows in measured.items()
                if rows
            ]
            write_report(out, args, runs, failures, time.perf_counter() - t0)  # what is done so far survives
    report = write_report(out, args, runs, failures, time.perf_counter() - t0)
    print(table(runs, args.target))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 1 if failures else 0


def write_report(
    out: Path, args: argparse.Namespace, runs: list[dict[str, Any]], failures: list[dict[str, str]], wall: float
) -> dict[str, Any]:
    """``edge.json``, ``edge.md`` and ``edge.png`` from the runs summarised so far."""
    errors = [abs(r["prediction_error"]) for r in runs if r["prediction_error"] is not None]
    report = {
        "benchmark": "edge",
        "target_accuracy": args.target,
        "clients": args.clients,
        "seeds": args.seeds,
        "profiles": [vars(p) for p in args.links],
        "runs": runs,
        "failures": failures,
        "prediction_abs_error_max": round(max(errors), 4) if errors else None,
        "prediction_abs_error_mean": round(sum(errors) / len(errors), 4) if errors else None,
        "wall_s": round(wall, 1),
    }
    (out / "edge.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "edge.md").write_text(table(runs, args.target), encoding="utf-8")
    first = [r for r in runs if r.get("seed", 0) == args.seeds[0]]
    if first:
        seed = args.seeds[0] if len(args.seeds) > 1 else None
        plot(first, args.target, args.clients, out / "edge.png", seed)  # one seed: a bar per configuration
    return report


if __name__ == "__main__":
    raise SystemExit(main())
