"""Starting ``torch.distributed`` ranks: spawned on this machine, or one per process under ``torchrun``.

Used by ``fl-split ddp`` (one rank per data-parallel worker) and ``fl-split gossip`` with
``transport = distributed`` (one rank per node). Each rank runs ``fn(rank, world, config, *args)``
in an initialised process group (timeout ``config.timeout_s``) and writes what it returned to
``out_dir/rank{r}.json`` — with ``error`` when it raised, so a caller can read every rank's failure.

The group's backend comes from :func:`placement`: NCCL when the ranks' tensors live on CUDA (one
process per GPU: rank ``r`` on ``cuda:LOCAL_RANK``), else gloo on the CPU. A config without ``device``
and ``backend`` keys (gossip, whose exchange moves host bytes) runs gloo on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

log = logging.getLogger(__name__)

#: A rank's body: ``fn(rank, world, config, *args)`` returns the rank's result (JSON-ready).
RankFn = Callable[..., dict[str, Any]]


class RankConfig(Protocol):
    """What the launcher reads from a command's config (``DDPConfig``, ``GossipConfig``)."""

    @property
    def out_dir(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...


#: ``backend`` values: ``auto`` (NCCL when the ranks use CUDA, else gloo), ``gloo``, ``nccl``.
BACKENDS = ("auto", "gloo", "nccl")


def placement(
    device: str, backend: str, world: int, local_rank: int = 0, *, across_machines: bool = False
) -> tuple[torch.device, str]:
    """A rank's torch device and the group's backend, from a config's ``device`` and ``backend`` keys.

    ``device``: ``auto`` (CUDA when every rank on this machine gets a GPU of its own and the ranks are all
    on this machine, else the CPU), ``cpu`` or ``cuda``; a CUDA rank uses ``cuda:local_rank``.
    ``backend``: ``auto`` (NCCL for CUDA ranks, gloo for CPU ranks), ``gloo`` (``auto`` then picks the CPU)
    or ``nccl``. ``world`` is the number of ranks on this machine. ``across_machines`` (torchrun on several
    machines): ``auto`` picks the CPU, since each machine decides alone and the ranks must agree on one
    backend; set ``device=cuda`` to use GPUs there.

    Raises
    ------
    ValueError
        CUDA asked for where there is none, or fewer GPUs than local ranks (NCCL needs one GPU per rank),
        or NCCL with CPU tensors; the message says what to set instead.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    why_cpu = ""
    if device == "auto":
        if backend == "gloo":
            why_cpu = "backend=gloo"
        elif across_machines:
            why_cpu = "ranks on several machines (set device=cuda to use their GPUs)"
        elif gpus < world:
            why_cpu = f"{gpus} GPU(s) for {world} rank(s) on this machine (one GPU per rank)"
        device = "cpu" if why_cpu else "cuda"
        if why_cpu and gpus:
            log.warning("device=auto runs the ranks on the CPU: %s", why_cpu)
    if device == "cuda":
        if gpus < world:
            raise ValueError(
                f"device=cuda needs one GPU per rank: {world} rank(s) on this machine, {gpus} CUDA device(s) "
                "visible; start fewer ranks (world_size, or torchrun --nproc-per-node) or set device=cpu"
            )
        here = torch.device("cuda", local_rank)
    elif device == "cpu":
        here = torch.device("cpu")
    else:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if backend == "auto":
        backend = "nccl" if here.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and here.type != "cuda":
        because = f" (device=auto chose the CPU: {why_cpu})" if why_cpu else ""
        raise ValueError(f"backend=nccl moves CUDA tensors only{because}: set device=cuda or backend=gloo")
    return here, backend


def under_torchrun() -> bool:
    """Whether this process is one rank started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_placement(config: object, world: int, rank: int) -> tuple[torch.device, str]:
    """:func:`placement` for this process, from the config's ``device``/``backend`` (CPU and gloo without them).

    Under ``torchrun``: its ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (ranks on this machine; fewer than
    ``WORLD_SIZE``: several machines). Spawned here: ``rank`` of ``world``, all on this machine.
    """
    device, backend = str(getattr(config, "device", "cpu")), str(getattr(config, "backend", "gloo"))
    if not under_torchrun():
        return placement(device, backend, world, rank)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    across = local_world < int(os.environ["WORLD_SIZE"])
    return placement(device, backend, local_world, local_rank, across_machines=across)


def run_rank(fn: RankFn, rank: int, world: int, config: RankConfig, *args: Any) -> None:
    """Initialise the group, run ``fn``, write ``rank{r}.json`` (with ``error`` when ``fn`` raised), leave the group."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"rank": rank}
    device, backend = rank_placement(config, world, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator and every default CUDA allocation: this rank's GPU
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=config.timeout_s))
    try:
        result = fn(rank, world, config, *args)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        dist.destroy_process_group()


def _spawned(rank: int, fn: RankFn, world: int, port: int, config: RankConfig, args: tuple[Any, ...]) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    run_rank(fn, rank, world, config, *args)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(fn: RankFn, config: RankConfig, world: int, *args: Any, world_must_match: bool = False) -> bool:
    """Run ``fn`` on every rank; ``True`` here if this process spawned the ranks (and they all finished).

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) this process is one rank of
    ``WORLD_SIZE``; ``False`` is returned after it finished. Otherwise ``world`` local processes
    are spawned on a free port and waited for.

    Raises
    ------
    ValueError
        ``world_must_match`` and torchrun's ``WORLD_SIZE`` differs from ``world``.
    torch.multiprocessing.ProcessRaisedException
        A spawned rank raised (its message names the rank; ``rank{r}.json`` holds every rank's error).
    """
    if under_torchrun():
        size = int(os.environ["WORLD_SIZE"])
        if world_must_match and size != world:
            raise ValueError(
                f"torchrun started {size} processes but the config asks for {world} ranks "
                "(nodes, world_size): they must match"
            )
        run_rank(fn, int(os.environ["RANK"]), size, config, *args)
        return False
    spawn_args = (fn, world, free_port(), config, args)
    mp.start_processes(_spawned, args=spawn_args, nprocs=world, join=True, start_method="spawn")
    return True


def read_rank_results(out_dir: str | Path, world: int) -> list[dict[str, Any]]:
    """The ``rank{r}.json`` files of a finished (or failed) run, in rank order."""
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(world)]
