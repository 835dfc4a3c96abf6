"""The ``stream`` transport through the real Flower runtime (Ray virtual clients dialing a real gRPC stream).

Flower carries ``sl_begin`` and each client's last reply; the steps travel over the stream. The
client half lives in ``context.state`` between rounds, as with the ``messages`` transport.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sl_helpers import centralized, max_diff, small_config

from fl_split.config import ConfigError
from fl_split.sl.faults import BreakStream
from fl_split.sl.transport import InProcessTransport
from simulations.client_app import make_client_app
from simulations.engine import run_flower_simulation
from simulations.server_app import make_server_app
from strategies.split_learning import SplitLearningStrategy

CATEGORIES = ("uplink_activation_bytes", "uplink_label_bytes", "uplink_model_bytes", "downlink_gradient_bytes")


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Ray runs each virtual client with one intra-op thread; match it (see test_sl_flower.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _flower(config: dict[str, Any], **client: Any) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    run_flower_simulation(make_server_app(strategy), make_client_app(**client), int(config["clients"]))
    return strategy


def test_stream_sequential_k1_equals_inprocess_and_centralized() -> None:
    cfg = small_config(
        engine="flower", transport="stream", uplink="none", mode="sequential", batch_size=64, rounds=2,
        max_steps_per_round=6,
    )  # fmt: skip
    stream = _flower(cfg)
    local = SplitLearningStrategy({**cfg, "engine": "inprocess", "transport": "messages"}, keep_history=True)
    local.start(InProcessTransport(1))
    assert [r["steps"] for r in stream.rows] == [6, 6]
    for got, want in zip(stream.client_history, local.client_history, strict=True):
        assert max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)) < 1e-5
    assert max_diff(stream.server_half, local.server_half) < 1e-5
    ref_client, ref_server = centralized(cfg, steps_per_round=6, rounds=2)
    assert max_diff(stream.client_half, ref_client) < 1e-5
    assert max_diff(stream.server_half, ref_server) < 1e-5
    for a, b in zip(stream.rows, local.rows, strict=True):
        # the same payloads, counted the same way; the stream's announcement is its 32-byte token
        assert [a[k] for k in CATEGORIES] == [b[k] for k in CATEGORIES]
        assert a["downlink_other_bytes"] == 32 and a["downlink_bytes"] == b["downlink_bytes"] + 32
        assert a["stream_refused"] == a["stream_broken"] == 0 and a["stream_s"] > 0


def test_a_stream_that_breaks_mid_round_drops_that_client_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = small_config(
        engine="flower", transport="stream", clients=3, mode="splitfed2", rounds=2, max_steps_per_round=4
    )
    with caplog.at_level(logging.WARNING):
        strategy = _flower(cfg, stream_fault=BreakStream(partition_id=1, step=2, round_=1))
    r1, r2 = strategy.rows
    # partition 1 sent 2 batches (both stepped by the server) and vanished when its 2nd gradient came
    assert (r1["failed_clients"], r1["dropped"], r1["steps"]) == (1, 1, 4 + 2 + 4)
    assert r1["stream_broken"] >= 1
    # the next round samples every node again, and all train
    assert (r2["failed_clients"], r2["dropped"], r2["steps"], r2["clients"]) == (0, 0, 12, 3)
    assert "connection was lost" in caplog.text or "without the client's last frame" in caplog.text


def test_stream_needs_the_flower_engine_and_both_tls_files() -> None:
    with pytest.raises(ConfigError, match=r"transport=stream .* needs engine=flower"):
        small_config(transport="stream")
    with pytest.raises(ConfigError, match=r"both stream.ssl_certfile and stream.ssl_keyfile"):
        small_config(engine="flower", transport="stream", stream={"ssl_certfile": "a.pem"})
