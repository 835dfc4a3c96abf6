"""Split-learning throughput benchmark pieces (the full run is a benchmark, not a test)."""

from __future__ import annotations

import os

import pytest

from simulations import bench_sl
from simulations.bench_sl import batching_gains, cell_config, ratios, run_inprocess, run_many, tree_rss_mb
from simulations.engine import STOCK_ENGINE_WAIT_MS, engine_wait


def test_inprocess_cells_report_throughput_and_where_the_time_went() -> None:
    runs = run_inprocess("digits_cnn", [1, 2], [1, 2], steps=2)
    assert [(r["clients"], r["batches_per_message"]) for r in runs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in runs:
        assert r["steps"] == 2 * r["clients"] and r["samples"] == 32 * r["steps"]
        # begin + one message per k batches per client (the last reply returns the weights)
        assert r["messages"] == r["clients"] * (1 + 2 // r["batches_per_message"])
        assert r["samples_per_s"] > 0 and r["ms_per_step"] > 0
        parts = r["server_compute_s"] + r["server_codec_s"] + r["client_s"]
        assert 0 < parts <= r["train_s"] * 1.05  # in process the parts are serial, inside the round's time
        assert r["client_codec_s"] <= r["client_s"] and r["wait_s"] < r["train_s"]
    fake_flower = [{**r, "engine": "flower", "samples_per_s": r["samples_per_s"] / 2} for r in runs]
    assert {x["throughput_vs_inprocess"] for x in ratios(runs + fake_flower)} == {0.5}


def test_tree_rss_counts_this_process() -> None:
    assert 50 < tree_rss_mb(os.getpid()) < 24_000


def test_engine_wait_patch_is_scoped_and_the_stock_value_switches_it_off() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    with engine_wait(STOCK_ENGINE_WAIT_MS) as patched:
        assert patched is False and vce_api.add_messages_to_queue is original
    with engine_wait(2.0) as patched:
        assert patched is True and vce_api.add_messages_to_queue is not original
    assert vce_api.add_messages_to_queue is original


def test_cell_config_is_a_valid_one_round_config() -> None:
    cfg = cell_config("resnet18", 4, 8, 16, "flower", 2.0)
    assert (cfg["dataset"], cfg["model"], cfg["rounds"], cfg["max_steps_per_round"]) == (
        "synthetic_cifar10",
        "resnet18",
        1,
        16,
    )
    assert cfg["flower"]["engine_wait_ms"] == 2.0 and cfg["batches_per_message"] == 8


def test_server_batching_cells_and_their_gain() -> None:
    runs = run_inprocess("digits_cnn", [3], [1], steps=2, batching=(False, True))
    off, on = runs
    assert (off["server_batching"], on["server_batching"]) == (False, True)
    assert off["steps"] == on["steps"] == 6
    # in process all three replies arrive together: one server step per batch position
    assert off["server_steps"] == 6 and on["server_steps"] == 2
    (gain,) = batching_gains(runs)
    assert gain["samples_per_s_gain"] == round(on["samples_per_s"] / off["samples_per_s"], 3)
    assert gain["server_steps"] == [6, 2]
    fake = [{**r, "engine": "flower"} for r in runs]
    assert [x["server_batching"] for x in ratios(runs + fake)] == [False, True]  # each against its own twin


def test_many_clients_run_reports_rounds_and_rss() -> None:
    out = run_many(3, 2)
    assert out["completed"] and out["rounds"] == 2 and len(out["per_round"]) == 2
    assert out["s_per_round"] == out["per_round"][1]["s"] and out["peak_rss_mb"] > 100
    assert out["rss_growth_mb_after_round_1"] == round(out["per_round"][1]["rss_mb"] - out["per_round"][0]["rss_mb"], 1)
    assert 0 < out["final_test_accuracy"] <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--clients", "0"], "values >= 1"),
        (["--server-device", "tpu"], "cpu, cuda or cuda:N"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_sl.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
