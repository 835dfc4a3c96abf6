"""Schema blocks every command that trains shares: the data, the partition, SGD, Ray's resources.

Each command's schema (``fl_split.sl.config``, ``fl.config``, ``ddp.config``, ``gossip.config``)
is composed from these and its own keys, so one key means the same thing, with the same default
and check, wherever it appears.
"""

from __future__ import annotations

from fl_split.config import Field, Schema, at_least_one, dataset_choices, model_choices, non_negative, positive
from fl_split.data.partition import PARTITIONERS

MODEL_HELP = "model name (auto: the dataset's default)"


def data_fields(model_help: str = MODEL_HELP) -> Schema:
    """``dataset``, ``data_dir``, ``model``."""
    return {
        "dataset": Field("digits", (str,), "dataset name", dataset_choices),
        "data_dir": Field(None, (str, type(None)), "folder with torchvision datasets (cifar10, mnist, ...)"),
        "model": Field("auto", (str,), model_help, model_choices),
    }


def partition_fields() -> Schema:
    """``partition``, ``dirichlet_alpha``, ``shards_per_client``: how the training set is split among clients."""
    return {
        "partition": Field("iid", (str,), "how the training set is split among clients", PARTITIONERS),
        "dirichlet_alpha": Field(0.3, (float,), "concentration of the dirichlet partition", check=positive),
        "shards_per_client": Field(2, (int,), "label shards per client for the shard partition", check=at_least_one),
    }


def optimizer_fields(lr: float, what: str = "SGD", lr_note: str = "", momentum_note: str = "") -> Schema:
    """The ``optimizer`` block: ``lr`` (default ``lr``), ``momentum`` 0.9, ``weight_decay`` 5e-4."""
    return {
        "lr": Field(lr, (float,), f"{what} learning rate{lr_note}", check=positive),
        "momentum": Field(0.9, (float,), f"{what} momentum{momentum_note}", check=non_negative),
        "weight_decay": Field(5e-4, (float,), f"{what} weight decay", check=non_negative),
    }


def ray_fields() -> Schema:
    """``num_cpus``, ``num_gpus`` of the ``flower`` block: Ray's resources per virtual client."""
    return {
        "num_cpus": Field(1.0, (float,), "Ray CPUs per virtual client", check=positive),
        "num_gpus": Field(0.0, (float,), "Ray GPU fraction per virtual client", check=non_negative),
    }
