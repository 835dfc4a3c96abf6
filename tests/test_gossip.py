"""Decentralized learning: topologies, the algorithm (docs/papers.md, Malcom-PSGD), both transports, the default run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fl_split.codecs import codec_from_spec, seeded_codec_from_spec
from fl_split.config import ConfigError
from fl_split.gossip import TopologyError, make_topology, mixing_matrix, soft_threshold
from fl_split.gossip.config import GossipConfig, load_gossip_config
from fl_split.gossip.inprocess import InProcessGossip
from fl_split.gossip.node import GossipNode, LocalObjective, gossip_round, local_exchange
from fl_split.gossip.run import run_gossip
from fl_split.metrics import OutputExists, read_metrics


def _cfg(**values: Any) -> dict[str, Any]:
    return load_gossip_config(values={"threads": 1, **values})


# ------------------------------------------------------------------------------------------- topologies
@pytest.mark.parametrize(
    ("name", "n", "degrees"),
    [("ring", 8, {2}), ("torus", 16, {4}), ("torus", 9, {4}), ("complete", 5, {4}), ("ring", 2, {1})],
)
def test_topologies_have_the_expected_degrees_and_mh_weights_are_doubly_stochastic(
    name: str, n: int, degrees: set[int]
) -> None:
    adj = make_topology(name, n)
    assert set(adj.sum(1).tolist()) == degrees and not adj.diagonal().any() and np.array_equal(adj, adj.T)
    w = mixing_matrix(adj)
    assert np.allclose(w.sum(0), 1.0) and np.allclose(w.sum(1), 1.0) and np.array_equal(w, w.T)
    assert np.all(w[~adj & ~np.eye(n, dtype=bool)] == 0) and np.all(w[adj] > 0)
    if name == "ring" and n > 2:
        assert w[0, 1] == pytest.approx(1 / 3) and w[0, 0] == pytest.approx(1 / 3)
    if name == "complete":
        assert np.allclose(w, 1.0 / n)


def test_erdos_renyi_is_seeded_and_connected() -> None:
    a, b = make_topology("erdos_renyi", 12, p=0.3, seed=4), make_topology("erdos_renyi", 12, p=0.3, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, make_topology("erdos_renyi", 12, p=0.3, seed=5))
    mixing_matrix(a)  # raises if not connected


def test_bad_topologies_are_clear_errors() -> None:
    with pytest.raises(TopologyError, match="unknown topology 'star'; choose one of ring, torus"):
        make_topology("star", 8)
    with pytest.raises(TopologyError, match="torus_shape 3x3 has 9 nodes but nodes = 8"):
        make_topology("torus", 8, torus_shape=[3, 3])
    with pytest.raises(TopologyError, match="7 has no such factoring"):
        make_topology("torus", 7)
    with pytest.raises(TopologyError, match="not connected in 1000 draws"):
        make_topology("erdos_renyi", 30, p=0.01)
    with pytest.raises(ConfigError, match="topology: torus_shape 4x4 has 16 nodes but nodes = 8"):
        load_gossip_config(values={"topology": "torus", "torus_shape": [4, 4]})
    with pytest.raises(ConfigError, match="choco solves the unregularized problem: set l1=0"):
        load_gossip_config(values={"algorithm": "choco", "l1": 0.001})
    with pytest.raises(ConfigError, match="topology"):
        load_gossip_config(values={"topology": "hypercube"})
    # gossip mixes parameters only: BatchNorm statistics would stay each node's own
    with pytest.raises(ConfigError, match=r"model 'resnet18' has buffers .*running_mean.*BatchNorm"):
        load_gossip_config(values={"model": "resnet18"})


def test_cli_reports_a_topology_that_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gossip", "--set", "topology=torus", "nodes=7"])
    assert exc.value.code == 2 and "7 has no such factoring" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- spec tests
def test_t1_soft_threshold() -> None:
    out = soft_threshold(torch.tensor([0.3, -0.05, 0.1, -0.2]), 0.1)
    assert torch.allclose(out, torch.tensor([0.2, 0.0, 0.0, -0.1])) and out[1] == 0 and out[2] == 0


def _gossip_nodes(topology: str, x0: torch.Tensor, codec: str, gamma: float) -> list[GossipNode]:
    """Pure gossip nodes (η = λ = 0): node ``i`` and its estimate start at ``x0[i]``, copies at ``x0[j]``."""
    n, d = x0.shape
    w = mixing_matrix(make_topology(topology, n))
    decoder = codec_from_spec(codec)
    nodes = []
    for i in range(n):
        node = GossipNode(i, x0[i], w, seeded_codec_from_spec(codec, 0, i), decoder, [torch.Size([d])], 0.0, gamma, 0.0)
        node.copies = {j: x0[j].clone() for j in node.neighbours}
        nodes.append(node)
    return nodes


def _consensus(
    topology: str, n: int, x0: torch.Tensor, codec: str, gamma: float, rounds: int
) -> tuple[list[float], torch.Tensor]:
    """Pure gossip (η = λ = 0) from ``x0``; the Frobenius distance to the average after each round, final x."""
    nodes = _gossip_nodes(topology, x0, codec, gamma)
    exchange = local_exchange({node.rank: node.neighbours for node in nodes})
    dist = []
    for t in range(rounds):
        gossip_round(nodes, t, exchange)
        x = torch.stack([node.x for node in nodes])
        dist.append(float(torch.linalg.vector_norm(x - x.mean(0))))
    return dist, torch.stack([node.x for node in nodes])


def test_t5_complete_graph_without_compression_averages_in_one_round() -> None:
    x0 = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    _, x = _consensus("complete", 6, x0, "none", 1.0, 1)
    assert torch.allclose(x, x0.mean(0).expand_as(x), atol=1e-6)


def test_t6_the_node_average_is_preserved_under_compressed_gossip() -> None:
    x0 = torch.randn(8, 300, generator=torch.Generator().manual_seed(1))
    nodes = _gossip_nodes("ring", x0, "dither:levels=15,rescale=true", 0.5)
    exchange = local_exchange({node.rank: node.neighbours for node in nodes})
    for t in range(20):
        gossip_round(nodes, t, exchange)
        x = torch.stack([node.x for node in nodes])
        assert torch.allclose(x.double().mean(0), x0.double().mean(0), atol=1e-5)


def test_t7_compressed_gossip_reaches_consensus_only_with_rescaling() -> None:
    x0 = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    start = float(torch.linalg.vector_norm(x0 - x0.mean(0)))
    assert 80 < start < 90  # ≈ 84, as in the spec
    dist, _ = _consensus("ring", 8, x0, "dither:levels=16,rescale=true", 0.5, 100)
    assert dist[-1] < 1e-3, dist[-5:]
    diverged, _ = _consensus("ring", 8, x0, "dither:levels=16", 0.5, 100)
    assert diverged[-1] > 500, diverged[-5:]


class _Linear(LocalObjective):
    """Softmax regression on the digits pixels (16 x 16 as loaded): a convex problem."""

    def __init__(self, config: dict[str, Any], nodes: int) -> None:
        torch.manual_seed(0)
        super().__init__(config, nodes, model=nn.Sequential(nn.Flatten(), nn.Linear(256, 10)))


def test_complete_graph_without_compression_equals_centralized_sgd_on_a_convex_problem() -> None:
    n, lr, rounds = 4, 0.1, 30
    config = _cfg(nodes=n, topology="complete", codec="none", gamma=1.0, lr=lr, algorithm="choco", l1=0.0)
    objective = _Linear(config, n)
    sim = InProcessGossip(config, mixing_matrix(make_topology("complete", n)), "none", 0.0, objective)
    x = objective.initial()
    for t in range(rounds):
        sim.step(t)
        grads = [objective.grad(x, i, t)[0] for i in range(n)]  # centralized SGD: the mean of the n batches' grads
        x = x - lr * torch.stack(grads).mean(0)
    xs = sim.models()
    assert float(torch.linalg.vector_norm(xs - xs.mean(0))) < 1e-5  # consensus
    assert torch.allclose(xs.mean(0), x, atol=1e-5), float((xs.mean(0) - x).abs().max())


def test_t8_distributed_equals_inprocess_bit_for_bit_and_replicas_agree(tmp_path: Path) -> None:
    """4 nodes on a ring, gloo, the same seed: the same models bit for bit, the same bytes; replicas agree."""
    common = {"nodes": 4, "rounds": 12, "eval_every": 6}
    s_in = run_gossip(_cfg(**common, out_dir=str(tmp_path / "inproc")))
    s_dist = run_gossip(_cfg(**common, transport="distributed", out_dir=str(tmp_path / "dist")))
    assert set(s_in) == set(s_dist) and s_in["edge_bytes"] == s_dist["edge_bytes"]
    assert s_in["final_model_sparsity"] == pytest.approx(s_dist["final_model_sparsity"], abs=1e-9)
    for i in range(4):
        a = torch.load(tmp_path / "inproc" / f"node{i}.pt", weights_only=True)
        b = torch.load(tmp_path / "dist" / f"node{i}.pt", weights_only=True)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["x_hat"], b["x_hat"]), i
    # model.pt: the average model x̄ over the nodes, from either transport
    xs = torch.stack([torch.load(tmp_path / "inproc" / f"node{i}.pt", weights_only=True)["x"] for i in range(4)])
    for k in ("inproc", "dist"):
        model = torch.load(tmp_path / k / "model.pt", weights_only=True)["model"]
        assert torch.allclose(torch.cat([v.flatten() for v in model.values()]), xs.mean(0), atol=1e-6), k
    with pytest.raises(OutputExists, match="already holds a run"):  # refused before anything starts
        run_gossip(_cfg(**common, transport="distributed", out_dir=str(tmp_path / "dist")))
    rows = {k: read_metrics(tmp_path / k / "metrics.jsonl") for k in ("inproc", "dist")}
    for r_in, r_dist in zip(rows["inproc"], rows["dist"], strict=True):
        assert r_in["uplink_bytes"] == r_dist["uplink_bytes"] and r_in["test_accuracy"] == r_dist["test_accuracy"]
        assert r_in["train_loss"] == pytest.approx(r_dist["train_loss"], rel=1e-6)
        assert r_in["model_sparsity"] == pytest.approx(r_dist["model_sparsity"], abs=1e-9)
    for i in range(4):
        assert json.loads((tmp_path / "dist" / f"rank{i}.json").read_text())["replicas_consistent"] is True
    assert rows["inproc"][-1]["model_sparsity"] > 0  # the L1 prox ran on both


def test_t9_the_l1_prox_makes_sparse_models_and_then_fewer_bits(tmp_path: Path) -> None:
    """4 nodes, 80 rounds: λ = 0.005 against λ = 0 (the same quantizer)."""
    rows = {}
    for l1 in (0.005, 0.0):
        run_gossip(_cfg(nodes=4, rounds=80, eval_every=20, l1=l1, out_dir=str(tmp_path / str(l1))))
        rows[l1] = read_metrics(tmp_path / str(l1) / "metrics.jsonl")
    assert rows[0.005][-1]["model_sparsity"] > 0.3 and rows[0.0][-1]["model_sparsity"] < 0.01
    # the gossiped difference x½ - x̂ is dense at first (the prox comes after mixing); the bits fall later
    assert rows[0.005][-1]["uplink_bytes"] < rows[0.0][-1]["uplink_bytes"]
    assert rows[0.005][-1]["uplink_bytes"] < rows[0.005][0]["uplink_bytes"]


def test_default_run_reaches_090_on_a_ring_of_8(tmp_path: Path) -> None:
    summary = run_gossip(_cfg(rounds=100, eval_every=50, out_dir=str(tmp_path)))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert summary["final_test_accuracy"] >= 0.90 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["consensus_distance"] < 5.0  # the nodes stay together (it grows without bound at gamma 0.5)
    # bytes: every node's payload over each of its 2 edges, measured; about 0.5 bits per parameter
    d = sum(p.numel() for p in LocalObjective(GossipConfig.from_dict(summary["config"]), 8).model.parameters())
    assert 8 * 2 * 50 * d / 64 < rows[-1]["uplink_bytes"] < 8 * 2 * 50 * d / 4
    assert (tmp_path / "summary.json").exists() and (tmp_path / "accuracy_vs_mb.png").exists()
    assert np.asarray(summary["edge_bytes"]).sum() == rows[0]["cum_uplink_bytes"] + rows[1]["uplink_bytes"]


def test_bench_cell_reports_bits_to_target_and_a_target_never_reached(tmp_path: Path) -> None:
    import argparse

    from simulations.bench_gossip import cell, markdown

    args = argparse.Namespace(tmp=str(tmp_path), rounds=6, eval_every=3, target=0.0)
    row = cell("choco+topk", "choco", "topk:keep=0.01", 0.0, "ring", 4, args)
    assert row["status"] == "completed" and row["rounds_to_target"] == 3 and row["mbits_to_target"] > 0
    assert row["total_mbits"] > row["mbits_to_target"] and row["final_model_sparsity"] < 0.01
    args.target = 1.01
    missed = cell("malcom", "malcom", "dither:levels=15,rescale=true", None, "ring", 4, args)
    assert missed["rounds_to_target"] is None and missed["l1"] == 0.002
    text = markdown({"setup": {"rounds": 6, "eval_every": 3, "target": 1.01}, "table": [row, missed]})
    assert "| not reached |" in text and "choco+topk" in text


@pytest.mark.parametrize("transport", ["inprocess", "distributed"])
def test_an_interrupted_gossip_run_resumed_equals_an_uninterrupted_one(transport: str, tmp_path: Path) -> None:
    """Malcom-PSGD's dithered codec draws at random on every node: the resumed run must draw what the
    uninterrupted one drew (the codecs' generator states are in the checkpoint), from every node's own
    model, estimate and (distributed) copies of its neighbours' estimates."""
    common = {"nodes": 4, "eval_every": 2, "checkpoint_every": 4, "transport": transport}
    run_gossip(_cfg(**common, rounds=8, out_dir=str(tmp_path / "whole")))
    run_gossip(_cfg(**common, rounds=4, out_dir=str(tmp_path / "cut")))  # stopped after round 4 ...
    run_gossip(_cfg(**common, rounds=8, out_dir=str(tmp_path / "cut"), existing_out="resume"))  # ... resumed to 8
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["round"] for r in b] == [2, 4, 6, 8]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in a] == [
        {k: v for k, v in r.items() if k != "wall_s"} for r in b
    ]
    for i in range(4):
        x, y = (torch.load(tmp_path / k / f"node{i}.pt", weights_only=True) for k in ("whole", "cut"))
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["x_hat"], y["x_hat"]), i
    ma, mb = (torch.load(tmp_path / k / "model.pt", weights_only=True)["model"] for k in ("whole", "cut"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    sa, sb = (json.loads((tmp_path / k / "summary.json").read_text()) for k in ("whole", "cut"))
    assert sa["edge_bytes"] == sb["edge_bytes"] and sb["rounds_completed"] == 4
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in lr"):
        run_gossip(_cfg(**common, rounds=8, lr=0.2, out_dir=str(tmp_path / "cut"), existing_out="resume"))
