"""The ``stream`` transport through the real Flower runtime (Ray virtual clients dialing a real gRPC stream).

Flower carries ``sl_begin`` and each client's last reply; the steps travel over the stream. The
client half lives in ``context.state`` between rounds, as with the ``messages`` transport.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from sl_helpers import (
    MODES,
    history_diff,
    inprocess_twin,
    max_diff,
    oracle_config,
    reference_local_loss,
    run_on_flower,
    small_config,
)

from fl_split.config import ConfigError
from fl_split.sl.faults import BreakStream, PoisonWeights
from simulations.client_app import make_client_app
from simulations.engine import run_flower_simulation
from simulations.server_app import make_server_app
from strategies.split_learning import SplitLearningStrategy

CATEGORIES = ("uplink_activation_bytes", "uplink_label_bytes", "uplink_model_bytes", "downlink_gradient_bytes")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest.py: as the virtual clients


def _flower(config: dict[str, Any], **client: Any) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    run_flower_simulation(make_server_app(strategy), make_client_app(**client), int(config["clients"]))
    return strategy


def test_stream_modes_with_three_clients_equal_the_inprocess_engine() -> None:
    """The three modes over the stream (3 clients, unequal partitions, 2 rounds, one simulation):
    ``sequential`` and ``splitfed1`` equal the in-process engine round by round; ``splitfed2`` keeps
    its invariants. Same payloads, counted the same way; the stream's announcement adds its 32-byte
    token per client and round."""
    configs = [oracle_config(m, engine="flower", transport="stream") for m in MODES]
    # local-loss SL over the stream in the same simulation: every gradient frame is an empty acknowledgement
    local_loss = oracle_config("splitfed1", engine="flower", transport="stream", gradients="local", send_every=2)
    *done, local_run = run_on_flower([*configs, local_loss])
    ref_client, ref_server, _ = reference_local_loss(local_loss, rounds=2)
    assert max_diff(local_run.client_half, ref_client) < 1e-5 and max_diff(local_run.server_half, ref_server) < 1e-5
    assert [(r["steps"], r.get("downlink_gradient_bytes", 0)) for r in local_run.rows] == [(5 + 4 + 3, 0)] * 2
    runs = dict(zip(MODES, done, strict=True))
    for mode, stream in runs.items():
        local = inprocess_twin(stream)
        assert [(r["steps"], r["samples"], r["failed_clients"]) for r in stream.rows] == [(23, 1437, 0)] * 2, mode
        for a, b in zip(stream.rows, local.rows, strict=True):
            assert [a[k] for k in CATEGORIES] == [b[k] for k in CATEGORIES], mode
            assert a["downlink_other_bytes"] == 3 * 32 and a["downlink_bytes"] == b["downlink_bytes"] + 3 * 32
            assert a["stream_refused"] == a["stream_broken"] == 0 and a["stream_s"] > 0
        if mode == "splitfed2":
            assert [r["server_steps"] for r in stream.rows] == [23, 23]
            continue
        assert history_diff(stream.client_history, local.client_history) < 1e-5, mode
        assert history_diff(stream.server_history, local.server_history) < 1e-5, mode


def test_a_stream_that_breaks_mid_round_drops_that_client_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that vanishes mid-round, and one whose done reply (a Flower reply here) holds NaN weights."""
    cfg = small_config(
        engine="flower", transport="stream", clients=3, mode="splitfed2", rounds=2, max_steps_per_round=4
    )
    with caplog.at_level(logging.WARNING):
        strategy = _flower(
            cfg, mods=(PoisonWeights(partition_id=2),), stream_fault=BreakStream(partition_id=1, step=2, round_=1)
        )
    r1, r2 = strategy.rows
    # partition 1 sent 2 batches (both stepped by the server) and vanished when its 2nd gradient came;
    # partition 2 trained 4 and returned NaN weights: not merged
    assert (r1["failed_clients"], r1["dropped"], r1["steps"]) == (2, 2, 4 + 2 + 4)
    assert r1["failure_reasons"].get("non_finite") == 1 and sum(r1["failure_reasons"].values()) == 2
    assert r1["stream_broken"] >= 1 and all(bool(torch.isfinite(t).all()) for t in strategy.client_history[0])
    # the next round samples every node again, and all train
    assert (r2["failed_clients"], r2["dropped"], r2["steps"], r2["clients"]) == (0, 0, 12, 3)
    assert "connection was lost" in caplog.text or "without the client's last frame" in caplog.text


def test_stream_needs_the_flower_engine_and_both_tls_files() -> None:
    with pytest.raises(ConfigError, match=r"transport=stream .* needs engine=flower"):
        small_config(transport="stream")
    with pytest.raises(ConfigError, match=r"both stream.ssl_certfile and stream.ssl_keyfile"):
        small_config(engine="flower", transport="stream", stream={"ssl_certfile": "a.pem"})
