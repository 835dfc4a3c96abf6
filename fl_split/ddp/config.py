"""The data-parallel configuration (``fl-split ddp``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fl_split.config import (
    ConfigError,
    Schema,
    at_least_one,
    block,
    check_data_source,
    key,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import OUT_HELP, DataKeys, Optimizer, OutputKeys, checkpoint_at_rows
from fl_split.launch import BACKENDS


@dataclass(frozen=True)
class DDPConfig(OutputKeys, DataKeys):
    """The data-parallel config: DDP with a codec comm hook (or plain DDP, ``hook=false``)."""

    command: ClassVar[str] = "ddp"

    world_size: int = key(2, "processes (ranks) started on this machine", check=at_least_one)
    steps: int = key(120, "optimizer steps (each rank: one batch of its data shard per step)", check=at_least_one)
    log_every: int = key(20, "steps per metrics row (and test evaluation)", check=at_least_one)
    batch_size: int = key(32, "batch size per rank", check=at_least_one)
    seed: int = key(0, "seed of initialisation and batch order")
    codec: str = key(
        "topk:keep=0.01",
        "codec spec for each gradient bucket (none: exact DDP bytes)",
        check=signed_codec_check("a gradient"),
    )
    error_feedback: bool = key(True, "keep a residual per bucket")
    hook: bool = key(True, "false: plain DDP (its own float32 all-reduce, the baseline; no bytes measured)")
    bucket_cap_mb: float = key(25.0, "DDP's bucket size in MB (the hook encodes one bucket per call)", check=positive)
    device: str = key(
        "auto",
        "each rank's torch device: auto (CUDA, rank r on cuda:LOCAL_RANK, when every rank on the machine gets a GPU of "
        "its own, all ranks are on one machine and backend is not gloo; else cpu), cpu or cuda",
        ("auto", "cpu", "cuda"),
    )
    backend: str = key(
        "auto", "torch.distributed backend: auto (nccl for CUDA ranks, else gloo), gloo or nccl", BACKENDS
    )
    optimizer: Optimizer = block(Optimizer)
    timeout_s: float = key(60.0, "process-group timeout: a rank stuck in a collective fails after this", check=positive)
    out_dir: str = key("runs/ddp", OUT_HELP)
    checkpoint_every: int = key(1, checkpoint_at_rows("log_every", "steps"), check=non_negative)

    def check(self) -> None:
        """Cross-key checks: a dataset read from disk needs ``data_dir``; NCCL needs CUDA ranks."""
        check_data_source(self)
        if self.backend == "nccl" and self.device == "cpu":
            raise ConfigError("backend=nccl moves CUDA tensors only: set device=cuda (or auto) or backend=gloo")


#: The schema :class:`DDPConfig` declares.
DDP_SCHEMA: Schema = DDPConfig.schema()


def load_ddp_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: Mapping[str, Any] | None = None
) -> DDPConfig:
    """The resolved, validated data-parallel config (:meth:`DDPConfig.load`)."""
    return DDPConfig.load(file, overrides, values)
