"""The split-learning round protocol with several clients: oracles against training by hand.

Every oracle runs 3 clients with unequal partitions (digits, Dirichlet α = 1: 561, 498 and 378
samples, so whole epochs end in partial batches) for 2 rounds with codec ``none``, and compares
with an independent reference in :mod:`sl_helpers` that trains the unsplit model by hand. A mode
that drops a client's training, starts a client from the wrong half, reuses stale optimizer state
or averages with the wrong weights fails these at 1e-5.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import torch
from sl_helpers import oracle_config, reference_sequential, reference_splitfed

from fl_split.sl.client import BEGIN
from fl_split.sl.protocol import PROTOCOLS, Session, SessionStatus, create_protocol
from fl_split.sl.transport import InProcessTransport, Reply
from fl_split.sl.wire import MOMENTUM, RETURNS, WEIGHTS, decode_tensors
from strategies.split_learning import SplitLearningStrategy

SIZES = [561, 498, 378]  # the partitions of oracle_config(), asserted below


class Recording(InProcessTransport):
    """Records every ``sl_begin`` (node, round, fields) and every done reply."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(n, **kw)
        self.begins: list[tuple[int, int, dict[str, Any]]] = []
        self.done: list[tuple[int, dict[str, Any]]] = []

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        if kind == BEGIN:
            self.begins.append((node_id, round_, fields))
        return super().send(node_id, kind, fields, round_)

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        replies = super().receive(timeout_s)
        self.done += [(r.node_id, r.fields) for r in replies if r.fields and r.fields.get("done")]
        return replies


def _run(config: dict[str, Any], transport: InProcessTransport) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    strategy.start(transport)
    return strategy


def _diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p.float() - q.float()).abs().max()) for p, q in zip(a, b, strict=True))


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.state_dict().values())


def test_sequential_hands_the_half_on_and_equals_centralized_training_in_visiting_order() -> None:
    cfg = oracle_config("sequential")
    transport = Recording(3)
    strategy = _run(cfg, transport)
    assert [r["samples"] for r in strategy.rows] == [sum(SIZES)] * 2
    # the visiting order: a shuffle of the ascending nodes by the run's seeded generator, each round
    rng = random.Random(cfg["seed"])
    orders = [[node for node, rnd, _ in transport.begins if rnd == r] for r in (1, 2)]
    expected = []
    for _ in orders:
        order = [0, 1, 2]
        rng.shuffle(order)
        expected.append(order)
    assert orders == expected and orders[0] != orders[1]
    # each client starts from the half and momentum the previous one returned (the bug: the round's start)
    for (_, _, begin), (_, done) in zip(transport.begins[1:], transport.done[:-1], strict=True):
        assert begin[WEIGHTS] == done[WEIGHTS] and begin[MOMENTUM] == done[MOMENTUM]
        assert begin[RETURNS] == [WEIGHTS, MOMENTUM]
    ref_client, ref_server, history = reference_sequential(cfg, orders)
    for got, want in zip(strategy.client_history, history, strict=True):
        assert _diff(got, want) < 1e-5
    assert _diff(_state(strategy.client_half), _state(ref_client)) < 1e-5
    assert _diff(_state(strategy.server_half), _state(ref_server)) < 1e-5
    # the oracle can fail: the reference in ascending order is a different model
    assert _diff(_state(strategy.client_half), _state(reference_sequential(cfg, [[0, 1, 2]] * 2)[0])) > 1e-3


@pytest.mark.parametrize("mode", ["splitfed1", "splitfed2"])
def test_splitfed_equals_per_client_training_averaged_by_samples(mode: str) -> None:
    cfg = oracle_config(mode)
    transport = Recording(3)
    strategy = _run(cfg, transport)
    assert [r["steps"] for r in strategy.rows] == [9 + 8 + 6] * 2
    assert [r["server_steps"] for r in strategy.rows] == [9 + 8 + 6] * 2
    # every client of a round starts from the same global half, with fresh optimizer state
    for rnd in (1, 2):
        begins = [f for _, r, f in transport.begins if r == rnd]
        assert len(begins) == 3 and all(b[WEIGHTS] == begins[0][WEIGHTS] for b in begins)
        assert all(MOMENTUM not in b and b[RETURNS] == [WEIGHTS] for b in begins)
    assert all(MOMENTUM not in done for _, done in transport.done)  # not asked, not sent
    assert sorted((node, done["samples"]) for node, done in transport.done[:3]) == list(enumerate(SIZES))
    ref_client, ref_server, history = reference_splitfed(cfg, rounds=2)
    for got, want in zip(strategy.client_history, history, strict=True):
        assert _diff(got, want) < 1e-5
    assert _diff(_state(strategy.client_half), _state(ref_client)) < 1e-5
    assert _diff(_state(strategy.server_half), _state(ref_server)) < 1e-5


def test_the_splitfed_oracle_can_fail() -> None:
    """The splitfed references differ from each other, and from equal-weight averaging, by far more than 1e-5."""
    one = reference_splitfed(oracle_config("splitfed1"), rounds=2)
    two = reference_splitfed(oracle_config("splitfed2"), rounds=2)
    assert _diff(_state(one[1]), _state(two[1])) > 1e-3
    strategy = _run(oracle_config("splitfed2", clients=3, partition="shard"), InProcessTransport(3))
    assert _diff(_state(strategy.client_half), _state(two[0])) > 1e-3


def test_a_client_that_fails_in_sequential_mode_hands_nothing_on(caplog: pytest.LogCaptureFixture) -> None:
    """The next client starts from the last half that was returned; the run goes on."""

    class FailSecond(Recording):
        """The second client to visit raises on its first ``sl_step``."""

        def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
            if kind != BEGIN and len(self.begins) == 2 and not self.failed:
                self.failed = True
                self._replies.append(Reply(node_id, None, "RuntimeError: injected", round=round_))
                return {}
            return super().send(node_id, kind, fields, round_)

    cfg = oracle_config("sequential", rounds=1, max_steps_per_round=3)
    transport = FailSecond(3)
    transport.failed = False
    with caplog.at_level(logging.ERROR):
        strategy = _run(cfg, transport)
    first, second, third = (f for _, _, f in transport.begins)
    assert second[WEIGHTS] != first[WEIGHTS]  # the first client's half was handed on
    assert third[WEIGHTS] == second[WEIGHTS] and third[MOMENTUM] == second[MOMENTUM]  # the failed one's was not
    assert strategy.rows[0]["failed_clients"] == 1 and "injected" in caplog.text
    assert strategy.rows[0]["steps"] == 3 + 1 + 3  # the failed client's first batch was stepped by the server


def test_session_states_are_explicit() -> None:
    half = torch.nn.Linear(2, 2)
    session = Session(7, half, torch.optim.SGD(half.parameters(), lr=0.1))
    assert session.active and session.status is SessionStatus.ACTIVE
    session.finish([torch.zeros(1)], [], 5)
    assert session.status is SessionStatus.DONE and session.samples == 5
    with pytest.raises(RuntimeError, match="client 7 is already done"):
        session.fail("late error")
    assert set(PROTOCOLS) == {"sequential", "splitfed1", "splitfed2"}
    with pytest.raises(KeyError, match="unknown split-learning mode 'nope'; known: sequential"):
        create_protocol("nope", half, half, session.optimizer, lambda m: session.optimizer, random.Random(0))


def test_momentum_returned_by_a_sequential_client_is_checked() -> None:
    """A momentum list that does not fit the client half makes that client leave the round."""

    class BadMomentum(InProcessTransport):
        def receive(self, timeout_s: float | None = None) -> list[Reply]:
            replies = super().receive(timeout_s)
            for r in replies:
                if r.fields and r.fields.get("done") and r.node_id == 1:
                    r.fields[MOMENTUM] = r.fields[MOMENTUM][:-1]
            return replies

    strategy = _run(oracle_config("sequential", rounds=1, max_steps_per_round=2), BadMomentum(3))
    assert strategy.rows[0]["failed_clients"] == 1
    good = decode_tensors(strategy.protocol.momentum, list(strategy.client_half.parameters()), "m", allow_missing=True)  # type: ignore[attr-defined]
    assert all(t is not None for t in good)


def test_the_partitions_are_as_the_oracles_assume() -> None:
    from fl_split.sl.setup import client_data

    cfg = oracle_config("splitfed2")
    assert [len(client_data(cfg, p, 3)[1]) for p in range(3)] == SIZES


def test_the_names_external_harnesses_use_stay_importable() -> None:
    """Issue 20's list: harnesses drive the loop through these names."""
    from fl_split.sl.client import BEGIN as begin
    from fl_split.sl.config import load_sl_config
    from fl_split.sl.transport import InProcessTransport as InProcess
    from fl_split.sl.wire import ACTIVATIONS, LABELS
    from fl_split.sl.wire import WEIGHTS as weights
    from strategies.split_learning import SplitLearningStrategy as Strategy

    values = {"engine": "inprocess", "progress": False, "clients": 1, "rounds": 1, "max_steps_per_round": 1}
    cfg = load_sl_config("sl", values=values)
    transport = InProcess(1)
    strategy = Strategy(cfg)
    transport.send(0, begin, strategy.begin_fields(1), 1)
    (reply,) = transport.receive()
    assert reply.fields is not None and set(reply.fields) >= {ACTIVATIONS, LABELS}
    assert weights == "weights" and len(strategy.start(InProcess(1))) == 1
