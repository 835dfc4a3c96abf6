"""The federated-learning configuration (``fl-split fl``, the Flower app's ``task = "fl"``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fl_split.config import (
    Config,
    Schema,
    at_least_one,
    block,
    check_data_source,
    client_device_check,
    key,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import (
    OUT_HELP,
    DataKeys,
    FederationKeys,
    Optimizer,
    OutputKeys,
    PartitionKeys,
    RayKeys,
    SeedKey,
)


@dataclass(frozen=True)
class FLOptimizer(Optimizer):
    """Local SGD of an FL client; its momentum buffers start at zero each round."""

    momentum: float = key(0.9, "SGD momentum (buffers start at zero each round)", check=non_negative)


@dataclass(frozen=True)
class FLFlowerKeys(RayKeys):
    """The ``flower`` block of FL: Ray's resources and the ServerApp's waits."""

    timeout_s: float = key(600.0, "give up on the replies of a round after this many seconds", check=positive)
    wait_for_nodes_s: float = key(
        300.0, "at the start, wait this long for `clients` nodes to connect, then stop with an error", check=positive
    )


@dataclass(frozen=True)
class FLClientKeys(Config):
    """The keys an FL client trains with besides the data, the partition and the seed (its codecs come
    in the round's config record, where :mod:`fl_split.fl.mods` reads them)."""

    local_epochs: int = key(1, "passes over its partition a sampled client makes per round", check=at_least_one)
    batch_size: int = key(32, "local SGD batch size", check=at_least_one)
    device: str = key(
        "auto",
        "torch device of a client's model and batches: auto (CUDA when the client process sees a GPU: in simulation "
        "when flower.num_gpus > 0 gave it a share), cpu, cuda, cuda:N",
        check=client_device_check,
    )
    optimizer: FLOptimizer = block(FLOptimizer)


@dataclass(frozen=True)
class FLClientTask(FLClientKeys, SeedKey, PartitionKeys, DataKeys):
    """What an FL client is sent (the ``fl-config`` entry of a train message): only the keys it trains with."""

    @classmethod
    def of(cls, config: FLConfig) -> FLClientTask:
        """The client task of a resolved run config."""
        return cls.project(config)


@dataclass(frozen=True)
class FLConfig(FLClientKeys, OutputKeys, FederationKeys, PartitionKeys, DataKeys):
    """The federated-learning config."""

    command: ClassVar[str] = "fl"

    rounds: int = key(30, "federated rounds", check=at_least_one)
    uplink: str = key(
        "ms:keep=0.01,bits=2,signed=true",
        "codec spec for each tensor of a client's update (model delta)",
        check=signed_codec_check("an update"),
    )
    downlink: str = key(
        "none",
        "codec spec for the change of the global model sent to clients that hold the last one (none: every "
        "client gets the full float32 model); clients out of sync get the full model",
        check=signed_codec_check("a model change"),
    )
    error_feedback: bool = key(True, "keep each client's compression residual (per tensor) in its state")
    dense_below: int = key(
        1024, "tensors with fewer elements are sent uncompressed (float32): biases, small heads", check=non_negative
    )
    max_update_norm: float = key(
        10.0, "refuse an update larger than this times the global model's norm + 1 (0: no bound)", check=non_negative
    )
    server_lr: float = key(1.0, "the server's step on the averaged update (1: FedAvg)", check=positive)
    eval_batch_size: int = key(512, "test batch size of the server's evaluation (0: 512)", check=non_negative)
    out_dir: str = key("runs/fl", OUT_HELP)
    flower: FLFlowerKeys = block(FLFlowerKeys)

    def check(self) -> None:
        """Cross-key checks: a dataset read from disk needs ``data_dir``."""
        check_data_source(self)


#: The schema :class:`FLConfig` declares.
FL_SCHEMA: Schema = FLConfig.schema()


def validate_fl(config: Mapping[str, Any]) -> None:
    """Check a resolved FL config as :meth:`FLConfig.check` does."""
    FLConfig.from_dict(config)


def load_fl_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: Mapping[str, Any] | None = None
) -> FLConfig:
    """The resolved, validated federated-learning config (:meth:`FLConfig.load`)."""
    return FLConfig.load(file, overrides, values)
