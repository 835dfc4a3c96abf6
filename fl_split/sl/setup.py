"""What both halves derive from a resolved config: the model, the datasets, the batch order.

Clients and the server call the same functions, so they agree on architecture, partition and
batch order without sending any of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

#: The model ``model: auto`` picks for each dataset.
AUTO_MODEL = {"digits": "digits_cnn", "mnist1d": "mnist1d_cnn"}
_IMAGE_DEFAULT = "resnet18"


def model_name(config: Mapping[str, Any]) -> str:
    """The configured model, with ``auto`` resolved from the dataset."""
    name = str(config["model"])
    return AUTO_MODEL.get(str(config["dataset"]), _IMAGE_DEFAULT) if name == "auto" else name


def _model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    from fl_split.data import dataset_info

    info = dataset_info(str(config["dataset"]))
    return {"num_classes": info.num_classes, "in_channels": info.input_shape[0]}


def build_halves(config: Mapping[str, Any], seed: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """``(client_half, server_half)`` of the configured model and cut, initialised from ``seed``."""
    from fl_split.models import create_split_model

    return create_split_model(model_name(config), config["cut"], seed=seed, **_model_kwargs(config))


_HALF_CACHE: dict[tuple[str, str, str], nn.Sequential] = {}


def cached_client_half(config: Mapping[str, Any]) -> nn.Sequential:
    """A client-half module for this architecture, reused within a process.

    Module-level caches are per process (per Ray actor in simulation, shared by its nodes), so
    the module only saves construction: every message loads the node's own weights into it.
    """
    key = (model_name(config), str(config["cut"]), str(config["dataset"]))
    half = _HALF_CACHE.get(key)
    if half is None:
        half = _HALF_CACHE.setdefault(key, build_halves(config, seed=0)[0])
    return half


def make_sgd(params: Iterable[nn.Parameter], config: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with the config's ``optimizer`` settings (both halves, and the centralized reference)."""
    opt = config["optimizer"]
    return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])


def momentum_buffers(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> list[torch.Tensor | None]:
    """SGD's momentum buffer per parameter (``None`` before the first step)."""
    return [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]


def set_momentum(
    optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], buffers: Iterable[torch.Tensor | None]
) -> None:
    """Load momentum buffers (copies) into ``optimizer`` for ``params``; ``None`` entries are skipped."""
    for p, buf in zip(params, buffers, strict=False):
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.detach().clone()


def check_model_fits_data(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Run one sample through the configured model; return the cut-layer shape per sample.

    Raises
    ------
    ValueError
        If the model cannot take the dataset's inputs (wrong channels or size), naming both and
        the model ``auto`` would pick.
    """
    from fl_split.data import dataset_info

    info = dataset_info(str(config["dataset"]))
    client, server = build_halves(config, seed=0)
    client.eval()
    server.eval()
    x = torch.zeros((2, *info.input_shape))
    try:
        with torch.no_grad():
            a = client(x)
            logits = server(a)
    except RuntimeError as exc:
        raise ValueError(
            f"model {model_name(config)!r} does not accept {config['dataset']!r} inputs of shape "
            f"{tuple(info.input_shape)} ({str(exc).splitlines()[0]}); use model=auto "
            f"({AUTO_MODEL.get(str(config['dataset']), _IMAGE_DEFAULT)})"
        ) from None
    if tuple(logits.shape) != (2, info.num_classes):  # pragma: no cover - the registry sets num_classes
        raise ValueError(f"model output {tuple(logits.shape)} does not match {info.num_classes} classes")
    return tuple(a.shape[1:])


def load_split(config: Mapping[str, Any], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole train or test split of the configured dataset (cached by the data registry)."""
    from fl_split.data import load_dataset

    return load_dataset(str(config["dataset"]), split, data_dir=config["data_dir"], seed=int(config["seed"]))


@lru_cache(maxsize=64)
def _partition(
    dataset: str, data_dir: str | None, seed: int, scheme: str, alpha: float, shards: int, num: int, pid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from fl_split.data import load_dataset, partition_indices

    x, y = load_dataset(dataset, "train", data_dir=data_dir, seed=seed)
    idx = partition_indices(y, num, pid, scheme=scheme, alpha=alpha, shards_per_partition=shards, seed=seed)
    index = torch.as_tensor(idx, dtype=torch.long)
    return x[index].contiguous(), y[index].contiguous()


def client_data(config: Mapping[str, Any], partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This client's training partition (inputs, labels), cached per process, never in client state."""
    return _partition(
        str(config["dataset"]),
        config["data_dir"],
        int(config["seed"]),
        str(config["partition"]),
        float(config["dirichlet_alpha"]),
        int(config["shards_per_client"]),
        int(num_partitions),
        int(partition_id),
    )


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` samples; the last batch may be smaller (nothing is dropped)."""
    return -(-n // batch_size)


def batch_indices(n: int, batch_size: int, seed: int, partition_id: int, epoch: int, batch: int) -> torch.Tensor:
    """Sample indices of batch ``batch`` of ``epoch`` for a client with ``n`` samples.

    Each epoch is a fresh permutation drawn from ``(seed, partition_id, epoch)``, so a client can
    recompute any batch from its cursor alone, in any process.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + partition_id) * 1_000_033 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[batch * batch_size : (batch + 1) * batch_size]
