"""Split learning through the real Flower runtime (simulation engine, Ray virtual clients).

These tests cross real message boundaries: the client half lives only in ``context.state``
between messages, so if it were lost the client half would never train and these would fail.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from sl_helpers import MODES, history_diff, inprocess_twin, oracle_config, run_on_flower, small_config

from fl_split.sl.faults import CorruptUplink, PoisonWeights, RaiseOnStep
from simulations.client_app import make_client_app
from simulations.engine import run_flower_simulation
from simulations.server_app import make_server_app
from strategies.split_learning import SplitLearningStrategy

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest.py: as the virtual clients


def _flower(config: dict[str, Any], mods: tuple = ()) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    wait = config["flower"]["engine_wait_ms"]
    run_flower_simulation(make_server_app(strategy), make_client_app(mods), int(config["clients"]), engine_wait_ms=wait)
    return strategy


def test_flower_modes_with_three_clients_equal_the_inprocess_engine() -> None:
    """3 clients, unequal partitions, 2 rounds, through Flower's runtime (one simulation, three runs).

    ``sequential`` and ``splitfed1`` equal the in-process engine (itself equal to training by hand,
    tests/test_sl_protocol.py) round by round; ``splitfed2``'s arrival order varies, so it keeps
    its invariants: the same bytes, one server step per batch, every sample once per epoch.
    """
    configs = [oracle_config(m, engine="flower", flower={"engine_wait_ms": 2.0}) for m in MODES]
    runs = dict(zip(MODES, run_on_flower(configs), strict=True))
    for mode, flower in runs.items():
        local = inprocess_twin(flower)
        assert [r["steps"] for r in flower.rows] == [r["steps"] for r in local.rows] == [23, 23], mode
        assert [r["samples"] for r in flower.rows] == [1437, 1437] and all(
            r["failed_clients"] == 0 for r in flower.rows
        )
        for a, b in zip(flower.rows, local.rows, strict=True):  # the same measured bytes on both engines
            assert (a["uplink_bytes"], a["downlink_bytes"]) == (b["uplink_bytes"], b["downlink_bytes"]), mode
        if mode == "splitfed2":
            assert [r["server_steps"] for r in flower.rows] == [23, 23]
            continue
        # the halves crossed the message boundaries each round and equal the in-process run's
        assert history_diff(flower.client_history, local.client_history) < 1e-5, mode
        assert history_diff(flower.server_history, local.server_history) < 1e-5, mode
        assert history_diff(flower.client_history[:1], flower.client_history[1:]) > 1e-3


def test_flower_run_survives_a_bad_payload_a_raising_client_and_poisoned_weights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Also runs, through the real runtime, the engine with the shortened wait (``flower.engine_wait_ms``)
    and server batching: a client whose batch does not decode leaves the round, the others in its
    group are stepped; a client whose done reply carries NaN weights is not merged."""
    cfg = small_config(
        engine="flower",
        clients=4,
        mode="splitfed2",
        rounds=2,
        max_steps_per_round=4,
        server_batching=True,
        flower={"engine_wait_ms": 2.0},
    )
    mods = (CorruptUplink(partition_id=1, nth=2), RaiseOnStep(partition_id=2, nth=2), PoisonWeights(partition_id=3))
    with caplog.at_level(logging.ERROR):
        strategy = _flower(cfg, mods=mods)
    r1, r2 = strategy.rows
    assert r1["failed_clients"] == 3 and r1["failure_reasons"] == {"malformed": 1, "non_finite": 1, "raised": 1}
    # partition 0: 4 steps; partition 1: 2 (the reply to its 2nd sl_step, batch 3, did not decode: it
    # left); partition 2: 2 batches stepped before it raised; partition 3: 4 steps, then NaN weights
    assert r1["steps"] == 4 + 2 + 2 + 4 and r1["dropped"] == 3
    assert all(bool(torch.isfinite(t).all()) for t in strategy.client_history[0])
    assert r2["dropped"] == 0 and r2["failed_clients"] == 0 and r2["steps"] == 16
    # replies that arrive in one pull share a server step: never more server steps than batches
    assert 4 <= r2["server_steps"] <= 16 and r1["server_steps"] <= r1["steps"]
    assert "cannot use" in caplog.text and "injected fault in partition 2" in caplog.text
    assert "NaN/Inf" in caplog.text


def test_ray_start_is_retried_when_it_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from simulations import engine

    calls: list[dict] = []

    def flaky_init(**kwargs: object) -> None:
        calls.append(kwargs)
        if len(calls) < 3:
            raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(engine, "RAY_START_PAUSE_S", 0.0)
    engine.start_ray({"num_cpus": 1})
    assert len(calls) == 3 and calls[-1]["num_cpus"] == 1 and "PYTHONPATH" in calls[-1]["runtime_env"]["env_vars"]
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(RuntimeError("Timed out waiting")))
    with pytest.raises(RuntimeError, match=r"did not start in 2 tries: Timed out waiting"):
        engine.start_ray({}, attempts=2)
