"""What one node computes in Malcom-PSGD / CHOCO-SGD, shared by every transport.

Per round ``t``, node ``i`` (spec ``../shared/spec/malcom-psgd.md``, R1, R2, R5):

1. local SGD step: ``x½ = x - η ∇f_i(x)`` (one batch of its shard);
2. compress the difference to its public estimate: ``payload = encode(x½ - x̂_i)``, sent to every
   neighbour (one payload per node and round, the model's tensors in their shapes:
   :func:`~fl_split.codecs.parts.encode_parts`);
3. every holder of a copy of ``x̂_j`` (``j`` itself and its neighbours) adds ``decode(payload_j)``;
4. consensus: ``v = x½ + γ Σ_j w_ij (x̂_j - x̂_i)``, the sum over neighbours in ascending order;
5. proximal step: ``x = S_{ηλ}(v)`` (soft-threshold; ``λ = 0`` is CHOCO-SGD).

Every operation after the gradient is elementwise on flat float32 vectors, in the same order on
every transport, so the in-process and ``torch.distributed`` runs give the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fl_split.training import batch_indices, batches_per_epoch, build_model, iid_shard


def soft_threshold(v: torch.Tensor, tau: float) -> torch.Tensor:
    """``sign(v) · max(|v| - τ, 0)`` elementwise (exact zeros; ``τ <= 0`` returns ``v``)."""
    if tau <= 0:
        return v
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0.0)


class LocalObjective:
    """The gradient of node ``i``'s loss at a flat parameter vector, on its round-``t`` batch.

    Parameters
    ----------
    config:
        The gossip config (``dataset``, ``model``, ``batch_size``, ``seed``, ...).
    nodes:
        How many nodes share the data (node ``i`` trains on IID shard ``i``).
    model:
        The model (default: the configured one, initialised from ``seed``); every node starts
        from its parameters.
    """

    def __init__(self, config: Mapping[str, Any], nodes: int, model: nn.Module | None = None) -> None:
        self.config = config
        self.nodes = nodes
        self.model: nn.Module = model if model is not None else build_model(self.config, seed=int(config["seed"]))
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.shapes = [p.shape for p in self.model.parameters()]
        self.batch_size = int(config["batch_size"])
        self.seed = int(config["seed"])

    def initial(self) -> torch.Tensor:
        """The shared initial model as a flat float32 vector (every node starts here, spec R5)."""
        return nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()

    def grad(self, x: torch.Tensor, node: int, t: int) -> tuple[torch.Tensor, float]:
        """``(∇f_node(x; batch t), loss)``."""
        xs, ys = iid_shard(self.config, node, self.nodes)
        nb = batches_per_epoch(len(ys), self.batch_size)
        idx = batch_indices(len(ys), self.batch_size, self.seed, node, t // nb, t % nb)
        nn.utils.vector_to_parameters(x, self.model.parameters())
        self.model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(xs[idx]), ys[idx])
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in self.model.parameters() if p.grad is not None])
        return g.detach(), float(loss.item())


def mix(x_hat_i: torch.Tensor, neighbours: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``Σ_j w_ij (x̂_j - x̂_i)`` over ``(w_ij, x̂_j)`` in ascending ``j`` (the one summation order)."""
    acc = torch.zeros_like(x_hat_i)
    for w, x_hat_j in neighbours:  # the weight as float32, as the in-process slots hold it
        acc = acc + torch.tensor(w, dtype=torch.float64).to(torch.float32) * (x_hat_j - x_hat_i)
    return acc
