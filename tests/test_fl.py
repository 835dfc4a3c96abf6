"""Federated learning with compressed updates: aggregation, the update codec path, error feedback, faults."""

from __future__ import annotations

import json
import logging
import struct
import tempfile
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fl_split.codecs import CodecError, codec_from_spec
from fl_split.config import ConfigError
from fl_split.fl.client import build_model, local_train
from fl_split.fl.config import FLClientTask, load_fl_config
from fl_split.fl.faults import CorruptUpdate, RaiseInTrain, TamperMetric
from fl_split.fl.mods import compress_update
from fl_split.fl.update import (
    DOWN_RECORD,
    RESIDUAL_RECORD,
    UPDATE_RECORD,
    decode_update,
    encode_update,
    residuals_from_record,
)
from fl_split.metrics import read_metrics
from simulations.fl import run_fl
from strategies.compressed_fedavg import CompressedFedAvg


def _config(**values: object) -> dict:
    values = {"progress": False, "device": "cpu", "out_dir": tempfile.mkdtemp(prefix="fl-test-"), **values}
    return load_fl_config("fl", values=values)


def _reply(node: int, content: RecordDict) -> Message:
    meta = Metadata(0, f"m{node}", node, 0, f"q{node}", "1", time.time(), 60.0, "train")
    return Message(content, metadata=meta)


def _local_models(global_sd: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in global_sd.items()} for _ in range(n)]


def test_with_codec_none_aggregation_equals_flowers_plain_fedavg() -> None:
    cfg = _config(uplink="none", dense_below=0)
    global_sd = build_model(cfg, seed=0).state_dict()
    locals_ = _local_models(global_sd, 3)
    examples = [100, 250, 37]
    plain = [
        _reply(i, RecordDict({"arrays": ArrayRecord(torch_state_dict=m), "metrics": MetricRecord({"num-examples": e})}))
        for i, (m, e) in enumerate(zip(locals_, examples, strict=True))
    ]
    want, _ = FedAvg().aggregate_train(1, plain)
    ours = CompressedFedAvg(cfg)
    ours._global = {k: v.clone() for k, v in global_sd.items()}
    replies, sent = [], 0
    for i, (m, e) in enumerate(zip(locals_, examples, strict=True)):
        names, payloads, _ = encode_update({k: m[k] - global_sd[k] for k in m}, "none")
        sent += sum(len(p) for p in payloads)
        content = RecordDict(
            {
                UPDATE_RECORD: ConfigRecord({"names": names, "payloads": payloads}),
                "metrics": MetricRecord({"num-examples": e}),
            }
        )
        replies.append(_reply(i, content))
    got, _ = ours.aggregate_train(1, replies)
    assert got is not None and want is not None
    w, g = want.to_torch_state_dict(), got.to_torch_state_dict()
    assert max(float((w[k] - g[k]).abs().max()) for k in w) < 1e-6
    row = ours.round_row()
    assert row["uplink_bytes"] == sent
    assert (row["samples"], row["dropped"], row["failed_clients"]) == (387, 0, 0)


def test_aggregation_sums_in_partition_order_whatever_order_the_replies_arrive_in() -> None:
    """Ray delivers replies in any order; float32 sums depend on it. The strategy sums in partition order,
    so a run (and a resumed one) gives the same model bit for bit."""
    cfg = _config(uplink="none", dense_below=0)
    global_sd = build_model(cfg, seed=0).state_dict()
    g = torch.Generator().manual_seed(3)
    deltas = [{k: (10.0**i) * torch.randn(v.shape, generator=g) for k, v in global_sd.items()} for i in range(-3, 3)]
    examples = [100, 250, 37, 80, 12, 400]

    def aggregate(order: list[int]) -> dict[str, torch.Tensor]:
        ours = CompressedFedAvg(cfg)
        ours._global = {k: v.clone() for k, v in global_sd.items()}
        replies = []
        for i in order:
            names, payloads, _ = encode_update(deltas[i], "none")
            metrics = MetricRecord({"num-examples": examples[i], "partition-id": i})
            update = ConfigRecord({"names": names, "payloads": payloads})
            content = RecordDict({UPDATE_RECORD: update, "metrics": metrics})
            replies.append(_reply(10 + order.index(i), content))  # node ids in arrival order, as Ray's may be
        got, _ = ours.aggregate_train(1, replies)
        assert got is not None
        return got.to_torch_state_dict()

    forward, backward = aggregate([0, 1, 2, 3, 4, 5]), aggregate([5, 3, 1, 4, 0, 2])
    assert all(torch.equal(forward[k], backward[k]) for k in forward)
    # the check has teeth: summed in those two orders, float32 gives different bits
    w = [examples[i] * deltas[i]["0.0.weight"] for i in range(6)]
    assert not torch.equal(sum(w[i] for i in [0, 1, 2, 3, 4, 5]), sum(w[i] for i in [5, 3, 1, 4, 0, 2]))


def test_a_reply_that_does_not_decode_is_dropped_and_the_others_are_averaged(caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(uplink="qsgd:levels=16", dense_below=0)
    global_sd = build_model(cfg, seed=0).state_dict()
    ours = CompressedFedAvg(cfg)
    ours._global = dict(global_sd)
    replies = []
    for i, m in enumerate(_local_models(global_sd, 2)):
        names, payloads, _ = encode_update({k: m[k] - global_sd[k] for k in m}, cfg["uplink"])
        if i == 1:
            payloads[2] = payloads[2][:-3]
        content = RecordDict(
            {
                UPDATE_RECORD: ConfigRecord({"names": names, "payloads": payloads}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(_reply(i, content))
    with caplog.at_level(logging.ERROR):
        got, _ = ours.aggregate_train(1, replies)
    row = ours.round_row()
    assert got is not None and (row["dropped"], row["failed_clients"], row["aggregated"]) == (1, 1, 1)
    assert row["failure_reasons"] == {"malformed": 1} and "client 1 dropped its update" in caplog.text


def test_decode_update_refuses_what_the_model_does_not_expect() -> None:
    cfg = _config()
    like = {k: v for k, v in build_model(cfg, seed=0).state_dict().items()}
    names, payloads, _ = encode_update({k: torch.zeros_like(v) for k, v in like.items()}, "none")
    with pytest.raises(CodecError, match="do not match"):
        decode_update(names[::-1], payloads, like, "none")
    with pytest.raises(CodecError, match="payloads for"):
        decode_update(names, payloads[:-1], like, "none")
    swapped = [payloads[1], payloads[0], *payloads[2:]]
    with pytest.raises(CodecError):
        decode_update(names, swapped, like, "none")
    inf = [p[:-4] + struct.pack("<f", float("inf")) for p in payloads]  # the last float32 of each tensor
    with pytest.raises(CodecError, match="non-finite"):
        decode_update(names, inf, like, "none")
    with pytest.raises(ValueError, match="non-finite"):  # and a client cannot encode one
        encode_update({k: torch.full_like(v, float("inf")) for k, v in like.items()}, "fp16")


def test_error_feedback_residual_lives_in_the_node_state_and_carries_what_was_not_sent() -> None:
    """Through the mod: what the server decodes over two rounds plus the residual is what the client produced."""
    cfg = _config(uplink="topk:keep=0.01", dense_below=0)
    model_sd = build_model(cfg, seed=0).state_dict()
    g = torch.Generator().manual_seed(3)
    deltas = [{k: torch.randn(v.shape, generator=g) for k, v in model_sd.items()} for _ in range(2)]
    context = Context(run_id=0, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    config = ConfigRecord({"uplink": cfg["uplink"], "error-feedback": True, "dense-below": 0, "server-round": 1})
    received = {k: torch.zeros_like(v) for k, v in model_sd.items()}
    for delta in deltas:
        request = Message(
            RecordDict({"config": config}), metadata=Metadata(0, "q", 0, 1, "", "1", time.time(), 60, "train")
        )

        def app(msg: Message, ctx: Context, d: dict = delta) -> Message:
            content = RecordDict(
                {"arrays": ArrayRecord(torch_state_dict=d), "metrics": MetricRecord({"num-examples": 5})}
            )
            return Message(content, metadata=Metadata(0, "r", 1, 0, "q", "1", time.time(), 60, "train"))

        reply = compress_update(request, context, app)
        assert "arrays" not in reply.content.array_records
        record = reply.content.config_records[UPDATE_RECORD]
        dec = decode_update(list(record["names"]), list(record["payloads"]), model_sd, cfg["uplink"])  # type: ignore[arg-type]
        for k in received:
            received[k] += dec[k]
    residual = residuals_from_record(dict(context.state.config_records[RESIDUAL_RECORD]))
    numel = sum(v.numel() for v in model_sd.values())
    assert int(reply.content.metric_records["metrics"]["residual-bytes"]) == sum(
        len(p)
        for p in context.state.config_records[RESIDUAL_RECORD]["payloads"]  # type: ignore[union-attr]
    )
    assert (
        int(reply.content.metric_records["metrics"]["residual-bytes"]) >= 4 * numel
    )  # float32 per element (+ headers)
    for k in received:  # EF invariant: sent + residual == produced
        assert torch.allclose(received[k] + residual[k], deltas[0][k] + deltas[1][k], atol=1e-5)


def test_local_training_is_reproducible_and_moves_the_model() -> None:
    cfg = _config()
    sd = build_model(cfg, seed=0).state_dict()
    d1, n1, l1 = local_train(FLClientTask.of(cfg), sd, 0, 10, round_=1)
    d2, n2, l2 = local_train(FLClientTask.of(cfg), sd, 0, 10, round_=1)
    assert n1 == n2 > 0 and l1 == l2
    assert all(torch.equal(d1[k], d2[k]) for k in d1) and max(float(v.abs().max()) for v in d1.values()) > 1e-4


def test_unknown_codec_option_or_key_is_a_config_error_before_training() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        _config(uplink="nosuch")
    with pytest.raises(ConfigError, match="bogus"):
        _config(uplink="ms:bogus=1")
    with pytest.raises(ConfigError, match="server_lrr"):
        load_fl_config("fl", overrides=["server_lrr=1"])
    assert codec_from_spec(_config()["uplink"]).name == "ms"


def test_fl_over_flower_survives_a_bad_update_a_raising_client_and_a_lying_one(tmp_path: Path) -> None:
    cfg = _config(clients=4, rounds=2, out_dir=str(tmp_path))
    mods = (CorruptUpdate(partition_id=1), RaiseInTrain(partition_id=2), TamperMetric(3, "num-examples", float("inf")))
    summary = run_fl(cfg, mods=mods)
    r1, r2 = read_metrics(tmp_path / "metrics.jsonl")
    assert (r1["clients"], r1["dropped"], r1["failed_clients"], r1["steps"], r1["aggregated"]) == (4, 2, 3, 1, 1)
    assert r1["failure_reasons"] == {"malformed": 1, "non_finite": 1, "raised": 1}
    assert (r2["dropped"], r2["failed_clients"], r2["steps"]) == (0, 0, 4)
    assert r1["uplink_bytes"] > 0 and r2["uplink_bytes"] > r1["uplink_bytes"]  # 4 updates vs 2 decoded
    assert r2["residual_bytes"] > 0 and summary["status"] == "completed"
    assert summary["failure_reasons"] == r1["failure_reasons"] and summary["rounds_without_update"] == 0


def test_fl_run_in_which_no_update_is_ever_aggregated_fails(tmp_path: Path) -> None:
    from simulations.cli import main

    out = tmp_path / "fl"
    cfg = _config(clients=2, rounds=1, out_dir=str(out))
    summary = run_fl(cfg, mods=(RaiseInTrain(partition_id=0), RaiseInTrain(partition_id=1)))
    assert summary["status"] == "failed" and "no round aggregated an update" in summary["error"]
    assert (summary["rounds_without_update"], summary["failure_reasons"]) == (1, {"raised": 2})
    # the CLI exits non-zero on such a run (here: a learning rate so large that no client's update is usable)
    rc = main(["fl", "--set", "clients=2", "rounds=1", "progress=false", "optimizer.lr=1.0e+30", "uplink=none",
               f"out_dir={tmp_path / 'cli'}"])  # fmt: skip
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert rc == 1 and cli["status"] == "failed" and cli["rounds_without_update"] == 1


def _update_reply(node: int, cfg: dict, global_sd: dict, metrics: dict, step: float = 0.01) -> Message:
    names, payloads, _ = encode_update({k: torch.zeros_like(v) + step for k, v in global_sd.items()}, "none")
    content = RecordDict(
        {UPDATE_RECORD: ConfigRecord({"names": names, "payloads": payloads}), "metrics": MetricRecord(metrics)}
    )
    return _reply(node, content)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({}, "malformed"),  # no num-examples
        ({"num-examples": float("inf")}, "non_finite"),
        ({"num-examples": 0}, "out_of_range"),
        ({"num-examples": 10**9}, "out_of_range"),  # more than the training set: a bid for a larger weight
        ({"num-examples": 2.5}, "malformed"),
        ({"num-examples": 10, "train-loss": float("nan")}, "non_finite"),
        ({"num-examples": 10, "residual-bytes": -5}, "out_of_range"),
    ],
)
def test_every_fl_reply_field_is_checked_and_a_bad_one_is_never_averaged(metrics: dict, reason: str) -> None:
    cfg = _config(uplink="none", dense_below=0)
    global_sd = build_model(cfg, seed=0).state_dict()
    ours = CompressedFedAvg(cfg)
    ours._global = {k: v.clone() for k, v in global_sd.items()}
    ours.counters.sampled_nodes = [0, 1, 2]  # as configure_train would have set: node 2 never replies
    good = _update_reply(0, cfg, global_sd, {"num-examples": 10, "train-loss": 0.5})
    got, _ = ours.aggregate_train(1, [good, _update_reply(1, cfg, global_sd, metrics)])
    row = ours.round_row()
    assert row["failure_reasons"] == {reason: 1, "timed_out": 1} and row["failed_clients"] == 2
    assert [(f["client"], f["reason"]) for f in ours.failures] == [(1, reason), (2, "timed_out")]
    assert row["aggregated"] == 1 and row["samples"] == 10
    assert got is not None  # the good update alone: global + 0.01 everywhere (floating-point tensors)
    new = got.to_torch_state_dict()
    assert all(torch.allclose(new[k], v + 0.01) for k, v in global_sd.items() if v.is_floating_point())


@pytest.mark.parametrize("bound", [10.0, 0.0])
def test_a_finite_but_huge_update_is_refused_unless_the_bound_is_off(bound: float) -> None:
    cfg = _config(uplink="none", dense_below=0, max_update_norm=bound)
    global_sd = build_model(cfg, seed=0).state_dict()
    ours = CompressedFedAvg(cfg)
    ours._global = {k: v.clone() for k, v in global_sd.items()}
    ours.counters.sampled_nodes = [0, 1]
    good = _update_reply(0, cfg, global_sd, {"num-examples": 10, "train-loss": 0.5})
    huge = _update_reply(1, cfg, global_sd, {"num-examples": 10, "train-loss": 0.5}, step=1e6)  # finite
    got, _ = ours.aggregate_train(1, [good, huge])
    row = ours.round_row()
    new = got.to_torch_state_dict() if got is not None else {}
    floats = [k for k, v in global_sd.items() if v.is_floating_point()]
    if bound:
        assert (row["failure_reasons"], row["aggregated"]) == ({"out_of_range": 1}, 1)
        assert "max_update_norm" in ours.failures[0]["error"]
        assert all(torch.allclose(new[k], global_sd[k] + 0.01) for k in floats)  # the good update alone
        n = sum(global_sd[k].numel() for k in floats)  # the accepted one: 0.01 per weight
        norm = float(torch.cat([global_sd[k].flatten() for k in floats]).norm())
        assert row["update_size_max"] == pytest.approx(0.01 * n**0.5 / (norm + 1), rel=1e-4)
    else:  # no bound: both averaged, as plain FedAvg would
        assert (row["failure_reasons"], row["aggregated"]) == ({}, 2)
        assert all(torch.allclose(new[k], global_sd[k] + (0.01 + 1e6) / 2) for k in floats)
        assert row["update_size_max"] > 1e4


def test_waiting_for_nodes_is_bounded_and_says_how_many_came() -> None:
    from fl_split.errors import TrainingFailed
    from simulations.fl import wait_for_nodes

    class _Grid:
        def get_node_ids(self) -> list[int]:
            return [7, 3]

    assert wait_for_nodes(_Grid(), 2, 1.0) == [3, 7]  # type: ignore[arg-type]
    t0 = time.monotonic()
    with pytest.raises(TrainingFailed, match=r"only 2 of the 5 nodes .*\(clients=5\) .* clients=2"):
        wait_for_nodes(_Grid(), 5, 0.3, poll_s=0.05)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 2.0


@pytest.mark.slow
def test_topk_one_percent_with_error_feedback_stays_within_two_points_of_none(tmp_path: Path) -> None:
    """Digits, 10 IID clients, 30 rounds (the default run) with ``none`` and with ``topk:keep=0.01`` + EF.

    Both runs go through one simulation (one Ray start and one set of actors): its ServerApp runs them
    one after another, each with its own strategy, evaluation and metrics, as ``run_fl`` runs one.
    ``none`` goes first: lossless, it leaves every node's error-feedback residual at exactly zero, which
    is where the top-k run's residuals start in a run of its own.
    """
    from flwr.serverapp import Grid, ServerApp

    from fl_split.metrics import RunWriter
    from simulations.engine import run_flower_simulation
    from simulations.fl import FLRun, _finish
    from simulations.fl_client_app import make_fl_client_app

    runs = {}
    for spec in ("none", "topk:keep=0.01"):
        cfg = _config(uplink=spec, error_feedback=True, out_dir=str(tmp_path / spec.replace(":", "_")))
        runs[spec] = FLRun(cfg, RunWriter(cfg["out_dir"]))
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for run in runs.values():
            run.start(grid)

    flower = runs["none"].config["flower"]
    run_flower_simulation(app, make_fl_client_app(), 10, num_cpus=flower["num_cpus"], num_gpus=flower["num_gpus"])
    acc = {}
    for spec, run in runs.items():
        assert run.writer is not None
        summary = _finish(run.config, run, run.writer, echo=False)
        assert summary["status"] == "completed" and len(run.rows) == 30, spec
        acc[spec] = summary["final_test_accuracy"]
    assert acc["none"] >= 0.95
    assert acc["topk:keep=0.01"] >= acc["none"] - 0.02, acc


def test_scale_benchmark_reports_what_the_issue_asks_for(tmp_path: Path) -> None:
    """A small ``fl-split bench fl scale`` run (the real one is 1000 clients): every field, measured."""
    from simulations.bench_fl import scale_run

    run = scale_run(20, 0.1, 3, tmp_path)
    assert run["completed"] is True and (run["clients"], run["fraction"], run["rounds"]) == (20, 0.1, 3)
    assert run["sampled_per_round"] == 2 and run["s_per_round"] > 0 and run["start_s"] > 0
    assert run["peak_rss_mb"] > 100
    # 2 clients per round, 3 rounds: between 2 and 6 distinct clients hold a float32 residual of the model
    per_client = 4 * sum(v.numel() for v in build_model(_config(), seed=0).state_dict().values()) / 1e6
    assert 2 * per_client * 0.95 <= run["residual_mb"] <= 6 * per_client * 1.05


def test_downlink_compression_sends_the_change_to_nodes_in_sync_and_the_full_model_to_the_others(
    tmp_path: Path,
) -> None:
    """Round 1: everyone gets the full model; partition 2 raises (its copy is not kept), so in round 2 it gets
    the full model again while the others get the compressed change; round 3: everyone gets the change."""
    cfg = _config(clients=4, rounds=3, downlink="ms:keep=0.05,bits=2,signed=true", out_dir=str(tmp_path))
    run_fl(cfg, mods=(RaiseInTrain(partition_id=2, round_=1),))
    r1, r2, r3 = read_metrics(tmp_path / "metrics.jsonl")
    floats = 4 * sum(v.numel() for v in build_model(cfg, seed=0).state_dict().values())  # one model, float32
    full = r1["downlink_bytes"] // 4  # each array as Flower serializes it: its float32 bytes plus an npy header
    assert r1["downlink_bytes"] == 4 * full and floats < full < floats + 160 * 8 and r1["failed_clients"] == 1
    change = r3["downlink_bytes"] / 4
    assert change < full / 5  # signed MS at keep 5 %: about 6.7x smaller than the model
    assert r2["downlink_bytes"] == 3 * change + full and r2["failed_clients"] == 0
    assert (r3["failed_clients"], r3["dropped"]) == (0, 0)
    assert r3["view_bytes"] >= 4 * floats  # each client keeps its float32 copy of the global model


def test_a_node_refuses_a_change_from_a_round_whose_model_it_does_not_hold() -> None:
    cfg = _config(downlink="topk:keep=0.1")
    model_sd = build_model(cfg, seed=0).state_dict()
    context = Context(run_id=0, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    base = {"uplink": cfg["uplink"], "downlink": cfg["downlink"], "error-feedback": False, "dense-below": 1024}
    meta = Metadata(0, "q", 0, 1, "", "1", time.time(), 60, "train")
    first = Message(
        RecordDict(
            {"arrays": ArrayRecord(torch_state_dict=model_sd), "config": ConfigRecord({**base, "server-round": 1})}
        ),
        metadata=meta,
    )
    seen: list[dict[str, torch.Tensor]] = []

    def app(msg: Message, ctx: Context) -> Message:
        seen.append(msg.content.array_records["arrays"].to_torch_state_dict())
        return Message(RecordDict(), metadata=Metadata(0, "r", 1, 0, "q", "1", time.time(), 60, "train"))

    compress_update(first, context, app)
    change = {k: torch.full_like(v, 0.5) for k, v in model_sd.items()}
    names, payloads, _ = encode_update(change, cfg["downlink"], dense_below=1024)
    down = ConfigRecord({"names": names, "payloads": payloads, "base-round": 1})
    second = Message(
        RecordDict({DOWN_RECORD: down, "config": ConfigRecord({**base, "server-round": 2})}), metadata=meta
    )
    compress_update(second, context, app)
    got = seen[-1]
    dec = decode_update(names, payloads, model_sd, cfg["downlink"], dense_below=1024)
    assert all(torch.equal(got[k], model_sd[k] + dec[k]) for k in model_sd)  # the copy advanced by the change
    stale = ConfigRecord({"names": names, "payloads": payloads, "base-round": 5})
    third = Message(
        RecordDict({DOWN_RECORD: stale, "config": ConfigRecord({**base, "server-round": 6})}), metadata=meta
    )
    with pytest.raises(RuntimeError, match="holds the global model of round 2, the server sent a change from round 5"):
        compress_update(third, context, app)


def test_replies_with_different_extra_metrics_are_averaged_not_refused_for_the_round() -> None:
    """Flower's FedAvg refuses a round whose replies differ in metric keys: only checked values go on."""
    cfg = _config(uplink="none", dense_below=0)
    global_sd = build_model(cfg, seed=0).state_dict()
    ours = CompressedFedAvg(cfg)
    ours._global = {k: v.clone() for k, v in global_sd.items()}
    ours.counters.sampled_nodes = [0, 1]
    a = _update_reply(0, cfg, global_sd, {"num-examples": 10, "train-loss": 0.5, "x": 1.0, "y": [1.0, 2.0]})
    b = _update_reply(1, cfg, global_sd, {"num-examples": 30})  # no train-loss
    got, _ = ours.aggregate_train(1, [a, b])
    row = ours.round_row()
    assert got is not None and (row["aggregated"], row["failed_clients"], row["samples"]) == (2, 0, 40)
