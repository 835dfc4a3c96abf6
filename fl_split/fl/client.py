"""A federated client's local training: the whole model, its partition, a few SGD epochs.

The model and the partition are derived from the config (the same functions as split learning),
so nothing but weights and updates crosses the wire.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# build_model and accuracy moved to fl_split.training (shared with DDP and gossip); importable from here as before
from fl_split.fl.config import FLClientTask
from fl_split.training import (
    accuracy,
    batch_indices,
    batches_per_epoch,
    build_model,
    client_data_on,
    client_device,
    make_sgd,
    model_name,
)

__all__ = ["accuracy", "build_model", "cached_model", "client_task", "local_train"]

_MODEL_CACHE: dict[tuple[str, str, str], nn.Sequential] = {}


def cached_model(config: Mapping[str, Any], device: torch.device | str = "cpu") -> nn.Sequential:
    """A model of this architecture on ``device`` reused within a process; every call loads its own weights."""
    key = (model_name(config), str(config["dataset"]), str(torch.device(device)))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = build_model(config, seed=0).to(device)
    return _MODEL_CACHE[key]


@functools.lru_cache(maxsize=8)
def client_task(text: str) -> FLClientTask:
    """The task a train message sent (``fl-config``), parsed and checked once per process.

    Raises
    ------
    ConfigError
        Not JSON, an unknown key or a bad value (the error names it).
    """
    return FLClientTask.from_json(text, "FL task sent in the train message's fl-config")


def local_train(
    task: FLClientTask, weights: Mapping[str, torch.Tensor], partition_id: int, num_partitions: int, round_: int
) -> tuple[dict[str, torch.Tensor], int, float]:
    """Train from ``weights`` on this client's partition; return ``(delta, num_examples, mean loss)``.

    ``delta`` holds every floating-point state tensor: local minus ``weights``. Batches follow
    :func:`~fl_split.sl.setup.batch_indices` with the epoch counter ``round_ * local_epochs + e``, so
    a client's batch order is reproducible in any process. The SGD optimizer is fresh every call
    (no momentum carried between rounds): the same policy as split learning's averaged halves
    (:mod:`fl_split.sl.protocol`), so SL and FL are compared under one optimizer-state rule.

    The model and batches live on ``task.device`` (:func:`~fl_split.training.client_device`); ``delta``
    comes back on the CPU, where Flower's ``ArrayRecord`` and the update codec (a mod) take it.
    """
    device = client_device(task.device)
    model = cached_model(task, device)
    model.load_state_dict(weights)
    model.train()
    sgd = make_sgd(model.parameters(), task)
    x, y = client_data_on(task, partition_id, num_partitions, device)
    bs, epochs = task.batch_size, task.local_epochs
    nb = batches_per_epoch(len(y), bs)
    loss_sum, seen = 0.0, 0
    for e in range(epochs):
        for b in range(nb):
            idx = batch_indices(len(y), bs, task.seed, partition_id, round_ * epochs + e, b).to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
    if seen and not torch.isfinite(torch.tensor(loss_sum)):
        raise ValueError(f"local training diverged (loss {loss_sum / seen}); lower optimizer.lr")
    local = model.state_dict()
    delta = {k: local[k].detach().cpu() - weights[k] for k in local if local[k].is_floating_point()}
    return delta, len(y), loss_sum / max(seen, 1)
