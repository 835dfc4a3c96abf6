"""The DDP codec hook with 2 gloo processes on the CPU (real torch.distributed, spawned ranks)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from ddp_worker import train_rank

from fl_split.fl.client import build_model
from fl_split.fl.config import load_fl_config
from simulations.deploy import free_port


def _run(tmp: Path, codec: str | None, *, ef: bool = False, steps: int = 6, bad_rank: int = -1) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(
        train_rank,
        args=(2, free_port(), str(tmp), codec, ef, steps, bad_rank),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP ranks hung")
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def _params(tmp: Path, rank: int) -> np.ndarray:
    return np.load(tmp / f"params{rank}.npy", allow_pickle=False)


def test_codec_none_equals_plain_ddp_and_bytes_per_step_are_the_payloads(tmp_path: Path) -> None:
    plain = _run(tmp_path / "plain", None)
    hooked = _run(tmp_path / "none", "none")
    assert all("error" not in r for r in plain + hooked), plain + hooked
    p, h = _params(tmp_path / "plain", 0), _params(tmp_path / "none", 0)
    assert np.abs(p - h).max() < 1e-5 and np.abs(p - _params(tmp_path / "plain", 1)).max() == 0.0
    assert np.abs(h - _params(tmp_path / "none", 1)).max() == 0.0  # both ranks hold the same model
    numel = sum(t.numel() for t in build_model(load_fl_config("fl"), seed=0).parameters())
    for r in hooked:  # float32 payloads: 4 bytes per gradient element plus a small header per bucket
        assert r["buckets"] >= 2 and 4 * numel < r["step_bytes"] < 4 * numel + 256 * r["buckets"]
        # DDP rebuilds its buckets after the first step: only the per-bucket headers differ across steps
        assert abs(r["bytes_sent"] - 6 * r["step_bytes"]) <= 64 * r["buckets"] and 6 <= r["calls"] <= 6 * r["buckets"]


def test_topk_with_error_feedback_sends_one_percent_and_keeps_a_residual_per_bucket(tmp_path: Path) -> None:
    res = _run(tmp_path, "topk:keep=0.01", ef=True, steps=6)
    assert all("error" not in r for r in res), res
    numel = sum(t.numel() for t in build_model(load_fl_config("fl"), seed=0).parameters())
    for r in res:
        assert r["step_bytes"] < 0.05 * 4 * numel and r["residual_numel"] == numel
    assert np.abs(_params(tmp_path, 0) - _params(tmp_path, 1)).max() == 0.0


def test_a_payload_that_does_not_decode_raises_on_every_rank_without_a_hang(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = _run(tmp_path, "qsgd:levels=16", bad_rank=1)
    for r in res:
        assert "CodecError" in r["error"] and "payload of rank 1" in r["error"], r
    assert time.monotonic() - t0 < 120


def test_hook_state_round_trips_through_a_checkpoint() -> None:
    import torch

    from fl_split.codecs import codec_from_spec
    from fl_split.ddp import CodecHookState

    state = CodecHookState(codec_from_spec("topk:keep=0.01"), residuals={0: torch.arange(5.0), 3: torch.ones(2)})
    state.bytes_sent, state.calls = 1234, 7
    saved = state.state_dict()
    other = CodecHookState(codec_from_spec("topk:keep=0.05"))
    other.load_state_dict(saved)
    assert other.bytes_sent == 1234 and other.calls == 7 and torch.equal(other.residuals[0], torch.arange(5.0))
    with pytest.raises(ValueError, match="codec 'topk', this hook uses 'qsgd'"):
        CodecHookState(codec_from_spec("qsgd")).load_state_dict(saved)


def test_fl_split_ddp_trains_and_writes_measured_rows(tmp_path: Path) -> None:
    from fl_split.ddp.config import load_ddp_config
    from fl_split.ddp.train import run_ddp
    from fl_split.metrics import read_metrics

    run_ddp(load_ddp_config(values={"steps": 40, "log_every": 20, "out_dir": str(tmp_path)}))
    r1, r2 = read_metrics(tmp_path / "metrics.jsonl")
    assert (r1["steps"], r2["steps"]) == (20, 40) and r2["train_loss"] < r1["train_loss"]
    # every row: 20 steps x 2 ranks x this rank's payload bytes per step (same bucket layout on both ranks)
    assert r2["uplink_bytes"] == 20 * 2 * r2["step_bytes_rank0"] and r2["downlink_bytes"] == r2["uplink_bytes"]
    assert r2["cum_uplink_bytes"] == r1["uplink_bytes"] + r2["uplink_bytes"]
    assert (tmp_path / "summary.json").exists()
