"""Checkpoints to resume a run, and the final model every command saves.

A checkpoint is one file, ``checkpoint.pt`` in the run's ``out_dir``, replaced atomically after
every ``checkpoint_every`` rounds: the command, the last round it holds, the run's config and the
command's state (weights, optimizer state, RNG states, byte totals, ...). It loads with
``torch.load(weights_only=True)``. ``--resume`` continues from it with the same config; only the
keys in :data:`MAY_CHANGE` may differ (``rounds`` can be raised to train longer).

The final model goes to ``model.pt``: a dict of ``state_dict`` s (``{"model": ...}`` for FL,
gossip and DDP; ``{"client_half": ..., "server_half": ...}`` for split learning).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fl_split.config import ConfigError, flatten, flatten_filled, plain
from fl_split.durable import atomic_torch_save, from_safe, to_safe

CHECKPOINT, MODEL = "checkpoint.pt", "model.pt"
FORMAT = 1
#: config keys a resumed run may change: where and how it reports, how long it runs, how it checkpoints
MAY_CHANGE = ("out_dir", "existing_out", "progress", "rounds", "steps", "checkpoint_every", "flower.ray_address")


def save_checkpoint(out_dir: str | Path, command: str, round_: int, config: Mapping[str, Any], state: Any) -> Path:
    """Replace ``out_dir/checkpoint.pt`` with ``state`` after round ``round_`` of ``command``."""
    path = Path(out_dir) / CHECKPOINT
    blob = {"format": FORMAT, "command": command, "round": round_, "config": json.dumps(plain(config)), "state": state}
    atomic_torch_save(to_safe(blob), path)
    return path


def load_checkpoint(out_dir: str | Path, command: str, config: Mapping[str, Any]) -> tuple[int, Any]:
    """``(round, state)`` of ``out_dir``'s checkpoint, checked against ``command`` and ``config``.

    Raises
    ------
    ConfigError
        If there is no checkpoint, it is another command's or format's, or the config differs in a
        key outside :data:`MAY_CHANGE` (naming the keys), or ``rounds`` is below the round it holds.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise ConfigError(
            f"--resume: {path} does not exist (the run saved no checkpoint: checkpoint_every=0, or it stopped "
            "before its first one); run again with --overwrite"
        )
    try:
        blob = from_safe(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"--resume: {path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("command") != command:
        raise ConfigError(f"--resume: {path} is not a checkpoint of `fl-split {command}` (format {FORMAT})")
    schema = getattr(type(config), "schema", None)
    saved = flatten_filled(json.loads(blob["config"]), schema() if schema is not None else None)
    config = flatten(plain(config))
    changed = sorted(
        k
        for k in set(saved) | set(config)
        if k.split(".")[0] not in MAY_CHANGE and k not in MAY_CHANGE and saved.get(k) != config.get(k)
    )
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {diffs}; resume with the same config")
    round_ = int(blob["round"])
    total = config.get("rounds", config.get("steps"))
    if total is not None and int(total) < round_:
        raise ConfigError(f"--resume: the checkpoint holds round {round_}, past rounds={total}")
    return round_, blob["state"]


def due(done: int, last_saved: int, every: int, total: int) -> bool:
    """Whether a run that has done ``done`` rounds (steps), last checkpointed at ``last_saved``, checkpoints now."""
    return every > 0 and (done // every > last_saved // every or done == total)


def check_resumable(out_dir: str | Path, command: str, config: Mapping[str, Any]) -> None:
    """Before ranks are spawned: ``ConfigError`` here if ``out_dir``'s checkpoint cannot be resumed
    (under ``torchrun`` the ranks check it themselves, :func:`load_rank_checkpoint`)."""
    import os

    if "RANK" not in os.environ:
        load_checkpoint(out_dir, command, config)


def save_rank_checkpoint(
    out_dir: str | Path, command: str, round_: int, config: Mapping[str, Any], shared: Any, local: Any
) -> None:
    """Collective (every rank calls it): rank 0 writes one checkpoint holding ``shared`` (its own) and
    every rank's ``local`` (gathered), as ``{"shared": ..., "ranks": [...]}``."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if rank == 0:
        save_checkpoint(out_dir, command, round_, config, {"shared": shared, "ranks": gathered})


def load_rank_checkpoint(out_dir: str | Path, command: str, config: Mapping[str, Any]) -> tuple[int, Any, Any]:
    """Collective: ``(round, shared, this rank's local)`` of :func:`save_rank_checkpoint`'s file.

    Rank 0 reads and checks it (only its machine needs the file) and sends each rank its part, so
    every rank raises the same ``ConfigError`` when it cannot be resumed (and none waits forever).
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    parts: list[Any] | None = None
    if rank == 0:
        try:
            round_, state = load_checkpoint(out_dir, command, config)
            if len(state["ranks"]) != world:
                raise ConfigError(f"--resume: the checkpoint holds {len(state['ranks'])} ranks, this run has {world}")
            parts = [(round_, state["shared"], local, None) for local in state["ranks"]]
        except ConfigError as exc:
            parts = [(0, None, None, str(exc))] * world
    mine: list[Any] = [None]
    dist.scatter_object_list(mine, parts, src=0)
    round_, shared, local, error = mine[0]
    if error is not None:
        raise ConfigError(error)
    return int(round_), shared, local


def save_model(out_dir: str | Path, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> Path:
    """Write the final model (``{name: state_dict}``, tensors on the CPU) to ``out_dir/model.pt`` atomically."""
    path = Path(out_dir) / MODEL
    atomic_torch_save({k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in state_dicts.items()}, path)
    return path
