"""Config blocks every command that trains shares: the data, the partition, SGD, Ray's resources, outputs.

Each command's config (``SLConfig``, ``FLConfig``, ``DDPConfig``, ``GossipConfig``) is a frozen
dataclass composed from these: the flat blocks (:class:`DataKeys`, :class:`PartitionKeys`,
:class:`OutputKeys`) as base classes, so their keys stay top-level (``dataset``, ``out_dir``), and
the nested ones (:class:`Optimizer`, :class:`RayKeys`) as fields. One key means the same thing,
with the same check, wherever it appears; a command changes only a default (and says so by
redeclaring the key).
"""

from __future__ import annotations

from dataclasses import dataclass

from fl_split.config import (
    Config,
    at_least_one,
    dataset_choices,
    fraction,
    key,
    model_choices,
    non_negative,
    positive,
)
from fl_split.data.partition import PARTITIONERS
from fl_split.metrics import EXISTING_OUT

MODEL_HELP = "model name (auto: the dataset's default)"
OUT_HELP = "where metrics.jsonl, summary.json, model.pt, checkpoint.pt and the plot go"
CHECKPOINT_HELP = "replace out_dir/checkpoint.pt every this many rounds and after the last (0: never)"


@dataclass(frozen=True)
class DataKeys(Config):
    """``dataset``, ``data_dir``, ``model``."""

    dataset: str = key("digits", "dataset name", dataset_choices)
    data_dir: str | None = key(None, "folder with torchvision datasets (cifar10, mnist, ...)")
    model: str = key("auto", MODEL_HELP, model_choices)


@dataclass(frozen=True)
class PartitionKeys(Config):
    """How the training set is split among clients: ``partition``, ``dirichlet_alpha``, ``shards_per_client``."""

    partition: str = key("iid", "how the training set is split among clients", PARTITIONERS)
    dirichlet_alpha: float = key(0.3, "concentration of the dirichlet partition", check=positive)
    shards_per_client: int = key(2, "label shards per client for the shard partition", check=at_least_one)


@dataclass(frozen=True)
class SeedKey(Config):
    """``seed``: a run's one seed (a client's task carries it for its partition and batch order)."""

    seed: int = key(0, "seed of initialisation, partitioning, batch order and sampling")


@dataclass(frozen=True)
class FederationKeys(SeedKey):
    """The clients of split and federated learning: ``clients``, ``fraction`` sampled per round, ``seed``."""

    clients: int = key(10, "number of clients (Flower virtual nodes / data partitions)", check=at_least_one)
    fraction: float = key(1.0, "fraction of clients sampled per round", check=fraction)


@dataclass(frozen=True)
class OutputKeys(Config):
    """A command's outputs: ``out_dir`` (each command redeclares its default), ``existing_out``,
    ``checkpoint_every``, ``progress``."""

    out_dir: str = key("runs", OUT_HELP)
    existing_out: str = key(
        "refuse", "out_dir already holds a run: refuse, resume (from checkpoint.pt) or overwrite", EXISTING_OUT
    )
    checkpoint_every: int = key(1, CHECKPOINT_HELP, check=non_negative)
    progress: bool = key(True, "show a progress bar (on stderr)")


def checkpoint_at_rows(rows_every: str, unit: str = "rounds") -> str:
    """``checkpoint_every``'s help for a command that writes a metrics row every ``rows_every`` ``unit``."""
    return CHECKPOINT_HELP.replace("rounds", unit) + f"; at metrics rows only ({rows_every})"


@dataclass(frozen=True)
class Optimizer(Config):
    """The ``optimizer`` block: SGD ``lr`` (0.05 unless a command redeclares it), ``momentum``, ``weight_decay``."""

    lr: float = key(0.05, "SGD learning rate", check=positive)
    momentum: float = key(0.9, "SGD momentum", check=non_negative)
    weight_decay: float = key(5e-4, "SGD weight decay", check=non_negative)


def ray_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray cluster address ``[ray://]host:port`` (IPv6 hosts in brackets), or ``None``
    when it is not one."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return host.strip("[]"), int(port)
    return None


def _ray_address_check(value: str) -> str | None:
    if value in ("", "auto") or ray_host_port(value) is not None:
        return None
    return "empty (start Ray here), auto, or the cluster head's host:port, e.g. 10.0.0.1:6379"


@dataclass(frozen=True)
class RayKeys(Config):
    """``num_cpus``, ``num_gpus`` of the ``flower`` block: Ray's resources per virtual client; ``ray_address``:
    the Ray cluster the virtual clients run on."""

    num_cpus: float = key(1.0, "Ray CPUs per virtual client", check=positive)
    num_gpus: float = key(0.0, "Ray GPU fraction per virtual client", check=non_negative)
    ray_address: str = key(
        "",
        "run the virtual clients on a running Ray cluster: its head's host:port (as `ray start --head` printed), "
        "or auto; empty: start Ray on this machine",
        check=_ray_address_check,
    )
