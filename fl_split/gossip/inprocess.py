"""All nodes in one process: a :class:`~fl_split.gossip.node.GossipNode` each, payloads handed over in memory.

The round is :func:`~fl_split.gossip.node.gossip_round`, the same code the ``torch.distributed``
transport runs; only the exchange differs (:func:`~fl_split.gossip.node.local_exchange`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_split.codecs import codec_from_spec, seeded_codec_from_spec
from fl_split.gossip.config import GossipConfig
from fl_split.gossip.node import GossipNode, LocalObjective, gossip_round, local_exchange


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
        self, config: GossipConfig, w: np.ndarray, codec_spec: str, l1: float, objective: LocalObjective | None = None
    ) -> None:
        self.n = w.shape[0]
        self.objective = objective or LocalObjective(config, self.n)
        x0 = self.objective.initial()
        self.d = x0.numel()
        lr, gamma, seed = config.lr, config.gamma, config.seed
        decoder = codec_from_spec(codec_spec)  # receivers decode from the bytes alone
        self.nodes = [
            GossipNode(
                i,
                x0,
                w,
                seeded_codec_from_spec(codec_spec, seed, i),
                decoder,
                self.objective.shapes,
                lr,
                gamma,
                lr * l1,
                self.objective,
            )
            for i in range(self.n)
        ]
        self.exchange = local_exchange({node.rank: node.neighbours for node in self.nodes})

    def step(self, t: int) -> RoundStats:
        """Round ``t`` on every node."""
        sizes, losses = zip(*gossip_round(self.nodes, t, self.exchange), strict=True)
        return RoundStats(list(losses), list(sizes))

    def state(self) -> list[dict[str, Any]]:
        """Per node, what resuming needs (:meth:`GossipNode.state`)."""
        return [node.state() for node in self.nodes]

    def load_state(self, nodes: list[dict[str, Any]]) -> None:
        """Continue from :meth:`state` output (the same config: the same nodes and codec)."""
        if len(nodes) != self.n:
            raise ValueError(f"the checkpoint holds {len(nodes)} nodes, this run has {self.n}")
        owners = {i: s["x_hat"] for i, s in enumerate(nodes)}
        for node, s in zip(self.nodes, nodes, strict=True):
            node.load_state(s, owners)

    def models(self) -> torch.Tensor:
        """Every node's current model, ``(n, d)``."""
        return torch.stack([node.x for node in self.nodes])

    def estimates(self) -> torch.Tensor:
        """Every node's public estimate ``x̂``, ``(n, d)``."""
        return torch.stack([node.x_hat for node in self.nodes])
