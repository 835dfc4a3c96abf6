"""What every learning package derives from a resolved config: the model (split or whole), the
data a client or rank trains on, its batch order, the optimizer, and test accuracy.

Clients and the server (split learning, FL), ranks (DDP) and nodes (gossip) call the same
functions, so they agree on architecture, partition and batch order without sending any of it.
A config here needs ``dataset``, ``data_dir``, ``seed`` and ``model`` (and ``cut`` for the split
halves, ``optimizer`` for SGD, the partition keys for :func:`client_data`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

#: The model ``model: auto`` picks for each dataset.
AUTO_MODEL = {"digits": "digits_cnn", "mnist1d": "mnist1d_cnn"}
IMAGE_DEFAULT = "resnet18"


def model_name(config: Mapping[str, Any]) -> str:
    """The configured model, with ``auto`` resolved from the dataset."""
    name = str(config["model"])
    if name != "auto":
        return name
    from fl_split.data import dataset_info

    dataset = str(config["dataset"])
    return dataset_info(dataset).default_model or AUTO_MODEL.get(dataset, IMAGE_DEFAULT)


def _model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    from fl_split.data import dataset_info

    info = dataset_info(str(config["dataset"]))
    return {"num_classes": info.num_classes, "in_channels": info.input_shape[0]}


def build_halves(config: Mapping[str, Any], seed: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """``(client_half, server_half)`` of the configured model and cut, initialised from ``seed``."""
    from fl_split.models import create_split_model

    return create_split_model(model_name(config), config["cut"], seed=seed, **_model_kwargs(config))


def build_model(config: Mapping[str, Any], seed: int | None = None) -> nn.Sequential:
    """The configured model, whole (the split model's two halves in one ``Sequential``)."""
    from fl_split.models import create_split_model

    client, server = create_split_model(model_name(config), "shallow", seed=seed, **_model_kwargs(config))
    return nn.Sequential(*client, *server)


def client_device(name: str) -> torch.device:
    """The torch device a client trains on: ``auto`` is CUDA when this process sees a GPU (in a Flower
    simulation: when ``flower.num_gpus > 0`` gave the virtual client a share of one; Ray hides the GPUs
    from the others), else the CPU; or ``cpu``, ``cuda``, ``cuda:N``.

    Raises
    ------
    ValueError
        A CUDA device this process does not see (the message says how to give the clients one).
    """
    if name == "auto":
        gpu = torch.cuda.is_available() and not _ray_worker_without_gpu()
        return torch.device("cuda" if gpu else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if seen == 0 or (device.index or 0) >= seen:
            raise ValueError(
                f"client device {name!r}, but this client process sees {seen} CUDA device(s); in a simulation "
                "set flower.num_gpus > 0 (a share of a GPU per virtual client), or use auto or cpu"
            )
    return device


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run every kernel queued on it; a no-op off CUDA.

    CUDA runs kernels asynchronously, so a timer read around a codec call would count the compute
    queued before it (an encode's copy to the host waits for the forward or backward pass) and miss
    a decode's own kernels. Timers around codec calls read the clock after this.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ray_worker_without_gpu() -> bool:
    """Whether this process is a Ray worker (a virtual client's actor) given no GPU share. Ray hides the
    GPUs from such workers today; a future Ray will not (its FutureWarning), and ``auto`` must not then
    put every virtual client on GPU 0."""
    import sys

    if "ray" not in sys.modules:
        return False
    try:
        import ray
        from ray._private import worker

        if not ray.is_initialized() or worker.global_worker.mode != worker.WORKER_MODE:
            return False
        return len(ray.get_gpu_ids()) == 0
    except Exception:
        return False


@lru_cache(maxsize=64)
def _partition_on(key: tuple[Any, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _partition(*key)
    return x.to(device), y.to(device)


def client_data_on(
    config: Mapping[str, Any], partition_id: int, num_partitions: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`client_data` on ``device`` (moved there once per process and kept)."""
    if device.type == "cpu":
        return client_data(config, partition_id, num_partitions)
    return _partition_on(_partition_key(config, partition_id, num_partitions), device)


def make_sgd(params: Iterable[nn.Parameter], config: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with the config's ``optimizer`` settings (both halves, and the centralized reference)."""
    opt = config["optimizer"]
    return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])


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
    return _partition(*_partition_key(config, partition_id, num_partitions))


def _partition_key(config: Mapping[str, Any], partition_id: int, num_partitions: int) -> tuple[Any, ...]:
    return (
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


def iid_shard(config: Mapping[str, Any], index: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IID shard ``index`` of ``count`` of the training split (a DDP rank's or a gossip node's data: their
    configs have no partition keys), cached per process."""
    return _partition(str(config["dataset"]), config["data_dir"], int(config["seed"]), "iid", 0.3, 2, count, index)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode; the model is left in the mode it was in
    (a training loop that evaluates in between keeps training BatchNorm with batch statistics)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            correct = sum(
                int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                for i in range(0, len(y), batch_size)
            )
    finally:
        model.train(was_training)
    return correct / max(len(y), 1)
