"""``fl-split ddp``: data-parallel training of the configured model with the codec hook.

Each rank trains on its ``device`` (``auto``: one GPU per rank where the machine has enough, with NCCL;
else the CPU, with gloo; :func:`fl_split.launch.placement`): its model, batches and the hook's codec
run there, and with NCCL the payloads are exchanged from that GPU.

Started directly it spawns ``world_size`` local processes; under ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) each process is one rank, on one machine or
several. Each rank trains on its IID shard of the dataset; every ``log_every`` steps rank 0 writes a
``metrics.jsonl`` row: the loss averaged over ranks, test accuracy, and the payload bytes all ranks
sent (``uplink_bytes``) and received (``downlink_bytes``) in those steps, as the hook measured them.

At the end every rank writes ``rank{r}.json`` (its step times, hook timings, bytes, residual memory
and a digest of its final weights) and rank 0 writes ``model.pt``. At the first metrics row at or
after every ``checkpoint_every`` steps, rank 0 gathers one ``checkpoint.pt`` (model, optimizer and
byte totals, plus every rank's hook residuals, counters and codec random state); ``--resume``
continues from it and gives the rows and weights an uninterrupted run gives.
With ``hook = false`` the model trains with DDP's own float32 all-reduce (the baseline): its rows
carry no bytes, since no payload is made to measure.

Before the hook is registered one backward pass in eval mode (no optimizer step, no BatchNorm
update) lets DDP settle its bucket layout, which it otherwise regroups after the first step: every
step of a run, fresh or resumed, then encodes the same buckets.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fl_split.checkpoint import check_resumable, due, load_rank_checkpoint, save_model, save_rank_checkpoint
from fl_split.codecs import seeded_codec_from_spec
from fl_split.codecs.rng_state import codec_rng_state, load_codec_rng_state
from fl_split.config import ConfigError
from fl_split.ddp.config import DDPConfig
from fl_split.ddp.hook import CodecHookState, register_codec_hook
from fl_split.launch import launch, rank_placement, read_rank_results
from fl_split.metrics import refuse_used
from fl_split.report import RunReporter
from fl_split.training import accuracy, batch_indices, batches_per_epoch, build_model, iid_shard, load_split, make_sgd

#: Called on each rank with ``(rank, state)`` right after the hook is registered (tests inject faults).
StateCallback = Callable[[int, CodecHookState], None]

#: Steps left out of the step-time statistics (allocation and caches of the first steps).
WARMUP_STEPS = 3


def _row(step: int, totals: torch.Tensor, cum: list[int], acc: float, state: CodecHookState | None, t0: float) -> dict:
    hooked = state is not None
    up, down = int(totals[2]), int(totals[3])
    return {
        "round": step,  # the step count: a row covers log_every steps
        "train_loss": float(totals[0]) / max(float(totals[1]), 1.0),
        "test_accuracy": acc,
        "test_accuracy_dense": acc,
        "uplink_bytes": up if hooked else None,
        "downlink_bytes": down if hooked else None,
        "cum_uplink_bytes": cum[0] if hooked else None,
        "cum_downlink_bytes": cum[1] if hooked else None,
        "steps": step,
        "samples": int(totals[1]),
        "dropped": 0,
        "wall_s": round(time.perf_counter() - t0, 3),
        "step_bytes_rank0": state.step_bytes() if state else None,
        "residual_bytes_rank0": state.residual_bytes() if state else None,
    }


def _weights_sha256(model: nn.Module) -> str:
    """A digest of the model's parameters: ranks in step hold the same one (buffers such as BatchNorm
    statistics are not in it: DDP sends rank 0's before each forward, so after the last step they differ)."""
    h = hashlib.sha256()
    for name, t in model.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _on_cpu(obj: Any) -> Any:
    """``obj`` (tensors in dicts and lists) with every tensor on the CPU: checkpoints load on any machine,
    and ranks gather their states to rank 0 without pickling CUDA tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _settle_buckets(ddp: DDP, model: nn.Module, x: torch.Tensor) -> None:
    """One backward pass in eval mode, then clear the gradients: DDP regroups its buckets by the order
    gradients arrived in, before the next step, so the hook sees that final layout from its first call."""
    model.eval()
    ddp(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train()


def train_rank(rank: int, world: int, config: DDPConfig, on_state: StateCallback | None = None) -> dict[str, Any]:
    """One rank's training loop (the process group is initialised); this rank's result.

    Returns
    -------
    dict
        ``rank``, ``steps``, ``step_s`` (median step time after :data:`WARMUP_STEPS`),
        ``step_s_mean``, ``weights_sha256``, and with the hook ``bytes_sent``, ``bytes_received``,
        ``step_bytes``, ``calls``, ``buckets``, ``bucket_numel`` (per bucket, in index order),
        ``residual_bytes``, ``encode_s``, ``exchange_s``, ``decode_s``;
        ``test_accuracy`` and ``final_train_loss`` (this rank's last batch).
    """
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    out = Path(config.out_dir)
    device, _ = rank_placement(config, world, rank)
    cuda = device.type == "cuda"
    model = build_model(config, seed=config.seed).to(device)
    x, y = (t.to(device) for t in iid_shard(config, rank, world))
    bs, nb = config.batch_size, batches_per_epoch(len(y), config.batch_size)
    start, resumed = 0, None
    if config.existing_out == "resume":  # collective: every rank gets its part (or the same error)
        start, shared, local = load_rank_checkpoint(out, "ddp", config)
        resumed = (shared, local)
        model.load_state_dict(shared["model"])
    ddp = DDP(model, device_ids=[device.index] if cuda else None, bucket_cap_mb=config.bucket_cap_mb)
    state = None
    if config.hook:
        _settle_buckets(ddp, model, x[:bs])
        codec = seeded_codec_from_spec(config.codec, config.seed, rank)  # reruns draw the same
        state = register_codec_hook(ddp, codec, error_feedback=config.error_feedback)
        if on_state is not None:
            on_state(rank, state)
    sgd = make_sgd(ddp.parameters(), config)
    t0, loss_sum, seen, cum = time.perf_counter(), 0.0, 0, [0, 0]
    if resumed is not None:
        shared, local = resumed
        sgd.load_state_dict(shared["optimizer"])
        cum, t0 = [int(v) for v in shared["cum"]], t0 - float(shared["wall_s"])
        if state is not None:
            state.load_state_dict(local["hook"])
            load_codec_rng_state(state.codec, local["codec_rng"])
    steps, log_every, saved = config.steps, config.log_every, start
    writer = None
    if rank == 0:  # the bar counts steps; it moves at the metrics rows (every log_every steps)
        progress = config.progress
        writer = RunReporter(out, config.existing_out, start, total=steps, desc="DDP", unit="step", progress=progress)
    xt, yt = (t.to(device) for t in load_split(config, "test"))
    sent0, recv0 = (state.bytes_sent, state.bytes_received) if state else (0, 0)
    step_times: list[float] = []
    loss = torch.zeros(())
    for step in range(start, steps):
        ts = time.perf_counter()
        idx = batch_indices(len(y), bs, config.seed, rank, step // nb, step % nb).to(device)
        loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        if cuda:
            torch.cuda.synchronize(device)  # the step's kernels, not only their launch
        step_times.append(time.perf_counter() - ts)
        loss_sum, seen = loss_sum + loss.item() * len(idx), seen + len(idx)
        if (step + 1) % log_every and step + 1 != steps:
            continue
        sent, recv = (state.bytes_sent, state.bytes_received) if state else (0, 0)
        totals = torch.tensor([loss_sum, seen, sent - sent0, recv - recv0], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        sent0, recv0, loss_sum, seen = sent, recv, 0.0, 0
        if writer is not None:
            cum = [cum[0] + int(totals[2]), cum[1] + int(totals[3])]
            writer.write_round(_row(step + 1, totals, cum, accuracy(model, xt, yt), state, t0))
        if due(step + 1, saved, config.checkpoint_every, steps):  # collective: every rank at once
            shared = {"model": _on_cpu(model.state_dict()), "optimizer": _on_cpu(sgd.state_dict()), "cum": cum}
            shared["wall_s"] = time.perf_counter() - t0
            local = {"hook": _on_cpu(state.state_dict()), "codec_rng": codec_rng_state(state.codec)} if state else {}
            save_rank_checkpoint(out, "ddp", step + 1, config, shared, local)
            saved = step + 1
    timed = step_times[WARMUP_STEPS:] or step_times
    result: dict[str, Any] = {
        "rank": rank,
        "device": str(device),
        "backend": dist.get_backend(),
        "steps": steps,
        "step_s": statistics.median(timed) if timed else None,
        "step_s_mean": statistics.fmean(timed) if timed else None,
        "test_accuracy": accuracy(model, xt, yt),
        "final_train_loss": float(loss.item()) if step_times else None,
        "weights_sha256": _weights_sha256(model),
    }
    if state is not None:
        result |= {
            "bytes_sent": state.bytes_sent,
            "bytes_received": state.bytes_received,
            "step_bytes": state.step_bytes(),
            "calls": state.calls,
            "buckets": len(state.last_bucket_bytes),
            "bucket_numel": [state.bucket_numel[i] for i in sorted(state.bucket_numel)],
            "residual_bytes": state.residual_bytes(),
            "encode_s": state.encode_s,
            "exchange_s": state.exchange_s,
            "decode_s": state.decode_s,
        }
    if writer is not None:
        save_model(out, {"model": _on_cpu(model.state_dict())})
        title = f"DDP {world} ranks, {config.codec if state else 'plain all-reduce'}"
        writer.write_summary(config, {"title": title, "mode": "ddp"})
    return result


def run_ddp(config: DDPConfig, on_state: StateCallback | None = None) -> list[dict[str, Any]] | None:
    """Run under ``torchrun`` (its environment) or spawn ``world_size`` local ranks and wait for them.

    Returns
    -------
    list of dict or None
        Spawned: every rank's result (:func:`train_rank`). Under ``torchrun``: ``None`` (this
        process is one rank; its result is in ``rank{r}.json``).

    Raises
    ------
    torch.multiprocessing.ProcessRaisedException
        A spawned rank raised (its message names the rank; ``rank{r}.json`` holds every rank's error).
    """
    world = config.world_size
    try:  # CUDA asked for where there is none, or too few GPUs: one error before any rank starts
        rank_placement(config, world, 0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.existing_out == "refuse":
        refuse_used(config.out_dir)  # before any rank starts
    elif config.existing_out == "resume":
        check_resumable(config.out_dir, "ddp", config)  # a clear error before any rank starts
    if not launch(train_rank, config, world, on_state):
        return None  # this process was one torchrun rank
    return read_rank_results(config.out_dir, world)
