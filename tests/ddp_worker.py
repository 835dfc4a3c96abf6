"""Rank functions for the DDP tests (a module of its own so spawned ranks can unpickle them by name)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fl_split.ddp import CodecHookState
from fl_split.ddp.train import train_rank


def truncate_payloads_of_rank1(rank: int, state: CodecHookState) -> None:
    """Rank 1 sends every payload three bytes short (``run_ddp``'s ``on_state`` callback)."""
    if rank != 1:
        return
    encode = state.codec.encode
    state.codec.encode = lambda x: encode(x)[:-3]  # type: ignore[method-assign]


def train_each(rank: int, world: int, config: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """``train_rank`` for each of ``configs`` in turn, in this one process group (one spawn for several runs).

    Each run writes what a run of its own writes (``rank{r}.json`` too, as ``run_rank`` does), so
    ``read_rank_results`` reads it from the run's ``out_dir``.
    """
    for c in configs:
        out = Path(c["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        result = train_rank(rank, world, c)
        (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return {"rank": rank, "runs": len(configs)}
