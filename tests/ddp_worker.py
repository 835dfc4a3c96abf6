"""The per-rank body of the DDP tests (a module of its own so spawned processes can import it)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fl_split.ddp import register_codec_hook
from fl_split.fl.client import accuracy, build_model
from fl_split.fl.config import load_fl_config
from fl_split.sl.setup import batch_indices, client_data, load_split


def train_rank(
    rank: int, world: int, port: int, out: str, codec: str | None, ef: bool, steps: int, bad_rank: int
) -> None:
    """Train the digits CNN for ``steps`` on this rank's half of the data; write params and counters to ``out``."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    result: dict = {"rank": rank}
    try:
        cfg = load_fl_config("fl", values={"progress": False})
        model = build_model(cfg, seed=0)
        ddp = DDP(model, bucket_cap_mb=0.1)  # several buckets for a small model
        state = register_codec_hook(ddp, codec, error_feedback=ef) if codec else None
        if state is not None and rank == bad_rank:
            encode = state.codec.encode
            state.codec.encode = lambda x: encode(x)[:-3]  # type: ignore[method-assign]
        sgd = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        x, y = client_data(cfg, rank, world)
        losses = []
        for step in range(steps):
            idx = batch_indices(len(y), 32, 0, rank, step // 20, step % 20)
            loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
            sgd.zero_grad()
            loss.backward()
            sgd.step()
            losses.append(loss.item())
        xt, yt = load_split(cfg, "test")
        result |= {
            "losses": losses,
            "accuracy": accuracy(model, xt, yt),
            "step_bytes": state.step_bytes() if state else None,
            "bytes_sent": state.bytes_sent if state else None,
            "calls": state.calls if state else None,
            "buckets": len(state.last_bucket_bytes) if state else None,
            "residual_numel": sum(r.numel() for r in state.residuals.values()) if state else None,
        }
        flat = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
        np.save(Path(out) / f"params{rank}.npy", flat, allow_pickle=False)
    except Exception as exc:  # the test reads what every rank raised
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
