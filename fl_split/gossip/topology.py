"""Communication graphs for decentralized learning and their Metropolis–Hastings mixing matrices.

A topology is a symmetric boolean adjacency matrix without self loops; :func:`mixing_matrix`
turns it into the symmetric doubly-stochastic ``W`` with Metropolis–Hastings weights
``w_ij = 1 / (1 + max(deg_i, deg_j))`` on edges and ``w_ii = 1 - sum_j w_ij``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fl_split.gossip.config import GossipConfig

#: Topology names accepted by :func:`make_topology`.
TOPOLOGIES = ("ring", "torus", "complete", "erdos_renyi")


class TopologyError(ValueError):
    """A topology name, shape or parameter that does not describe a usable graph."""


def _torus_shape(n: int, shape: tuple[int, int] | list[int] | None) -> tuple[int, int]:
    if shape is not None:
        if len(shape) != 2 or any(int(s) < 2 for s in shape):
            raise TopologyError(f"torus_shape must be two sizes >= 2 (rows, cols), got {list(shape)}")
        rows, cols = int(shape[0]), int(shape[1])
        if rows * cols != n:
            raise TopologyError(
                f"torus_shape {rows}x{cols} has {rows * cols} nodes but nodes = {n}: set nodes = {rows * cols} "
                f"or a torus_shape whose product is {n}"
            )
        return rows, cols
    rows = max((r for r in range(2, math.isqrt(n) + 1) if n % r == 0), default=0)
    if rows == 0:
        raise TopologyError(
            f"a 2-D torus needs nodes = rows x cols with rows, cols >= 2; {n} has no such factoring "
            "(use e.g. 8, 9, 12, 16 nodes, or another topology)"
        )
    return rows, n // rows


def make_topology(
    name: str,
    n: int,
    *,
    torus_shape: tuple[int, int] | list[int] | None = None,
    p: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """The adjacency matrix of a named graph on ``n`` nodes.

    Parameters
    ----------
    name:
        ``ring`` (each node linked to its two neighbours), ``torus`` (a ``rows x cols`` grid with
        wrap-around: up to four neighbours), ``complete``, or ``erdos_renyi`` (each edge with
        probability ``p``, seeded; redrawn until connected).
    n:
        Number of nodes (at least 2).
    torus_shape:
        ``(rows, cols)`` with ``rows * cols == n``; default: the most square factoring.
    p:
        Edge probability of ``erdos_renyi``.
    seed:
        Seed of ``erdos_renyi``.

    Raises
    ------
    TopologyError
        An unknown name, too few nodes, a torus shape that does not match ``n``, or an
        Erdős–Rényi graph that is not connected in 1000 draws.
    """
    if name not in TOPOLOGIES:
        raise TopologyError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    if not isinstance(n, int) or n < 2:
        raise TopologyError(f"a graph needs at least 2 nodes, got {n!r}")
    adj = np.zeros((n, n), dtype=bool)
    if name == "ring":
        for i in range(n):
            adj[i, (i + 1) % n] = adj[(i + 1) % n, i] = True
    elif name == "torus":
        rows, cols = _torus_shape(n, torus_shape)
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                for j in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
                    adj[i, j] = adj[j, i] = True
    elif name == "complete":
        adj[:] = True
    else:
        if not 0.0 < p <= 1.0:
            raise TopologyError(f"erdos_renyi needs an edge probability p in (0, 1], got {p}")
        rng = np.random.default_rng(seed)
        for _ in range(1000):
            upper = np.triu(rng.random((n, n)) < p, k=1)
            adj = upper | upper.T
            if is_connected(adj):
                break
        else:
            raise TopologyError(f"erdos_renyi with n={n}, p={p} was not connected in 1000 draws: raise p")
    np.fill_diagonal(adj, False)
    return adj


def config_topology(config: GossipConfig) -> np.ndarray:
    """The adjacency matrix a gossip config describes (``topology``, ``nodes``, ``torus_shape``,
    ``edge_probability``, ``graph_seed``); raises :class:`TopologyError` as :func:`make_topology`."""
    return make_topology(
        config.topology,
        config.nodes,
        torus_shape=config.torus_shape,
        p=config.edge_probability,
        seed=config.graph_seed,
    )


def is_connected(adj: np.ndarray) -> bool:
    """Whether every node reaches every other."""
    seen, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(adj[i]):
            if int(j) not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    return len(seen) == adj.shape[0]


def mixing_matrix(adj: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights (float64): symmetric, doubly stochastic, nonzero on edges and the diagonal."""
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or not np.array_equal(adj, adj.T):
        raise TopologyError(f"an adjacency matrix must be square and symmetric, got shape {adj.shape}")
    if not is_connected(adj):
        raise TopologyError("the graph is not connected: gossip cannot reach consensus")
    deg = adj.sum(1)
    n = adj.shape[0]
    w = np.zeros((n, n))
    for i in range(n):
        for j in np.flatnonzero(adj[i]):
            w[i, j] = 1.0 / (1.0 + max(deg[i], deg[j]))
        w[i, i] = 1.0 - w[i].sum()
    return w


def spectral_gap(w: np.ndarray) -> float:
    """``1 - |λ₂(W)|``: how fast plain gossip with ``W`` mixes (1 for the complete graph's ``11ᵀ/n``)."""
    eig = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return float(1.0 - eig[1]) if len(eig) > 1 else 1.0
