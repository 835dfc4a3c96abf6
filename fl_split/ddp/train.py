"""``fl-split ddp``: data-parallel training of the configured model with the codec hook (gloo, CPU).

Started directly it spawns ``world_size`` local processes; under ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) each process is one rank, on one machine or
several. Each rank trains on its IID shard of the dataset; every ``log_every`` steps rank 0 writes a
``metrics.jsonl`` row: the loss averaged over ranks, test accuracy, and the payload bytes all ranks
sent (``uplink_bytes``) and received (``downlink_bytes``) in those steps, as the hook measured them.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fl_split.ddp.hook import register_codec_hook
from fl_split.fl.client import accuracy, build_model
from fl_split.metrics import RunWriter
from fl_split.sl.setup import batch_indices, batches_per_epoch, client_data, load_split, make_sgd


def _data_config(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "partition": "iid", "dirichlet_alpha": 0.3, "shards_per_client": 2, "cut": "shallow"}


def train_rank(rank: int, world: int, config: dict[str, Any]) -> None:
    """One rank's training loop (the process group is initialised)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = _data_config(config)
    model = build_model(cfg, seed=int(config["seed"]))
    ddp = DDP(model)
    state = register_codec_hook(ddp, str(config["codec"]), error_feedback=bool(config["error_feedback"]))
    sgd = make_sgd(ddp.parameters(), config)
    x, y = client_data(cfg, rank, world)
    writer = RunWriter(config["out_dir"]) if rank == 0 else None
    xt, yt = load_split(cfg, "test") if rank == 0 else (None, None)
    bs, nb = int(config["batch_size"]), batches_per_epoch(len(y), int(config["batch_size"]))
    t0, loss_sum, seen, sent0, recv0, cum = time.perf_counter(), 0.0, 0, 0, 0, [0, 0]
    for step in range(int(config["steps"])):
        idx = batch_indices(len(y), bs, int(config["seed"]), rank, step // nb, step % nb)
        loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        loss_sum, seen = loss_sum + loss.item() * len(idx), seen + len(idx)
        if (step + 1) % int(config["log_every"]) and step + 1 != int(config["steps"]):
            continue
        totals = torch.tensor(
            [loss_sum, seen, state.bytes_sent - sent0, state.bytes_received - recv0], dtype=torch.float64
        )
        dist.all_reduce(totals)
        sent0, recv0, loss_sum, seen = state.bytes_sent, state.bytes_received, 0.0, 0
        if writer is not None and xt is not None and yt is not None:
            up, down = int(totals[2]), int(totals[3])
            cum = [cum[0] + up, cum[1] + down]
            acc = accuracy(model, xt, yt)
            writer.write_round(
                {
                    "round": step + 1,  # the step count: a row covers log_every steps
                    "train_loss": float(totals[0]) / max(float(totals[1]), 1.0),
                    "test_accuracy": acc,
                    "test_accuracy_dense": acc,
                    "uplink_bytes": up,
                    "downlink_bytes": down,
                    "cum_uplink_bytes": cum[0],
                    "cum_downlink_bytes": cum[1],
                    "steps": step + 1,
                    "samples": int(totals[1]),
                    "dropped": 0,
                    "wall_s": round(time.perf_counter() - t0, 3),
                    "step_bytes_rank0": state.step_bytes(),
                    "residual_bytes_rank0": sum(r.numel() * r.element_size() for r in state.residuals.values()),
                }
            )
    if writer is not None:
        writer.write_summary(config, {"title": f"DDP {config['world_size']} ranks, {config['codec']}", "mode": "ddp"})


def _spawned(rank: int, world: int, port: int, config: dict[str, Any]) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    _run_rank(rank, world, config)


def _run_rank(rank: int, world: int, config: dict[str, Any]) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=float(config["timeout_s"])))
    try:
        train_rank(rank, world, config)
    finally:
        dist.destroy_process_group()


def run_ddp(config: dict[str, Any]) -> None:
    """Run under ``torchrun`` (its environment) or spawn ``world_size`` local ranks and wait for them."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        _run_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), config)
        return
    from simulations.deploy import free_port

    world = int(config["world_size"])
    mp.start_processes(_spawned, args=(world, free_port(), config), nprocs=world, join=True, start_method="spawn")
