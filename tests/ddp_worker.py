"""Fault injection for the DDP tests (a module of its own so spawned ranks can unpickle it by name)."""

from __future__ import annotations

from fl_split.ddp import CodecHookState


def truncate_payloads_of_rank1(rank: int, state: CodecHookState) -> None:
    """Rank 1 sends every payload three bytes short (``run_ddp``'s ``on_state`` callback)."""
    if rank != 1:
        return
    encode = state.codec.encode
    state.codec.encode = lambda x: encode(x)[:-3]  # type: ignore[method-assign]
