"""What both halves derive from a resolved config: the model, the datasets, the batch order.

Clients and the server call the same functions, so they agree on architecture, partition and
batch order without sending any of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

# moved to fl_split.training (shared with FL, DDP and gossip); importable from here as before
from fl_split.training import (
    AUTO_MODEL,
    IMAGE_DEFAULT,
    batch_indices,
    batches_per_epoch,
    build_halves,
    client_data,
    load_split,
    make_sgd,
    model_name,
)

__all__ = [
    "AUTO_MODEL",
    "batch_indices",
    "batches_per_epoch",
    "build_halves",
    "build_sl_halves",
    "cached_client_half",
    "check_model_fits_data",
    "client_data",
    "load_split",
    "make_sgd",
    "model_name",
    "momentum_buffers",
    "set_momentum",
]

_HALF_CACHE: dict[tuple[str, ...], nn.Module] = {}


def build_sl_halves(config: Mapping[str, Any], seed: int | None = None) -> tuple[nn.Module, nn.Sequential]:
    """``(client, server_half)`` of a split-learning config, initialised from ``seed``.

    With ``gradients=local`` the client is a :class:`~fl_split.models.aux_heads.WithAuxHead`: the client
    half (``forward``) and its auxiliary head (``config["aux_head"]``, initialised from ``seed + 1``),
    which move and average together; otherwise the client half itself.
    """
    from fl_split.data import dataset_info
    from fl_split.models.aux_heads import WithAuxHead, build_aux_head

    client, server = build_halves(config, seed=seed)
    if config.get("gradients", "server") != "local":
        return client, server
    info = dataset_info(str(config["dataset"]))
    with torch.no_grad():
        shape = tuple(client.eval()(torch.zeros((1, *info.input_shape))).shape[1:])
    client.train()
    head_seed = None if seed is None else seed + 1
    return WithAuxHead(client, build_aux_head(str(config["aux_head"]), shape, info.num_classes, head_seed)), server


def cached_client_half(config: Mapping[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """A client module for this architecture (:func:`build_sl_halves`) on ``device``, reused within a process.

    Module-level caches are per process (per Ray actor in simulation, shared by its nodes), so
    the module only saves construction: every message loads the node's own weights into it.
    """
    local = config.get("gradients", "server") == "local"
    head = str(config["aux_head"]) if local else ""
    key = (model_name(config), str(config["cut"]), str(config["dataset"]), head, str(torch.device(device)))
    half = _HALF_CACHE.get(key)
    if half is None:
        half = _HALF_CACHE.setdefault(key, build_sl_halves(config, seed=0)[0].to(device))
    return half


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
            f"({AUTO_MODEL.get(str(config['dataset']), IMAGE_DEFAULT)})"
        ) from None
    if tuple(logits.shape) != (2, info.num_classes):  # pragma: no cover - the registry sets num_classes
        raise ValueError(f"model output {tuple(logits.shape)} does not match {info.num_classes} classes")
    return tuple(a.shape[1:])
