"""Split learning on the in-process engine: exactness, modes, k batches per message, downlinks, faults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from sl_helpers import centralized, max_diff, small_config

from fl_split.codecs import CodecError, create_codec
from fl_split.metrics import ROUND_KEYS, read_metrics
from fl_split.sl.client import BEGIN, STEP, ClientRound, ClientState, client_handle
from fl_split.sl.loop import RoundCounters
from fl_split.sl.transport import InProcessTransport, Reply
from fl_split.sl.wire import decode_labels, encode_labels, field_nbytes
from simulations.sl import run_sl
from strategies.split_learning import SplitLearningStrategy


def _run(config: dict, transport: InProcessTransport | None = None) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    strategy.start(transport or InProcessTransport(int(config["clients"])))
    return strategy


@pytest.mark.parametrize("batch_size", [64, 100])  # 100: the last batch of the epoch is partial (1437 = 14·100 + 37)
def test_sequential_codec_none_equals_centralized_training(batch_size: int) -> None:
    cfg = small_config(uplink="none", mode="sequential", batch_size=batch_size, rounds=2, max_steps_per_round=9)
    strategy = _run(cfg)
    ref_client, ref_server = centralized(cfg, steps_per_round=9, rounds=2)
    assert strategy.rows[-1]["steps"] == 9
    assert max_diff(strategy.client_half, ref_client) < 1e-5
    assert max_diff(strategy.server_half, ref_server) < 1e-5
    # and training really moved both halves
    assert max_diff(strategy.client_half, centralized(cfg, 0, 0)[0]) > 1e-3


def test_whole_epoch_exactness_with_partial_last_batch() -> None:
    cfg = small_config(uplink="none", mode="splitfed2", batch_size=100, rounds=1)
    strategy = _run(cfg)
    ref_client, ref_server = centralized(cfg, steps_per_round=15, rounds=1)
    assert strategy.rows[0]["steps"] == 15 and strategy.rows[0]["samples"] == 1437
    assert max_diff(strategy.client_half, ref_client) < 1e-5
    assert max_diff(strategy.server_half, ref_server) < 1e-5


@pytest.mark.parametrize("mode", ["sequential", "splitfed1", "splitfed2"])
def test_every_mode_learns_with_ms(mode: str, tmp_path: Path) -> None:
    # measured at round 2, lr 0.05, seeds 0/1: sequential 0.931/0.950, splitfed2 0.947/0.925. splitfed1
    # averages both halves and restarts their momentum every round: 0.58-0.73 after 2 rounds of 1 local
    # epoch, 0.87-0.94 (seeds 0-2) with 2 local epochs, which it gets here
    epochs = 2 if mode == "splitfed1" else 1
    cfg = small_config(
        mode=mode, clients=4, rounds=2, local_epochs=epochs, out_dir=str(tmp_path), optimizer={"lr": 0.05}
    )
    summary = run_sl(cfg)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(k in rows[0] for k in ROUND_KEYS)
    assert rows[-1]["samples"] == 1437 * epochs and rows[-1]["dropped"] == 0
    assert summary["final_test_accuracy"] > 0.8, summary
    assert rows[-1]["cum_uplink_bytes"] == rows[0]["uplink_bytes"] + rows[1]["uplink_bytes"]
    assert (tmp_path / "accuracy_vs_mb.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["config"]["mode"] == mode and saved["versions"]["flwr"] == "1.42.0"


def test_uplink_bytes_are_the_payloads_put_in_messages() -> None:
    cfg = small_config(rounds=1, max_steps_per_round=3)
    strategy = _run(cfg)
    row = strategy.rows[0]
    # recompute the three activation payloads the client sent: MS at keep 0.01, 2 bits, batch 32 × 64×16×16
    ms = create_codec("ms", keep=0.01, bits=2)
    x = torch.relu(torch.randn(32, 64, 16, 16))
    assert row["uplink_activation_bytes"] == 3 * len(ms.encode(x))
    assert row["uplink_label_bytes"] == 3 * len(encode_labels(torch.zeros(32, dtype=torch.long), 10))
    none_grad = len(create_codec("none").encode(x))
    assert row["downlink_gradient_bytes"] == 3 * none_grad
    assert row["uplink_bytes"] == row["uplink_activation_bytes"] + row["uplink_label_bytes"] + row["uplink_model_bytes"]
    assert row["downlink_bytes"] == row["downlink_gradient_bytes"] + row["downlink_model_bytes"]


def test_batches_per_message_cuts_messages_and_k1_matches_exact() -> None:
    cfg1 = small_config(uplink="none", batch_size=64, rounds=1, max_steps_per_round=8)
    cfg4 = small_config(uplink="none", batch_size=64, rounds=1, max_steps_per_round=8, batches_per_message=4)
    sent: dict[int, int] = {}
    for k, cfg in ((1, cfg1), (4, cfg4)):
        transport = InProcessTransport(1)
        calls = []
        original = transport.send

        def counting_send(node: int, kind: str, fields: dict, rnd: int, _orig=original, _calls=calls) -> dict:
            _calls.append(kind)
            return _orig(node, kind, fields, rnd)

        transport.send = counting_send  # type: ignore[method-assign]
        strategy = _run(cfg, transport)
        sent[k] = len(calls)
        assert strategy.rows[0]["steps"] == 8
    assert sent == {1: 9, 4: 3}  # begin + one message per k batches (the last one returns the weights)
    ref_client, _ = centralized(cfg1, 8, 1)
    exact = _run(cfg1)
    stale = _run(cfg4)
    assert max_diff(exact.client_half, ref_client) < 1e-5
    assert max_diff(stale.client_half, ref_client) > 1e-4  # k = 4: activations up to 3 client steps stale


def test_mask_downlink_sends_gradient_only_at_kept_positions() -> None:
    dense = _run(small_config(rounds=1, max_steps_per_round=4, uplink="topk:keep=0.05"))
    mask = _run(small_config(rounds=1, max_steps_per_round=4, uplink="topk:keep=0.05", downlink="mask"))
    d, m = dense.rows[0], mask.rows[0]
    assert d["uplink_activation_bytes"] == m["uplink_activation_bytes"]
    # 5 % of the 32·64·16·16 float32 gradient values, plus a none-codec header per batch
    k = int(0.05 * 32 * 64 * 16 * 16)
    assert m["downlink_gradient_bytes"] == 4 * len(create_codec("none").encode(torch.zeros(k)))
    assert m["downlink_gradient_bytes"] < d["downlink_gradient_bytes"] / 15
    learned = _run(small_config(rounds=2, uplink="topk:keep=0.05", downlink="mask"))
    assert learned.rows[-1]["test_accuracy"] > 0.8


def test_mask_downlink_equals_dense_gradient_masked() -> None:
    """One step by hand: the mask payload decodes to the dense gradient zeroed off the uplink's support."""
    from fl_split.sl.wire import decode_masked

    grads = {}
    for downlink in ("none", "mask"):
        cfg = small_config(rounds=1, max_steps_per_round=1, uplink="ms:keep=0.01,bits=2", downlink=downlink)
        strategy = SplitLearningStrategy(cfg)
        transport = InProcessTransport(1)
        transport.send(0, "sl_begin", strategy.begin_fields(1), 1)
        (reply,) = transport.receive()
        assert reply.fields is not None
        act, labels = reply.fields["acts"][0], reply.fields["labels"][0]
        (grads[downlink],) = strategy._step([(strategy.protocol.session(0), act, labels)], 1, _counters())
    support = create_codec("ms").support(act)
    assert int(support.sum()) == int(0.01 * support.numel())
    dense = create_codec("none").decode(grads["none"])
    masked = decode_masked(grads["mask"], support)
    assert torch.equal(masked, torch.where(support, dense, torch.zeros(())))
    assert len(grads["mask"]) < len(grads["none"]) / 90
    with pytest.raises(CodecError, match="kept positions"):
        decode_masked(grads["mask"], torch.ones_like(support))


def _counters() -> RoundCounters:
    return RoundCounters()


def test_labels_wire_round_trip_and_errors() -> None:
    y = torch.tensor([0, 9, 3, 3])
    p = encode_labels(y, 10)
    assert len(p) == 8 + 4 and torch.equal(decode_labels(p, 10, 4), y)
    assert len(encode_labels(torch.tensor([999]), 1000)) == 8 + 2
    with pytest.raises(CodecError, match="outside"):
        decode_labels(p, 5)
    with pytest.raises(CodecError, match="holds"):
        decode_labels(p[:-1], 10)
    with pytest.raises(CodecError, match="batch of 3"):
        decode_labels(p, 10, 3)
    assert field_nbytes({"acts": [b"ab", b"c"], "labels": [p], "done": False}) == {"activation": 3, "label": 12}


class _FaultyTransport(InProcessTransport):
    """Corrupts client 1's second step reply and makes client 2 raise on its third message."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.seen: dict[int, int] = {}

    def send(self, node_id: int, kind: str, fields: dict, round_: int) -> dict[str, int]:
        self.seen[node_id] = self.seen.get(node_id, 0) + 1
        if node_id == 2 and self.seen[node_id] == 3:
            self._replies.append(Reply(node_id, None, "RuntimeError: injected", round=round_))
            return field_nbytes(fields)
        nbytes = super().send(node_id, kind, fields, round_)
        if node_id == 1 and self.seen[node_id] == 2:
            reply = self._replies[-1]
            assert reply.fields is not None
            reply.fields["acts"][0] = reply.fields["acts"][0][:40]
        return nbytes


def test_bad_payload_drops_the_client_for_the_round_and_failing_client_does_not_stop_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = small_config(clients=3, rounds=2, mode="splitfed2")
    with caplog.at_level(logging.ERROR):
        strategy = _run(cfg, _FaultyTransport(3))
    r1, r2 = strategy.rows
    assert r1["dropped"] == 2  # client 1's corrupted step + client 2's failure
    assert r1["failed_clients"] == 2 and r1["failure_reasons"] == {"malformed": 1, "raised": 1}
    assert r2["dropped"] == 0 and r2["failed_clients"] == 0
    assert "client 1 sent a batch the server cannot use" in caplog.text and "client 2 RuntimeError" in caplog.text
    # 15 batches per client: client 0 all; client 1 its first (its second did not decode: it left);
    # client 2's server side stepped the two batches it sent before raising on its third message
    assert r1["steps"] == 15 + 1 + 2
    assert r2["steps"] == 3 * 15 and r2["test_accuracy"] > 0.8


def test_client_step_before_begin_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="sl_step before sl_begin"):
        client_handle(STEP, {"grads": []}, None, 0, 1)
    with pytest.raises(ValueError, match="unknown split-learning message"):
        client_handle("sl_nope", {}, ClientState(config="{}"), 0, 1)


class _LateReplyTransport(InProcessTransport):
    """Delivers a stale copy of client 0's first reply (round 1) again in round 2."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.first: Reply | None = None

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        replies = super().receive(timeout_s)
        if self.first is None:
            self.first = replies[0]
        elif replies[0].round == 2:
            replies.insert(0, self.first)
        return replies


def test_a_late_reply_from_an_earlier_round_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    cfg = small_config(clients=1, rounds=2, max_steps_per_round=2)
    with caplog.at_level(logging.WARNING):
        strategy = _run(cfg, _LateReplyTransport(1))
    assert [r["steps"] for r in strategy.rows] == [2, 2]
    assert "ignoring a late reply from client 0 (round 1)" in caplog.text


@pytest.mark.slow
def test_default_config_reaches_095_in_process(tmp_path: Path) -> None:
    """The README's first command (conf/sl.yaml) on the in-process engine: same steps, final accuracy >= 0.95."""
    from fl_split.sl.config import load_sl_config

    cfg = load_sl_config("sl", ["engine=inprocess", "progress=false", f"out_dir={tmp_path}"])
    assert (cfg["clients"], cfg["uplink"], cfg["cut"], cfg["dataset"]) == (
        10,
        "ms:keep=0.01,bits=2",
        "shallow",
        "digits",
    )
    summary = run_sl(cfg)
    assert summary["final_test_accuracy"] >= 0.95, summary


def test_divergence_stops_the_run_with_a_summary(tmp_path: Path) -> None:
    from strategies.split_learning import TrainingFailed

    cfg = small_config(rounds=3, max_steps_per_round=5, uplink="none", out_dir=str(tmp_path), optimizer={"lr": 1000.0})
    with pytest.raises(TrainingFailed, match="round 1: no client finished"):
        run_sl(cfg)  # the client's activations blow past the codec's input bound
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "exceeds the supported" in summary["error"]


def test_non_finite_weights_after_a_round_say_to_lower_the_lr() -> None:
    from strategies.split_learning import TrainingFailed

    strategy = SplitLearningStrategy(small_config())
    with torch.no_grad():
        next(strategy.server_half.parameters())[0] = float("nan")
    with pytest.raises(
        TrainingFailed, match=r"diverged in round 4: the server half .* lower optimizer.lr \(now 0.02\)"
    ):
        strategy._check_finite(4, RoundCounters())


def test_a_round_where_every_client_fails_stops_the_run() -> None:
    from strategies.split_learning import TrainingFailed

    class _AllFail(InProcessTransport):
        def send(self, node_id: int, kind: str, fields: dict, round_: int) -> dict[str, int]:
            self._replies.append(Reply(node_id, None, "RuntimeError: disk full", round=round_))
            return {}

    with pytest.raises(
        TrainingFailed, match=r"no client finished \(2 failed: 2 raised\); first error: client 0: RuntimeError: disk"
    ):
        _run(small_config(clients=2), _AllFail(2))


def test_any_codec_on_the_downlink_is_measured() -> None:
    dense = _run(small_config(max_steps_per_round=3, uplink="none"))
    half = _run(small_config(max_steps_per_round=3, uplink="none", downlink="fp16"))
    d, h = dense.rows[0]["downlink_gradient_bytes"], half.rows[0]["downlink_gradient_bytes"]
    header = len(create_codec("fp16").encode(torch.zeros(32, 64, 16, 16))) - 2 * 32 * 64 * 16 * 16
    assert h == 3 * (2 * 32 * 64 * 16 * 16 + header) and d > 1.99 * h


def test_fraction_samples_clients_per_round() -> None:
    strategy = _run(small_config(clients=4, fraction=0.5, rounds=3, max_steps_per_round=1))
    assert [r["clients"] for r in strategy.rows] == [2, 2, 2]
    assert [r["steps"] for r in strategy.rows] == [2, 2, 2]


def test_a_non_finite_server_loss_stops_the_run_with_advice() -> None:
    from fl_split.sl.server import NonFiniteLoss, server_step
    from strategies.split_learning import TrainingFailed

    strategy = SplitLearningStrategy(small_config(uplink="none"))
    with torch.no_grad():
        next(strategy.server_half.parameters()).fill_(float("inf"))  # as if it had diverged
    act = create_codec("none").encode(torch.ones(2, 64, 16, 16))
    labels = encode_labels(torch.tensor([1, 2]), 10)
    kwargs = {"uplink": strategy.uplink, "downlink": strategy.downlink, "num_classes": 10}
    with pytest.raises(NonFiniteLoss, match="loss is"):
        server_step(
            strategy.server_half,
            strategy.server_optimizer,
            act,
            labels,
            **kwargs,
            sample_shape=(64, 16, 16),
            max_batch=32,
        )
    session = strategy.protocol.session(0)
    with pytest.raises(TrainingFailed, match=r"diverged in round 3 on a batch of client 0: .*lower optimizer.lr"):
        strategy._step([(session, act, labels)], 3, _counters())


@pytest.mark.parametrize("k", [1, 2])
def test_batchnorm_model_trains_and_k1_equals_centralized(k: int) -> None:
    """ResNet18 (BatchNorm in the client half): the recomputed forward must not update BN statistics twice.

    On digits (1x16x16): the same BatchNorm code path as on CIFAR-shaped inputs, with a quarter of the pixels
    and 360 test images to evaluate instead of 1000 (the evaluation was most of this test's time).
    """
    cfg = small_config(
        dataset="digits",
        model="resnet18",
        uplink="none",
        mode="sequential",
        batch_size=8,
        rounds=1,
        max_steps_per_round=3,
        batches_per_message=k,
    )
    strategy = _run(cfg)
    assert strategy.rows[0]["steps"] == 3
    tracked = [t for n, t in strategy.client_half.state_dict().items() if n.endswith("num_batches_tracked")]
    assert [int(t) for t in tracked] == [3]  # three batches, counted once each
    if k == 1:  # the centralized reference only for exact vanilla SL (k > 1 applies stale gradients)
        ref_client, ref_server = centralized(cfg, steps_per_round=3, rounds=1)
        assert max_diff(strategy.client_half, ref_client) < 1e-5  # weights and BN running statistics
        assert max_diff(strategy.server_half, ref_server) < 1e-5


def test_client_round_keeps_the_half_live_and_equals_client_handle_byte_for_byte() -> None:
    """The stream transport's client (state written once per round) makes the same payloads and weights
    as the message transport's (state written after every step), with momentum and BatchNorm-free digits."""
    cfg = small_config(mode="sequential", max_steps_per_round=5, batches_per_message=2)
    begin = SplitLearningStrategy(cfg).begin_fields(1)
    state, reply = client_handle(BEGIN, begin, None, 0, 1)
    live = ClientRound(begin, None, 0, 1)
    none = create_codec("none")
    assert live.first_reply["acts"] == reply["acts"]
    steps = 0
    while True:
        shape = cfg["batch_size"], 64, 16, 16
        grads = {"grads": [none.encode(torch.full(shape, 0.01 * (steps + j + 1))) for j in range(len(reply["acts"]))]}
        state, reply = client_handle(STEP, grads, state, 0, 1)
        got = live.step(grads)
        steps += 1
        assert got["done"] == reply["done"]
        if reply["done"]:
            break
        assert got["acts"] == reply["acts"] and got["labels"] == reply["labels"]
    assert steps == 3  # 5 batches at k = 2: 2 + 2 + 1
    assert got["weights"] == reply["weights"] and got["momentum"] == reply["momentum"]
    assert (got["steps"], got["samples"]) == (reply["steps"], reply["samples"]) == (5, 5 * cfg["batch_size"])
    assert live.state.to_fields() == state.to_fields()
