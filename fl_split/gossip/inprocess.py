"""All nodes in one process: the state of every node stacked in ``(n, d)`` tensors.

The gradients and the codec run per node (each node has its own payload); the SGD step, the
estimate update, the consensus sum and the soft-threshold run on all nodes at once. The consensus
sum goes over "neighbour slots" (slot ``k`` of node ``i`` is its ``k``-th neighbour in ascending
order, padded with weight 0), which adds the same terms in the same order as
:func:`~fl_split.gossip.node.mix` does on one node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_split.codecs import Codec, codec_from_spec, seeded_codec_from_spec
from fl_split.codecs.parts import decode_parts, encode_parts
from fl_split.codecs.rng_state import codec_rng_state, load_codec_rng_state
from fl_split.gossip.node import LocalObjective, soft_threshold


@dataclass
class RoundStats:
    """One round's measured outcome.

    Attributes
    ----------
    losses:
        Each node's batch loss.
    payload_bytes:
        ``len(payload)`` of each node's message this round (sent to each of its neighbours).
    """

    losses: list[float]
    payload_bytes: list[int]


def neighbour_slots(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)``, both ``(n, max degree)``: node ``i``'s neighbours ascending, padded with ``(i, 0)``."""
    n = w.shape[0]
    nbrs = [[j for j in range(n) if j != i and w[i, j] > 0] for i in range(n)]
    width = max(len(x) for x in nbrs)
    index = torch.tensor([x + [i] * (width - len(x)) for i, x in enumerate(nbrs)], dtype=torch.long)
    weight = torch.tensor([[float(w[i, j]) for j in x] + [0.0] * (width - len(x)) for i, x in enumerate(nbrs)])
    return index, weight.to(torch.float32)


def gossip_round(
    x_half: torch.Tensor,
    x_hat: torch.Tensor,
    codecs: list[Codec],
    decoder: Codec,
    shapes: list[torch.Size],
    slots: tuple[torch.Tensor, torch.Tensor],
    gamma: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Steps 2–5 of a round on all ``n`` nodes: ``(x, x̂, payload bytes per node)`` from ``x½`` and ``x̂``.

    Parameters
    ----------
    x_half, x_hat:
        ``(n, d)``: the models after the local step, and the public estimates.
    codecs, decoder:
        Each node's encoder (its own random draws); the decoder every receiver uses.
    shapes:
        The tensors a model vector is made of (each is encoded in its shape).
    slots:
        :func:`neighbour_slots` of the mixing matrix.
    gamma, tau:
        Consensus step size; soft-threshold ``η·λ`` (0: none).
    """
    n, d = x_half.shape
    payloads = [encode_parts(codecs[i], x_half[i] - x_hat[i], shapes) for i in range(n)]
    cpu = torch.device("cpu")
    x_hat = x_hat + torch.stack([decode_parts(decoder, p, d, shapes, cpu) for p in payloads])
    index, weight = slots
    acc = torch.zeros_like(x_hat)
    for k in range(index.shape[1]):
        acc = acc + weight[:, k : k + 1] * (x_hat[index[:, k]] - x_hat)
    return soft_threshold(x_half + gamma * acc, tau), x_hat, [len(p) for p in payloads]


class InProcessGossip:
    """Malcom-PSGD / CHOCO-SGD on ``n`` simulated nodes.

    Parameters
    ----------
    config:
        The gossip config.
    w:
        The mixing matrix (float64, symmetric, doubly stochastic).
    codec_spec, l1:
        The resolved codec spec and L1 weight.
    objective:
        The nodes' loss (default: the configured model on IID shards of the configured dataset).
    """

    def __init__(
        self, config: dict[str, Any], w: np.ndarray, codec_spec: str, l1: float, objective: LocalObjective | None = None
    ) -> None:
        self.n = w.shape[0]
        self.objective = objective or LocalObjective(config, self.n)
        self.shapes = self.objective.shapes
        x0 = self.objective.initial()
        self.d = x0.numel()
        self.x = x0.repeat(self.n, 1)
        self.x_hat = self.x.clone()  # spec R5: x̂(0) = x(0) on every node
        self.codecs = [seeded_codec_from_spec(codec_spec, int(config["seed"]), i) for i in range(self.n)]
        self.decoder = codec_from_spec(codec_spec)  # receivers decode from the bytes alone
        self.slots = neighbour_slots(w)
        self.lr, self.gamma, self.l1 = float(config["lr"]), float(config["gamma"]), l1

    def step(self, t: int) -> RoundStats:
        """Round ``t`` on every node."""
        grads, losses = zip(*(self.objective.grad(self.x[i], i, t) for i in range(self.n)), strict=True)
        x_half = self.x - self.lr * torch.stack(grads)
        self.x, self.x_hat, sizes = gossip_round(
            x_half, self.x_hat, self.codecs, self.decoder, self.shapes, self.slots, self.gamma, self.lr * self.l1
        )
        return RoundStats(list(losses), sizes)

    def state(self) -> list[dict[str, Any]]:
        """Per node, what resuming needs: its model, its public estimate, its codec's random state."""
        return [
            {"x": self.x[i].clone(), "x_hat": self.x_hat[i].clone(), "codec_rng": codec_rng_state(self.codecs[i])}
            for i in range(self.n)
        ]

    def load_state(self, nodes: list[dict[str, Any]]) -> None:
        """Continue from :meth:`state` output (the same config: the same nodes and codec)."""
        if len(nodes) != self.n:
            raise ValueError(f"the checkpoint holds {len(nodes)} nodes, this run has {self.n}")
        self.x = torch.stack([s["x"] for s in nodes])
        self.x_hat = torch.stack([s["x_hat"] for s in nodes])
        for codec, s in zip(self.codecs, nodes, strict=True):
            load_codec_rng_state(codec, s["codec_rng"])

    def models(self) -> torch.Tensor:
        """Every node's current model, ``(n, d)``."""
        return self.x
