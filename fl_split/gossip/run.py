"""``fl-split gossip``: decentralized training, its metrics rows and summary (one entry for both transports)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fl_split.checkpoint import check_resumable, due, load_checkpoint, save_checkpoint, save_model
from fl_split.gossip.config import GossipConfig, resolved_codec, resolved_l1
from fl_split.gossip.node import LocalObjective
from fl_split.gossip.topology import config_topology, mixing_matrix, spectral_gap
from fl_split.metrics import refuse_used
from fl_split.report import RunReporter
from fl_split.training import accuracy, load_split


def graph(config: GossipConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(adjacency, mixing matrix)`` of the configured topology."""
    adj = config_topology(config)
    return adj, mixing_matrix(adj)


def consensus_distance(x: torch.Tensor) -> float:
    """``‖X - 1 x̄ᵀ‖_F`` over the ``(n, d)`` node models (0 at consensus)."""
    return float(torch.linalg.vector_norm((x - x.mean(0, keepdim=True)).double()))


def model_sparsity(x: torch.Tensor) -> float:
    """The fraction of exact zeros in the node models (mean over nodes)."""
    return float((x == 0).double().mean())


class Evaluator:
    """Test accuracy of a flat parameter vector (the average model)."""

    def __init__(self, objective: LocalObjective) -> None:
        self.objective = objective
        self.xt, self.yt = load_split(objective.config, "test")

    def __call__(self, x_bar: torch.Tensor) -> float:
        torch.nn.utils.vector_to_parameters(x_bar, self.objective.model.parameters())
        return accuracy(self.objective.model, self.xt, self.yt)


def metrics_row(
    t: int,
    train_loss: float,
    sent: int,
    cum: int,
    acc: float,
    samples: int,
    t0: float,
    degrees: list[int],
    distance: float,
    sparsity: float,
) -> dict[str, Any]:
    """One ``metrics.jsonl`` row for the rounds up to ``t`` (``sent``: bytes over all edges since the last row;
    ``distance`` and ``sparsity``: :func:`consensus_distance` and :func:`model_sparsity` over all nodes)."""
    return {
        "round": t,
        "train_loss": train_loss,
        "test_accuracy": acc,
        "test_accuracy_dense": acc,  # the average model: there is no separate uncompressed view
        "uplink_bytes": sent,  # every payload goes over each edge of its node once
        "downlink_bytes": sent,  # ... and is received once at the other end
        "cum_uplink_bytes": cum,
        "cum_downlink_bytes": cum,
        "steps": t,
        "samples": samples,
        "dropped": 0,
        "wall_s": round(time.perf_counter() - t0, 3),
        "consensus_distance": distance,
        "model_sparsity": sparsity,
        "edges": int(sum(degrees) // 2),
    }


def reporter(config: GossipConfig, start: int) -> RunReporter:
    """The run's reporter (rows, bar, summary), resumed after round ``start``; one per run (rank 0)."""
    return RunReporter(
        config.out_dir,
        config.existing_out,
        start,
        total=config.rounds,
        desc=f"gossip {config.algorithm}",
        progress=config.progress,
    )


def run_gossip(config: GossipConfig) -> dict[str, Any]:
    """Run the configured algorithm on the configured transport; write and return the summary."""
    if config.existing_out == "refuse":
        refuse_used(config.out_dir)  # before anything starts
    if config.transport == "distributed":
        from fl_split.gossip.distributed import run_distributed

        if config.existing_out == "resume":
            check_resumable(config.out_dir, "gossip", config)  # a clear error before any rank starts
        return run_distributed(config)
    from fl_split.gossip.inprocess import InProcessGossip

    n = config.nodes
    threads = config.threads
    if threads:
        torch.set_num_threads(threads)
    adj, w = graph(config)
    degrees = [int(d) for d in adj.sum(1)]
    sim = InProcessGossip(config, w, resolved_codec(config), resolved_l1(config))
    evaluate = Evaluator(sim.objective)
    edge_bytes = np.zeros((n, n), dtype=np.int64)
    t0, losses, sent, cum, start = time.perf_counter(), [], 0, 0, 0
    if config.existing_out == "resume":
        start, state = load_checkpoint(config.out_dir, "gossip", config)
        sim.load_state(state["ranks"])
        edge_bytes = np.array([r["edge_bytes"] for r in state["ranks"]], dtype=np.int64)
        cum, t0 = int(state["shared"]["cum"]), t0 - float(state["shared"]["wall_s"])
    writer = reporter(config, start)
    rounds, every, saved = config.rounds, config.eval_every, start
    for t in range(start, rounds):
        stats = sim.step(t)
        losses += stats.losses
        for i, b in enumerate(stats.payload_bytes):
            edge_bytes[i, adj[i]] += b
            sent += b * degrees[i]
        if (t + 1) % every and t + 1 != rounds:
            continue
        cum += sent
        x = sim.models()
        acc = evaluate(x.mean(0))
        samples = (t + 1) * n * config.batch_size
        row = metrics_row(
            t + 1,
            float(np.mean(losses)),
            sent,
            cum,
            acc,
            samples,
            t0,
            degrees,
            consensus_distance(x),
            model_sparsity(x),
        )
        writer.write_round(row)
        losses, sent = [], 0
        if due(t + 1, saved, config.checkpoint_every, rounds):
            ranks = [s | {"edge_bytes": edge_bytes[i].tolist()} for i, s in enumerate(sim.state())]
            shared = {"cum": cum, "wall_s": time.perf_counter() - t0}
            save_checkpoint(writer.out_dir, "gossip", t + 1, config, {"shared": shared, "ranks": ranks})
            saved = t + 1
    for node in sim.nodes:  # the same files the distributed transport writes
        torch.save({"x": node.x.clone(), "x_hat": node.x_hat.clone()}, writer.out_dir / f"node{node.rank}.pt")
    model = evaluate.objective.model
    torch.nn.utils.vector_to_parameters(sim.models().mean(0), model.parameters())
    save_model(writer.out_dir, {"model": model.state_dict()})  # the average model x̄
    extra = summary_extra(config, w, sim.d, edge_bytes.tolist(), writer.rows[-1], "in process")
    return writer.write_summary(config, extra)


def summary_extra(
    config: GossipConfig, w: np.ndarray, d: int, edge_bytes: list[list[int]], last: dict[str, Any], transport: str
) -> dict[str, Any]:
    """What a gossip ``summary.json`` adds to the common one (both transports; ``last``: the final metrics row)."""
    return {
        "title": f"{config.algorithm} on a {config.topology} of {w.shape[0]}, {resolved_codec(config)} ({transport})",
        "mode": "gossip",
        "codec": resolved_codec(config),
        "l1": resolved_l1(config),
        "spectral_gap": spectral_gap(w),
        "model_numel": d,
        "edge_bytes": edge_bytes,
        "final_consensus_distance": last["consensus_distance"],
        "final_model_sparsity": last["model_sparsity"],
    }
