"""Nothing is lost: checkpoints, resume, the final model, and run folders that are never silently reused.

The resume oracle is an uninterrupted run of the same config: an interrupted run, resumed, must give
the same metrics rows (timings aside) and the same final weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sl_helpers import oracle_config

from fl_split.checkpoint import load_checkpoint
from fl_split.config import ConfigError
from fl_split.durable import from_safe, to_safe
from fl_split.metrics import OutputExists, RunWriter, read_metrics
from fl_split.sl.config import SLConfig
from fl_split.sl.transport import InProcessTransport, Reply
from simulations import sl

#: metrics fields that are measured times, not results
TIMING = ("wall_s", "train_s", "transport_s", "server_compute_s", "server_codec_s", "client_s", "client_codec_s")


def _results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


class _PowerCut(InProcessTransport):
    """Raises on the first message of round ``at`` (the process dies mid-round)."""

    def __init__(self, n: int, at: int) -> None:
        super().__init__(n)
        self.at = at

    def send(self, node_id: int, kind: str, fields: dict, round_: int) -> dict[str, int]:
        if round_ == self.at:
            raise KeyboardInterrupt("power cut")
        return super().send(node_id, kind, fields, round_)


def _sl_run(config: SLConfig, transport: InProcessTransport | None = None) -> None:
    strategy, writer = sl._build(config)
    strategy.start(transport or InProcessTransport(int(config["clients"])))
    sl._finish(config, writer, echo=False, strategy=strategy)


@pytest.mark.parametrize("mode", ["sequential", "splitfed2"])
def test_sl_interrupted_after_round_2_of_4_and_resumed_equals_an_uninterrupted_run(mode: str, tmp_path: Path) -> None:
    cfg = {"max_steps_per_round": 4, "rounds": 4, "uplink": "ms:keep=0.05,bits=2"}
    whole = oracle_config(mode, out_dir=str(tmp_path / "whole"), **cfg)
    _sl_run(whole)
    cut = oracle_config(mode, out_dir=str(tmp_path / "cut"), **cfg)
    with pytest.raises(KeyboardInterrupt):
        _sl_run(cut, _PowerCut(3, at=3))
    assert [r["round"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "cut" / "summary.json").exists()
    _sl_run(cut.replace(existing_out="resume"))
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert _results(a) == _results(b)
    assert b[-1]["wall_s"] >= b[1]["wall_s"]  # wall time goes on from the checkpoint
    ma = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    mb = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for half in ("client_half", "server_half"):
        assert all(torch.equal(ma[half][k], mb[half][k]) for k in ma[half]), half
    # and the resumed run really trained: its weights moved from the checkpoint's
    _, state = load_checkpoint(tmp_path / "cut", "sl", cut)
    assert int(state["round"]) == 4
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["rounds_completed"] == 4 and summary["status"] == "completed"


def test_a_rerun_into_a_used_folder_refuses_unless_asked(tmp_path: Path) -> None:
    cfg = oracle_config("splitfed2", max_steps_per_round=1, out_dir=str(tmp_path))
    _sl_run(cfg)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(OutputExists, match=r"already holds a run .* --resume .* --overwrite"):
        _sl_run(cfg)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing was touched
    _sl_run(cfg.replace(existing_out="overwrite"))
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    with pytest.raises(ConfigError, match=r"config differs from the checkpoint's in seed: 0 -> 5"):
        _sl_run(cfg.replace(existing_out="resume", seed=5))
    with pytest.raises(ConfigError, match="does not exist"):
        _sl_run(cfg.replace(existing_out="resume", out_dir=str(tmp_path / "empty")))


def test_run_writer_appends_and_resume_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    w = RunWriter(tmp_path)
    for r in range(1, 4):
        w.write_round({k: r for k in ("round", "train_loss", "test_accuracy", "test_accuracy_dense")} | _zeros())
    resumed = RunWriter(tmp_path, "resume", resume_round=2)  # round 3 is trained again
    assert [r["round"] for r in resumed.rows] == [1, 2]
    assert [r["round"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    resumed.write_summary({"x": 1})
    assert json.loads((tmp_path / "summary.json").read_text())["rounds_completed"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files


def _zeros() -> dict[str, int]:
    keys = ("uplink_bytes", "downlink_bytes", "cum_uplink_bytes", "cum_downlink_bytes", "steps", "samples")
    return {k: 0 for k in keys} | {"dropped": 0, "wall_s": 0}


def test_checkpoint_payloads_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    obj = {"a": b"\x00\x01", "b": [b"", b"xyz"], "c": (1, 2.5, None), "t": torch.ones(2)}
    torch.save(to_safe(obj), tmp_path / "x.pt")
    back = from_safe(torch.load(tmp_path / "x.pt", weights_only=True))
    assert back["a"] == b"\x00\x01" and back["b"] == [b"", b"xyz"] and back["c"] == (1, 2.5, None)


def test_fl_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """FL over Flower's simulation engine, codec ``none`` (the clients hold no state of their own).

    The three runs (3 rounds; 1 round; that run resumed to 3) share one simulation, each built
    from its config and ``out_dir`` as ``run_fl`` builds one, the resumed one only after the
    interrupted one has finished: its strategy starts from what ``checkpoint.pt`` holds.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid

    from fl_split.fl.config import load_fl_config
    from simulations.apps import build_client_app, build_server_app
    from simulations.engine import run_flower_simulation
    from simulations.fl import _build, _finish

    def cfg(out: str, rounds: int, **extra: Any) -> Any:
        values = {"clients": 3, "rounds": rounds, "uplink": "none", "progress": False, "out_dir": str(tmp_path / out)}
        return load_fl_config("fl", values=values | extra)

    configs = [cfg("whole", 3), cfg("cut", 1), cfg("cut", 3, existing_out="resume")]  # stopped after round 1, resumed
    summaries: list[dict[str, Any]] = []

    def main(grid: Grid, _context: Context) -> None:
        for config in configs:
            run, writer = _build(config)
            run.start(grid)
            summaries.append(_finish(config, run, writer, echo=False))

    run_flower_simulation(build_server_app(main), build_client_app(), 3)
    assert [s["status"] for s in summaries] == ["completed"] * 3
    summary = summaries[-1]
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    keep = ("round", "samples", "uplink_bytes", "cum_uplink_bytes", "aggregated", "failed_clients")
    assert [{k: r[k] for k in keep} for r in a] == [{k: r[k] for k in keep} for r in b]
    # replies arrive in Ray's order, and are summed in partition order: the same bits
    assert [(x["train_loss"], x["test_accuracy"]) for x in a] == [(y["train_loss"], y["test_accuracy"]) for y in b]
    ma = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    mb = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3


def test_an_interrupted_fl_split_sl_is_resumed_from_the_cli(tmp_path: Path) -> None:
    """The real thing: `fl-split sl` killed (SIGKILL) after its second round, then `--resume`.

    6 steps per client and round (a round takes about a second alone) leave the poll below rounds 3 to 5 to
    land the kill in; what is pinned, a resumed run equal to an uninterrupted one, does not depend on them."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    args = ["--set", "engine=inprocess", "rounds=5", "clients=3", "max_steps_per_round=6", "progress=false"]
    exe = [sys.executable, "-m", "simulations.cli", "sl", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([*exe, "--out", str(ref)], env=env, capture_output=True, timeout=600).returncode == 0
    proc = subprocess.Popen([*exe, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = len(read_metrics(out / "metrics.jsonl"))
    assert 2 <= done < 5, done  # it was interrupted mid-run
    again = subprocess.run([*exe, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr  # a used folder is refused
    resumed = subprocess.run([*exe, "--out", str(out), "--resume"], env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_metrics(ref / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert _results(a) == _results(b)


def test_a_failed_run_keeps_its_last_checkpoint_and_writes_no_model(tmp_path: Path) -> None:
    class _DiesInRound2(InProcessTransport):
        def receive(self, timeout_s: float | None = None) -> list[Reply]:
            replies = super().receive(timeout_s)
            return [Reply(r.node_id, None, "RuntimeError: gone", round=r.round) if r.round == 2 else r for r in replies]

    cfg = oracle_config("splitfed2", max_steps_per_round=1, out_dir=str(tmp_path))
    strategy, writer = sl._build(cfg)
    with pytest.raises(sl.TrainingFailed):
        try:
            strategy.start(_DiesInRound2(3))
        except sl.TrainingFailed as exc:
            sl._finish(cfg, writer, echo=False, error=exc, strategy=strategy)
    assert not (tmp_path / "model.pt").exists()
    assert load_checkpoint(tmp_path, "sl", cfg)[0] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_resume_tolerates_a_torn_last_row_and_outputs_keep_the_usual_mode(tmp_path: Path) -> None:
    import stat

    from fl_split.durable import atomic_write_text

    w = RunWriter(tmp_path)
    for r in (1, 2):
        w.write_round({k: r for k in ("round", "train_loss", "test_accuracy", "test_accuracy_dense")} | _zeros())
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"round": 3, "train_lo')  # the process died while appending row 3
    assert [r["round"] for r in RunWriter(tmp_path, "resume", resume_round=2).rows] == [1, 2]
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644


def test_the_failure_log_survives_a_resume() -> None:
    from strategies.split_learning import SplitLearningStrategy

    cfg = oracle_config("splitfed2", max_steps_per_round=1)
    a = SplitLearningStrategy(cfg)
    a.failures.append({"round": 1, "client": 2, "reason": "timed_out", "error": "x"})
    b = SplitLearningStrategy(cfg)
    b.load_state_dict(from_safe(to_safe(a.state_dict())))
    assert b.failures == a.failures


def test_a_checkpoint_written_before_a_key_existed_resumes_with_that_key_at_its_default(tmp_path: Path) -> None:
    from fl_split.checkpoint import load_checkpoint, save_checkpoint
    from fl_split.config import plain
    from fl_split.sl.config import load_sl_config

    config = load_sl_config("sl")
    older = {k: v for k, v in plain(config).items() if k not in ("gradients", "aux_head", "send_every")}
    older["flower"] = {k: v for k, v in older["flower"].items() if k != "engine_wait_ms"}
    save_checkpoint(tmp_path, "sl", 2, older, {"x": 1})
    assert load_checkpoint(tmp_path, "sl", config)[0] == 2
    with pytest.raises(ConfigError, match="gradients: 'server' -> 'local'"):
        load_checkpoint(tmp_path, "sl", config.replace(gradients="local"))
