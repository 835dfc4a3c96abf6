"""The run reporter every command uses: rows, the progress bar, the results table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fl_split.metrics import read_metrics
from fl_split.report import RunReporter, results_table


def _row(r: int, up: int | None = 1_000_000, loss: float | None = 0.5) -> dict[str, Any]:
    return {
        "round": r,
        "train_loss": loss,
        "test_accuracy": 0.1 * r,
        "test_accuracy_dense": 0.1 * r + 0.01,
        "uplink_bytes": up,
        "downlink_bytes": up,
        "cum_uplink_bytes": None if up is None else up * r,
        "cum_downlink_bytes": None if up is None else 2 * up * r,
        "steps": r,
        "samples": 32 * r,
        "dropped": r % 2,
        "wall_s": float(r),
    }


def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make (captured) stderr a terminal: the reporter draws its bar only there."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_reporter_writes_rows_advances_its_bar_to_each_row_and_prints_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _terminal(monkeypatch)
    rep = RunReporter(tmp_path / "a", total=20, desc="DDP", unit="step", progress=True)
    for step in (5, 10, 15, 20):  # a row every 5 steps: the bar jumps to the row's step
        rep.write_round(_row(step))
        assert rep._bar is not None and rep._bar.n == step
    summary = rep.write_summary({"seed": 0}, {"status": "completed"})
    assert rep._bar is None  # closed by the summary
    err = capsys.readouterr().err
    assert "DDP: 100%" in err and "20/20" in err and "acc=2.0000" in err and "MB=60.0" in err
    assert [r["round"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")] == [5, 10, 15, 20]
    lines = rep.table(summary).splitlines()
    assert lines[1].split()[:2] == ["step", "train_loss"]
    # step, loss, acc, dense acc, cumulative MB up / down, dropped: from the row, not recomputed
    assert lines[2].split() == ["5", "0.5000", "0.5000", "0.5100", "5.000", "10.000", "1"]
    assert lines[6] == "final test accuracy 2.0000 (dense 2.0100); wall 20.0 s"
    assert lines[7] == f"wrote {tmp_path / 'a' / 'metrics.jsonl'}" and lines[8].strip() == str(
        tmp_path / "a" / "summary.json"
    )


def test_table_shows_unmeasured_bytes_and_loss_as_dashes_and_elides_long_runs(tmp_path: Path) -> None:
    rows = [_row(r, up=None, loss=None) for r in range(1, 13)]  # plain DDP: no payload bytes
    text = results_table({"final_test_accuracy": None}, rows, tmp_path)
    lines = text.splitlines()
    assert lines[2].split() == ["1", "-", "0.1000", "0.1100", "-", "-", "1"]
    assert [ln.split()[0] for ln in lines[2:10]] == ["1", "2", "3", "...", "9", "10", "11", "12"]
    assert "final test accuracy" not in text and "wrote" not in text  # nothing written there yet


def test_a_resumed_reporter_keeps_the_earlier_rows_and_its_bar_starts_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _terminal(monkeypatch)
    first = RunReporter(tmp_path, total=4, desc="SL", progress=False)
    for r in (1, 2, 3):
        first.write_round(_row(r))
    resumed = RunReporter(tmp_path, "resume", 2, total=4, desc="SL", progress=True)  # round 3 is trained again
    assert [r["round"] for r in resumed.rows] == [1, 2] and resumed._bar is not None and resumed._bar.n == 2
    resumed.write_round(_row(3))
    resumed.write_round(_row(4))
    resumed.close()
    assert "SL: 100%" in capsys.readouterr().err
    assert [r["round"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_without_a_terminal_each_row_is_one_plain_line_and_a_given_sink_gets_them_whatever_progress_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs get no carriage returns or bar redraws; ``flwr run`` hands Flower's logger as the sink."""
    rep = RunReporter(tmp_path / "a", total=20, desc="DDP", unit="step", progress=True)
    assert rep._bar is None
    for step in (5, 10):
        rep.write_round(_row(step))
    rep.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [  # MB cumulative; seconds per step from wall_s (5 s over 5 steps)
        "DDP step 5/20: loss 0.5000, acc 0.5000, up 5.00 MB, down 10.00 MB, 1.00 s/step",
        "DDP step 10/20: loss 0.5000, acc 1.0000, up 10.00 MB, down 20.00 MB, 1.00 s/step",
    ]
    got: list[str] = []
    quiet = RunReporter(tmp_path / "b", total=2, desc="FL", progress=False, lines=got.append)
    quiet.write_round({**_row(1, up=None, loss=None), "wall_s": 2.5})
    quiet.write_round({**_row(2, up=None, loss=None), "wall_s": 3.0})
    assert got == [
        "FL round 1/2: loss -, acc 0.1000, up - MB, down - MB, 2.50 s/round",
        "FL round 2/2: loss -, acc 0.2000, up - MB, down - MB, 0.50 s/round",
    ]
    assert capsys.readouterr().err == ""  # progress=False: nothing on stderr


def test_gossip_and_ddp_commands_print_the_results_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    assert (
        main(["gossip", "--set", "nodes=4", "rounds=4", "eval_every=2", "threads=1", "--out", str(tmp_path / "g")]) == 0
    )
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert "round  train_loss" in out and f"final test accuracy {summary['final_test_accuracy']:.4f}" in out
    assert "MB over all edges" in out and str(tmp_path / "g" / "model.pt") in out
