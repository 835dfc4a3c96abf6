"""What one node computes in Malcom-PSGD / CHOCO-SGD, shared by every transport.

Per round ``t``, node ``i`` (``docs/papers.md``, Malcom-PSGD):

1. local SGD step: ``x½ = x - η ∇f_i(x)`` (one batch of its shard);
2. compress the difference to its public estimate: ``payload = encode(x½ - x̂_i)``, sent to every
   neighbour (one payload per node and round, the model's tensors in their shapes:
   :func:`~fl_split.codecs.parts.encode_parts`);
3. every holder of a copy of ``x̂_j`` (``j`` itself and its neighbours) adds ``decode(payload_j)``;
4. consensus: ``v = x½ + γ Σ_j w_ij (x̂_j - x̂_i)``, the sum over neighbours in ascending order;
5. proximal step: ``x = S_{ηλ}(v)`` (soft-threshold; ``λ = 0`` is CHOCO-SGD).

:class:`GossipNode` holds one node's state and does steps 1–5; :func:`gossip_round` runs a round
of any set of nodes over an :data:`Exchange`, the one thing a transport supplies (in process: a
lookup, :func:`local_exchange`; ``torch.distributed``: point-to-point sends to the neighbours). Both
transports run this same code, so their runs give the same bits by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_split.codecs import Codec
from fl_split.codecs.parts import decode_parts, encode_parts
from fl_split.codecs.rng_state import codec_rng_state, load_codec_rng_state
from fl_split.gossip.config import GossipConfig
from fl_split.training import batch_indices, batches_per_epoch, build_model, iid_shard

#: Delivers a round's payloads: ``(t, {sender: payload})`` for the senders in this process →
#: ``{receiver: {neighbour: its payload}}`` for the same nodes, neighbours in ascending order.
Exchange = Callable[[int, Mapping[int, bytes]], Mapping[int, Mapping[int, bytes]]]


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

    def __init__(self, config: GossipConfig, nodes: int, model: nn.Module | None = None) -> None:
        self.config = config
        self.nodes = nodes
        self.model: nn.Module = model if model is not None else build_model(self.config, seed=config.seed)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.shapes = [p.shape for p in self.model.parameters()]
        self.batch_size = config.batch_size
        self.seed = config.seed

    def initial(self) -> torch.Tensor:
        """The shared initial model as a flat float32 vector (every node starts here)."""
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


class GossipNode:
    """Node ``rank``: its model ``x``, its public estimate ``x̂``, a copy of each neighbour's ``x̂`` and its codec.

    Parameters
    ----------
    rank:
        The node's index in the mixing matrix.
    x0:
        The shared initial model (flat float32); ``x = x̂ =`` every copy ``= x0``.
    w:
        The mixing matrix; the neighbours are the ``j != rank`` with ``w[rank, j] > 0``, ascending.
    codec, decoder:
        This node's encoder (its own random draws) and the decoder every receiver uses.
    shapes:
        The tensors a model vector is made of (each is encoded in its shape).
    lr, gamma, tau:
        SGD step, consensus step size, soft-threshold ``η·λ`` (0: none).
    objective:
        The node's loss; ``None``: pure gossip (``x½ = x``, loss 0).
    """

    def __init__(
        self,
        rank: int,
        x0: torch.Tensor,
        w: np.ndarray,
        codec: Codec,
        decoder: Codec,
        shapes: Sequence[torch.Size],
        lr: float,
        gamma: float,
        tau: float,
        objective: LocalObjective | None = None,
    ) -> None:
        self.rank = rank
        self.neighbours = [j for j in range(w.shape[0]) if j != rank and w[rank, j] > 0]
        self.weights = [float(w[rank, j]) for j in self.neighbours]
        self.x, self.x_hat = x0.clone(), x0.clone()
        self.copies = {j: x0.clone() for j in self.neighbours}
        self.codec, self.decoder, self.shapes = codec, decoder, list(shapes)
        self.lr, self.gamma, self.tau, self.objective = lr, gamma, tau, objective
        self._x_half: torch.Tensor | None = None

    def send(self, t: int) -> tuple[bytes, float]:
        """Steps 1–2 of round ``t``: the local step; ``(payload, batch loss)``, the payload for every neighbour."""
        if self.objective is None:
            x_half, loss = self.x, 0.0
        else:
            g, loss = self.objective.grad(self.x, self.rank, t)
            x_half = self.x - self.lr * g
        self._x_half = x_half
        return encode_parts(self.codec, x_half - self.x_hat, self.shapes), loss

    def receive(self, payload: bytes, received: Mapping[int, bytes]) -> None:
        """Steps 3–5: decode this node's own ``payload`` and each neighbour's, mix, prox."""
        if self._x_half is None:
            raise RuntimeError(f"node {self.rank}: receive() before send() in this round")
        d, cpu = self.x.numel(), torch.device("cpu")
        self.x_hat = self.x_hat + decode_parts(self.decoder, payload, d, self.shapes, cpu)
        for j in self.neighbours:
            self.copies[j] = self.copies[j] + decode_parts(self.decoder, received[j], d, self.shapes, cpu)
        acc = mix(self.x_hat, [(w, self.copies[j]) for w, j in zip(self.weights, self.neighbours, strict=True)])
        self.x = soft_threshold(self._x_half + self.gamma * acc, self.tau)
        self._x_half = None

    def state(self) -> dict[str, Any]:
        """What resuming needs: the model, the estimate, the neighbours' copies, the codec's random state."""
        return {
            "x": self.x.clone(),
            "x_hat": self.x_hat.clone(),
            "copies": {j: c.clone() for j, c in self.copies.items()},
            "codec_rng": codec_rng_state(self.codec),
        }

    def load_state(self, state: Mapping[str, Any], owners: Mapping[int, torch.Tensor] | None = None) -> None:
        """Continue from :meth:`state` output. ``owners``: the neighbours' own ``x̂``, for a checkpoint
        without copies (an in-process run before the copies were kept; they equal the owners')."""
        self.x, self.x_hat = state["x"].clone(), state["x_hat"].clone()
        if "copies" in state:
            self.copies = {int(j): c.clone() for j, c in state["copies"].items()}
        elif owners is not None:
            self.copies = {j: owners[j].clone() for j in self.neighbours}
        else:
            raise ValueError(f"node {self.rank}: the checkpoint holds no copies of its neighbours' estimates")
        load_codec_rng_state(self.codec, state["codec_rng"])


def gossip_round(nodes: Sequence[GossipNode], t: int, exchange: Exchange) -> list[tuple[int, float]]:
    """Round ``t`` of the ``nodes`` in this process (all of them in process, one per rank distributed).

    Returns
    -------
    list of (int, float)
        Per node: ``len(payload)`` (sent to each of its neighbours) and its batch loss.
    """
    sent = {node.rank: node.send(t) for node in nodes}
    received = exchange(t, {rank: payload for rank, (payload, _) in sent.items()})
    for node in nodes:
        node.receive(sent[node.rank][0], received[node.rank])
    return [(len(sent[node.rank][0]), sent[node.rank][1]) for node in nodes]


def local_exchange(neighbours: Mapping[int, Sequence[int]]) -> Exchange:
    """The in-process :data:`Exchange`: every node's payload handed to its neighbours (``{node: neighbours}``)."""

    def exchange(t: int, payloads: Mapping[int, bytes]) -> dict[int, dict[int, bytes]]:
        return {i: {j: payloads[j] for j in nbrs} for i, nbrs in neighbours.items()}

    return exchange
