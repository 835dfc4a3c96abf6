"""``fl-split gpu-check``: one prepared check of every CUDA path, as one JSON report.

Meant for a machine with one NVIDIA GPU and about 8 minutes: run it once, read the report, fix what
it finds. On a machine without CUDA it prints the report with ``"cuda": false``, runs nothing that
needs a GPU and exits 0. The checks, each with its own status (``passed``, ``failed`` with the error,
or ``skipped`` with the reason) and seconds:

``codecs``
    Every registered codec at its defaults encodes the same post-ReLU-like tensor on the CPU and on
    CUDA. Where two fresh CPU encodes agree (the codec is deterministic), the CUDA payload must be
    byte-identical to them, and decoding it on CUDA must give the CPU decode (1e-6).
``ray_gpu_share``
    A Ray task with a virtual client's GPU share (``num_gpus`` 0.125) sees CUDA: what makes
    ``client_device=auto`` pick it in a simulation.
``sl_8_clients``
    Split learning over Flower's simulation engine: 8 virtual clients sharing the GPU
    (``flower.num_gpus`` 0.125, ``client_device`` auto), the server half on CUDA, 2 rounds on digits.
``fl_round``
    One federated round on CUDA (4 clients, ``flower.num_gpus`` 0.25).
``ddp_nccl``
    ``fl-split ddp`` at world size 1 with ``device`` and ``backend`` auto: the rank must pick ``cuda:0`` and
    NCCL; the same run on the CPU (gloo) sends the same bytes per step, and the accuracies agree (0.05).
``sl_throughput``
    ResNet18 split learning in process at 1 and 16 clients, server batching off and on: samples/s
    with both halves on the CPU and with both on CUDA (the ``bench sl`` cells), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

Check = Callable[[], dict[str, Any]]


def _codecs() -> dict[str, Any]:
    from fl_split.codecs import create_codec, list_codecs

    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(32, 64, 16, 16, generator=g))
    out: dict[str, Any] = {}
    bad = []
    for name in list_codecs():
        cpu_a, cpu_b = create_codec(name).encode(x), create_codec(name).encode(x)
        gpu = create_codec(name).encode(x.cuda())
        deterministic = cpu_a == cpu_b
        # byte identity is reported; a float sum's order (a scale in the header) may differ by an ulp on CUDA
        row: dict[str, Any] = {"deterministic": deterministic, "identical": gpu == cpu_a, "bytes": len(gpu)}
        decoded = create_codec(name).decode(gpu, device="cuda")
        row["decoded_on"] = str(decoded.device)
        if deterministic:
            ref = create_codec(name).decode(cpu_a)
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            row["max_decode_diff"] = float((decoded.cpu() - ref).abs().max()) if ref.numel() else 0.0
            if row["max_decode_diff"] > 1e-5 * max(scale, 1.0) or decoded.device.type != "cuda":
                bad.append(name)
        out[name] = row
    if bad:
        raise AssertionError(f"CUDA decodes differ from the CPU's for deterministic codecs {bad}: {out}")
    return {"codecs": out}


def _ray_gpu_share() -> dict[str, Any]:
    import ray

    from fl_split.training import client_device

    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
    try:

        def probe() -> tuple[bool, str, str]:
            import torch as t

            return t.cuda.is_available(), str(ray.get_gpu_ids()), str(client_device("auto"))

        share = ray.get(ray.remote(num_gpus=0.125)(probe).remote(), timeout=120)
        none = ray.get(ray.remote(num_gpus=0)(probe).remote(), timeout=120)
    finally:
        ray.shutdown()
    if not share[0] or share[2] != "cuda":
        raise AssertionError(f"a Ray task with num_gpus=0.125 does not train on CUDA: {share}")
    if none[2] != "cpu":
        raise AssertionError(f"a Ray task without a GPU share would train on {none[2]} (auto must mean cpu): {none}")
    return {"with_share": share, "without_share": none}


def _sl_8_clients() -> dict[str, Any]:
    from fl_split.sl.config import load_sl_config
    from simulations.sl import run_sl

    values = {
        "clients": 8,
        "rounds": 2,
        "server_device": "cuda",
        "client_device": "cuda",  # fails loudly where a virtual client does not see the GPU
        "progress": False,
        "round_timeout_s": 240.0,
        "out_dir": tempfile.mkdtemp(prefix="gpu-check-sl-"),
        "flower": {"num_gpus": 0.125, "num_cpus": 1.0, "engine_wait_ms": 2.0, "timeout_s": 120.0},
    }
    summary = run_sl(load_sl_config("sl", values=values))
    if summary["status"] != "completed":
        raise AssertionError(f"the run ended {summary['status']}: {summary.get('error')}")
    return {"final_test_accuracy": summary["final_test_accuracy"], "wall_s": summary["wall_s"]}


def _fl_round() -> dict[str, Any]:
    from fl_split.fl.config import load_fl_config
    from simulations.fl import run_fl

    values = {
        "clients": 4,
        "rounds": 1,
        "device": "cuda",
        "progress": False,
        "out_dir": tempfile.mkdtemp(prefix="gpu-check-fl-"),
        "flower": {"num_gpus": 0.25, "num_cpus": 1.0, "timeout_s": 120.0},
    }
    summary = run_fl(load_fl_config("fl", values=values))
    if summary["status"] != "completed":
        raise AssertionError(f"the run ended {summary['status']}: {summary.get('error')}")
    return {"final_test_accuracy": summary["final_test_accuracy"], "wall_s": summary["wall_s"]}


def _ddp_nccl() -> dict[str, Any]:
    from fl_split.ddp.config import load_ddp_config
    from fl_split.ddp.train import run_ddp

    runs = {}
    for device in ("auto", "cpu"):
        values = {"world_size": 1, "steps": 40, "log_every": 20, "device": device, "progress": False}
        values["out_dir"] = tempfile.mkdtemp(prefix=f"gpu-check-ddp-{device}-")
        results = run_ddp(load_ddp_config(values=values))
        if not results:
            raise AssertionError("run_ddp returned no rank results")
        runs[device] = results[0]
    gpu, cpu = runs["auto"], runs["cpu"]
    if (gpu["device"], gpu["backend"], cpu["backend"]) != ("cuda:0", "nccl", "gloo"):
        raise AssertionError(
            f"auto placed the rank on {gpu['device']} with {gpu['backend']}; cpu used {cpu['backend']}"
        )
    if gpu["step_bytes"] != cpu["step_bytes"] or abs(gpu["test_accuracy"] - cpu["test_accuracy"]) > 0.05:
        raise AssertionError(f"CUDA and CPU runs differ: {gpu} vs {cpu}")
    keys = ("device", "backend", "step_s", "step_bytes", "test_accuracy", "encode_s", "exchange_s", "decode_s")
    return {device: {k: r[k] for k in keys} for device, r in runs.items()}


def _sl_throughput() -> dict[str, Any]:
    from fl_split.sl.transport import InProcessTransport
    from simulations.bench_sl import cell_config, measure

    rows = []
    for clients in (1, 16):
        for batching in (False, True):
            for device in ("cpu", "cuda"):
                cfg = cell_config("resnet18", clients, 1, 4, "inprocess", 100.0, batching, device)
                cfg = cfg.replace(client_device=device)
                row = measure(cfg, InProcessTransport(clients), "inprocess")
                rows.append({k: row[k] for k in ("clients", "server_batching", "server_device", "samples_per_s")})
    speedups = {}
    for clients in (1, 16):
        for batching in (False, True):
            rate = {
                r["server_device"]: r["samples_per_s"]
                for r in rows
                if (r["clients"], r["server_batching"]) == (clients, batching)
            }
            speedups[f"{clients}_clients_batching_{'on' if batching else 'off'}"] = round(rate["cuda"] / rate["cpu"], 2)
    return {"runs": rows, "gpu_over_cpu": speedups}


#: name → check, in the order they run (each needs CUDA).
CHECKS: dict[str, Check] = {
    "codecs": _codecs,
    "ray_gpu_share": _ray_gpu_share,
    "sl_8_clients": _sl_8_clients,
    "fl_round": _fl_round,
    "ddp_nccl": _ddp_nccl,
    "sl_throughput": _sl_throughput,
}


def run_checks(only: Sequence[str] = (), out: str | None = None) -> dict[str, Any]:
    """Run the checks (or ``only`` those) and return the report (see the module docstring); with ``out``,
    the report so far is written there after every check (a session cut short keeps what finished)."""
    report: dict[str, Any] = {
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "checks": {},
    }
    t_all = time.perf_counter()
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        if not report["cuda"]:
            report["checks"][name] = {
                "status": "skipped",
                "reason": "no CUDA device (torch.cuda.is_available() is False)",
            }
            continue
        t0 = time.perf_counter()
        try:
            result = {"status": "passed", **check()}
        except Exception as exc:
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            result["traceback"] = traceback.format_exc()[-3000:]
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["checks"][name] = result
        if out:
            _write(report, out)
    report["wall_s"] = round(time.perf_counter() - t_all, 1)
    report["failed"] = sorted(n for n, c in report["checks"].items() if c["status"] == "failed")
    return report


def _write(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``fl-split gpu-check [--only NAME ...] [--out FILE]``: print the JSON report; 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="fl-split gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], choices=list(CHECKS), help="run only these checks")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    report = run_checks(args.only, args.out)
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        _write(report, args.out)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
