"""Local-loss split learning (``gradients=local``): each client half trains on its auxiliary head's loss,
the server half on the activations it receives; no gradient goes back.

The oracle is training by hand (:func:`sl_helpers.reference_local_loss`): the client half and its head
trained centrally on the local loss, the server half trained centrally on the activations the client
half produced. In process with three clients and unequal partitions in every mode, and through Flower's
runtime with one client.
"""

from __future__ import annotations

import pytest
import torch
from sl_helpers import MODES, history_diff, max_diff, oracle_config, reference_local_loss, run_on_flower, small_config

from fl_split.config import ConfigError
from fl_split.data import dataset_info
from fl_split.models.aux_heads import WithAuxHead, build_aux_head, resolve_aux_head
from fl_split.sl.config import SLClientTask
from fl_split.sl.loop import _check_local_counts
from fl_split.sl.protocol import Session
from fl_split.sl.setup import build_sl_halves
from fl_split.sl.transport import InProcessTransport
from fl_split.validate import BadReply
from strategies.split_learning import SplitLearningStrategy

LOCAL = {"gradients": "local"}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest.py: as the virtual clients


def _run(config: dict) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    strategy.start(InProcessTransport(int(config["clients"])))
    return strategy


def _orders(strategy: SplitLearningStrategy) -> list[list[int]]:
    """The sequential visiting order per round, as the run drew it (from its seeded generator)."""
    import random

    rng = random.Random(int(strategy.config.seed))
    orders = []
    for _ in range(int(strategy.config.rounds)):  # a shuffle of the ascending nodes, each round
        order = list(range(int(strategy.config.clients)))
        rng.shuffle(order)
        orders.append(order)
    return orders


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("every", [1, 3])
def test_three_unequal_clients_equal_training_by_hand(mode: str, every: int) -> None:
    """3 clients (561, 498 and 378 samples), 2 rounds of whole epochs, codec none: both halves and the
    heads equal the reference to 1e-5 after every round, and the server sent no gradient byte."""
    cfg = oracle_config(mode, **LOCAL, send_every=every)
    run = _run(cfg)
    orders = _orders(run) if mode == "sequential" else None
    ref_client, ref_server, history = reference_local_loss(cfg, rounds=2, orders=orders)
    assert isinstance(run.client_half, WithAuxHead)
    assert max_diff(run.client_half, ref_client) < 1e-5, mode
    assert max_diff(run.server_half, ref_server) < 1e-5, mode
    assert history_diff(run.client_history, history) < 1e-5
    assert history_diff(run.client_history[:1], run.client_history[1:]) > 1e-3  # the second round trained
    # batches per client and round: ceil(561/64), ceil(498/64), ceil(378/64) = 9, 8, 6; sent: every h-th
    expected = sum(-(-b // every) for b in (9, 8, 6))
    for row in run.rows:
        assert row["steps"] == expected, (mode, every, row["steps"])
        assert row.get("downlink_gradient_bytes", 0) == 0
        assert row["failed_clients"] == 0
        assert row["uplink_activation_bytes"] > 0


def test_sending_every_third_batch_sends_a_third_of_the_activation_bytes() -> None:
    rows = {}
    for every in (1, 3):
        rows[every] = _run(small_config(**LOCAL, uplink="none", send_every=every, max_steps_per_round=9)).rows[0]
    assert rows[1]["steps"] == 9 and rows[3]["steps"] == 3
    assert rows[3]["uplink_activation_bytes"] * 3 == rows[1]["uplink_activation_bytes"]
    assert rows[3]["samples"] * 3 == rows[1]["samples"]


def test_local_loss_sends_no_gradient_where_server_sl_sends_the_dense_one() -> None:
    server = _run(small_config(uplink="none", max_steps_per_round=5)).rows[0]
    local = _run(small_config(**LOCAL, uplink="none", max_steps_per_round=5)).rows[0]
    assert server["downlink_gradient_bytes"] == server["uplink_activation_bytes"] > 0  # dense float32 both ways
    assert local.get("downlink_gradient_bytes", 0) == 0
    assert local["uplink_activation_bytes"] == server["uplink_activation_bytes"]
    # the head's weights travel with the half: more model bytes each way
    assert local["downlink_model_bytes"] > server["downlink_model_bytes"]


def test_local_loss_learns_digits_with_ms() -> None:
    run = _run(small_config(**LOCAL, clients=4, rounds=3))
    assert run.rows[-1]["test_accuracy"] > 0.85, [r["test_accuracy"] for r in run.rows]


def test_through_flower_one_client_equals_training_by_hand() -> None:
    """One client through Flower's runtime (the half and its head live in ``context.state`` between
    messages): splitfed2 sending every batch, and sequential sending every third, two batches per message."""
    configs = [
        small_config(
            engine="flower",
            **LOCAL,
            uplink="none",
            rounds=2,
            max_steps_per_round=7,
            flower={"engine_wait_ms": 2.0},
            **extra,
        )
        for extra in ({"mode": "splitfed2"}, {"mode": "sequential", "send_every": 3, "batches_per_message": 2})
    ]
    runs = run_on_flower(configs)
    for run, cfg in zip(runs, configs, strict=True):
        ref_client, ref_server, history = reference_local_loss(cfg, rounds=2, orders=[[0], [0]])
        assert max_diff(run.client_half, ref_client) < 1e-5, cfg["mode"]
        assert max_diff(run.server_half, ref_server) < 1e-5, cfg["mode"]
        assert history_diff(run.client_history, history) < 1e-5
        assert all(r.get("downlink_gradient_bytes", 0) == 0 and r["failed_clients"] == 0 for r in run.rows)


# ----------------------------------------------------------------------------- configuration and heads


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({**LOCAL, "downlink": "quant:bits=2"}, "sends no gradient back"),
        ({"send_every": 2}, "set gradients=local"),
        ({"aux_head": "mlp"}, "set gradients=local"),
        ({**LOCAL, "aux_head": "conv"}, "auto or one of linear, pool, mlp"),
        ({**LOCAL, "send_every": 0}, "send_every"),
    ],
)
def test_inconsistent_local_loss_keys_are_refused_up_front(values: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        small_config(**values)


def test_the_client_task_carries_the_local_loss_keys() -> None:
    task = SLClientTask.of(small_config(**LOCAL, send_every=2, aux_head="mlp"))
    assert (task.gradients, task.send_every, task.aux_head) == ("local", 2, "mlp")


@pytest.mark.parametrize(
    ("shape", "name", "resolved", "weights"),
    [
        ((64, 16, 16), "auto", "pool", 64 * 4 * 10 + 10),
        ((64, 40), "auto", "pool", 64 * 4 * 10 + 10),
        ((128,), "auto", "linear", 128 * 10 + 10),
        ((64, 16, 16), "linear", "linear", 64 * 256 * 10 + 10),
        ((64, 16, 16), "mlp", "mlp", 256 * 128 + 128 + 128 * 10 + 10),
    ],
)
def test_aux_heads_map_activations_to_logits(shape: tuple, name: str, resolved: str, weights: int) -> None:
    assert resolve_aux_head(name, shape) == resolved
    head = build_aux_head(name, shape, 10, seed=0)
    assert tuple(head(torch.zeros(2, *shape)).shape) == (2, 10)
    assert sum(p.numel() for p in head.parameters()) == weights
    same = build_aux_head(name, shape, 10, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), same.state_dict().values(), strict=True))


def test_the_client_module_forwards_the_half_and_lists_the_head_last() -> None:
    cfg = small_config(**LOCAL)
    client, _ = build_sl_halves(cfg, seed=0)
    plain, _ = build_sl_halves(small_config(), seed=0)
    assert isinstance(client, WithAuxHead)
    x = torch.randn(3, *dataset_info("digits").input_shape)
    assert torch.equal(client(x), plain(x))  # the same half, the same init
    names = list(client.state_dict())
    assert names[0].startswith("body.") and names[-1].startswith("head.")


def test_a_done_reply_with_counts_the_server_did_not_see_is_refused() -> None:
    cfg = small_config(**LOCAL, send_every=3)
    session = Session(node=0, server=torch.nn.Linear(1, 1), optimizer=torch.optim.SGD([torch.zeros(1)], lr=0.1))
    session.steps, session.trained = 3, 3 * 32  # it sent 3 batches: it trained 7, 8 or 9
    for steps in (7, 8, 9):
        _check_local_counts(steps * 32, steps, session, cfg)
    for samples, steps in ((10 * 32, 10), (6 * 32, 6), (9 * 33, 9), (8, 9)):
        with pytest.raises(BadReply, match="not the 3 batches"):
            _check_local_counts(samples, steps, session, cfg)


def test_the_run_line_says_no_gradient_goes_down() -> None:
    from fl_split.sl.loop import describe

    line = describe(small_config(**LOCAL, send_every=4))
    assert line.endswith("up ms:keep=0.01,bits=2, local loss (auto head), no gradient down, activations every 4")
    assert describe(small_config()).endswith("up ms:keep=0.01,bits=2, down none")


def test_a_local_client_may_send_only_every_hth_batch_of_the_largest_plan() -> None:
    """The server's cap on a round's batches counts every ``send_every``-th: a client that sends every
    batch (to weigh more in FedAvg) leaves the round before it can."""
    from fl_split.sl.loop import SplitLearningLoop

    plain = SplitLearningLoop(small_config(max_steps_per_round=9))
    local = SplitLearningLoop(small_config(**LOCAL, send_every=4, max_steps_per_round=9))
    assert (plain.max_batches, local.max_batches) == (9, 3)


def test_done_counts_must_cover_the_samples_the_server_received() -> None:
    cfg = small_config(**LOCAL, send_every=2, batch_size=32)
    session = Session(node=0, server=torch.nn.Linear(1, 1), optimizer=torch.optim.SGD([torch.zeros(1)], lr=0.1))
    session.steps, session.trained = 2, 64  # two batches of 32 received: it trained 3 or 4
    _check_local_counts(64 + 32, 3, session, cfg)
    _check_local_counts(64 + 20, 3, session, cfg)  # a short unsent last batch
    for samples in (63, 64 + 33):  # fewer than it sent; more than one batch beyond it
        with pytest.raises(BadReply):
            _check_local_counts(samples, 3, session, cfg)
