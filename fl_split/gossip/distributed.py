"""One ``torch.distributed`` rank per node: payloads go point to point to the graph's neighbours.

Each rank runs its :class:`~fl_split.gossip.node.GossipNode` through
:func:`~fl_split.gossip.node.gossip_round`, the code the in-process transport runs; its exchange
sends the payload's length (one int64) and then its bytes (``uint8``) to every neighbour with
``isend`` and receives theirs with ``irecv`` (gloo on CPU; no pickling). The node keeps its own
estimate ``x̂_i`` and a copy of each neighbour's ``x̂_j``, updated from the received payloads
(the copies equal the owners' estimates bit for bit, checked at the end). Rank 0
writes the metrics rows, from sums over ranks (``all_reduce``). Started directly it spawns
``nodes`` local processes; under ``torchrun`` each process is one node (``WORLD_SIZE = nodes``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fl_split.checkpoint import due, load_rank_checkpoint, save_model, save_rank_checkpoint
from fl_split.codecs import codec_from_spec, seeded_codec_from_spec
from fl_split.gossip.config import GossipConfig, resolved_codec, resolved_l1
from fl_split.gossip.node import Exchange, GossipNode, LocalObjective, gossip_round
from fl_split.launch import launch


def point_to_point(rank: int, neighbours: list[int]) -> Exchange:
    """This rank's :data:`~fl_split.gossip.node.Exchange`: its payload to every neighbour, theirs back."""

    def exchange(t: int, payloads: Mapping[int, bytes]) -> dict[int, dict[int, bytes]]:
        return {rank: _exchange(payloads[rank], neighbours, t)}

    return exchange


def _exchange(payload: bytes, neighbours: list[int], t: int) -> dict[int, bytes]:
    """Send ``payload`` to every neighbour and receive each neighbour's (lengths first, then bytes)."""
    mine = torch.tensor([len(payload)], dtype=torch.int64)
    lengths = {j: torch.zeros(1, dtype=torch.int64) for j in neighbours}
    reqs = [dist.isend(mine, j, tag=2 * t) for j in neighbours]
    reqs += [dist.irecv(lengths[j], j, tag=2 * t) for j in neighbours]
    for r in reqs:
        if r is not None:
            r.wait()
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
    bufs = {j: torch.empty(int(lengths[j].item()), dtype=torch.uint8) for j in neighbours}
    reqs = [dist.isend(data, j, tag=2 * t + 1) for j in neighbours]
    reqs += [dist.irecv(bufs[j], j, tag=2 * t + 1) for j in neighbours]
    for r in reqs:
        if r is not None:
            r.wait()
    return {j: bufs[j].numpy().tobytes() for j in neighbours}


def node_main(rank: int, n: int, config: GossipConfig) -> dict[str, Any]:
    """Node ``rank``'s whole run (the process group is initialised); this node's result."""
    from fl_split.gossip.run import Evaluator, graph, metrics_row, reporter, summary_extra

    threads = config.threads or max(1, (os.cpu_count() or 1) // n)
    torch.set_num_threads(threads)
    adj, w = graph(config)
    neighbours = [int(j) for j in np.flatnonzero(adj[rank])]
    degrees = [int(d) for d in adj.sum(1)]
    spec, l1 = resolved_codec(config), resolved_l1(config)
    objective = LocalObjective(config, n)
    x0 = objective.initial()
    d = x0.numel()
    lr, gamma = config.lr, config.gamma
    codec = seeded_codec_from_spec(spec, config.seed, rank)
    node = GossipNode(rank, x0, w, codec, codec_from_spec(spec), objective.shapes, lr, gamma, lr * l1, objective)
    if node.neighbours != neighbours:
        raise RuntimeError(
            f"node {rank}: the mixing matrix's neighbours {node.neighbours} are not the graph's {neighbours}"
        )
    exchange = point_to_point(rank, neighbours)
    out = Path(config.out_dir)
    edge_bytes = torch.zeros(n, n, dtype=torch.int64)
    t0, loss_sum, sent, cum, start = time.perf_counter(), 0.0, 0, 0, 0
    if config.existing_out == "resume":
        start, shared, mine = load_rank_checkpoint(out, "gossip", config)
        node.load_state(mine)
        edge_bytes[rank] = torch.tensor(mine["edge_bytes"], dtype=torch.int64)
        cum, t0 = int(shared["cum"]), t0 - float(shared["wall_s"])
    writer = reporter(config, start) if rank == 0 else None
    evaluate = Evaluator(objective) if rank == 0 else None
    rounds, every, saved = config.rounds, config.eval_every, start
    for t in range(start, rounds):
        ((size, loss),) = gossip_round([node], t, exchange)
        loss_sum += loss
        sent += size * len(neighbours)
        edge_bytes[rank, neighbours] += size
        if (t + 1) % every and t + 1 != rounds:
            continue
        x = node.x
        x_bar = x.clone()
        totals = torch.tensor([loss_sum, float(sent), float((x == 0).sum())], dtype=torch.float64)
        dist.all_reduce(x_bar)
        dist.all_reduce(totals)
        x_bar /= n
        dev = torch.tensor([float(torch.linalg.vector_norm((x - x_bar).double()) ** 2)], dtype=torch.float64)
        dist.all_reduce(dev)
        loss_sum, sent = 0.0, 0
        if writer is not None and evaluate is not None:
            cum += int(totals[1])
            k = t % every + 1  # rounds in this row
            loss_mean = float(totals[0]) / (n * k)
            samples = (t + 1) * n * config.batch_size
            distance, sparsity = float(dev[0]) ** 0.5, float(totals[2]) / (n * d)  # over all nodes
            test_acc = evaluate(x_bar)
            row = metrics_row(t + 1, loss_mean, int(totals[1]), cum, test_acc, samples, t0, degrees, distance, sparsity)
            writer.write_round(row)
        if due(t + 1, saved, config.checkpoint_every, rounds):  # collective: every rank at once
            local = {**node.state(), "edge_bytes": edge_bytes[rank].tolist()}
            shared = {"cum": cum, "wall_s": time.perf_counter() - t0}
            save_rank_checkpoint(out, "gossip", t + 1, config, shared, local)
            saved = t + 1
    # every copy of x̂_j equals node j's own x̂_j, bit for bit
    all_hat = [torch.empty_like(node.x_hat) for _ in range(n)]
    dist.all_gather(all_hat, node.x_hat)
    consistent = all(torch.equal(node.copies[j], all_hat[j]) for j in neighbours)
    dist.all_reduce(edge_bytes)
    torch.save({"x": node.x, "x_hat": node.x_hat}, out / f"node{rank}.pt")
    result = {"rank": rank, "replicas_consistent": consistent, "neighbours": neighbours}
    if writer is not None and evaluate is not None:
        save_model(out, {"model": evaluate.objective.model.state_dict()})  # the average model x̄
        extra = summary_extra(config, w, d, edge_bytes.tolist(), writer.rows[-1], "torch.distributed")
        writer.write_summary(config, extra)
    return result


def run_distributed(config: GossipConfig) -> dict[str, Any]:
    """Spawn ``nodes`` local ranks (or be one rank under ``torchrun``); rank 0's summary (``{}`` on other ranks)."""
    launch(node_main, config, config.nodes, world_must_match=True)
    summary = Path(config.out_dir) / "summary.json"
    return json.loads(summary.read_text(encoding="utf-8")) if summary.exists() else {}
