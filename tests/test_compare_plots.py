"""The comparison's figures, read back from the figures themselves: panels, styles, targets, "not reached"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fl_split.compare import plots


def _cell(key: str, scheme: str, codec: str, mode: str = "", cut: str = "", ef: object = "") -> dict[str, Any]:
    return {"cell": key, "key": key, "scheme": scheme, "codec": codec, "mode": mode, "cut": cut, "error_feedback": ef}


def _kept(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    return kept


def test_styles_are_distinct_for_twenty_codecs() -> None:
    labels = [f"codec{i}" for i in range(20)]
    styles = plots.codec_styles(labels)
    triples = {(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(triples) == 20
    assert len({s["color"] for s in list(styles.values())[:10]}) == 10
    assert len({s["marker"] for s in list(styles.values())[:10]}) == 10


def test_accuracy_grid_has_a_column_per_question_and_a_row_per_direction(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cells = [
        _cell("a", "sl", "none", "splitfed2", "shallow"),
        _cell("b", "sl", "ms:keep=0.01,bits=2", "splitfed2", "shallow"),
        _cell("c", "sl", "none", "sequential", "medium"),
        _cell("d", "fl", "topk:keep=0.01", ef=True),
        _cell("e", "fl", "none", ef=False),  # no curve: not drawn
    ]
    rows = [{"cum_uplink_bytes": r * 2e6, "cum_downlink_bytes": r * 9e6, "test_accuracy": 0.3 * r} for r in (1, 2, 3)]
    curves = {k: rows for k in "abcd"}
    kept = _kept(monkeypatch)
    plots.plot_accuracy_vs_mb_grid(cells, curves, tmp_path / "g.png", target=0.95)
    fig = kept["fig"]
    assert (tmp_path / "g.png").stat().st_size > 1000
    top = fig.axes[:3]
    assert [ax.get_title() for ax in top] == ["SL splitfed2, cut shallow", "SL sequential, cut medium", "FL (FedAvg)"]
    up, down = fig.axes[0], fig.axes[3]
    assert "uplink" in up.get_xlabel() and "downlink" in down.get_xlabel()
    curve_lines = [ln for ln in up.lines if ln.get_label() in ("none", "ms:keep=0.01,bits=2")]
    assert list(curve_lines[0].get_xdata()) == [2.0, 4.0, 6.0] and list(down.lines[0].get_xdata()) == [9.0, 18.0, 27.0]
    assert any(list(ln.get_ydata()) == [0.95, 0.95] for ln in up.lines)  # the target line
    none_sl, none_seq = up.lines[0], fig.axes[1].lines[0]  # "none" keeps one style across panels
    assert (none_sl.get_color(), none_sl.get_marker()) == (none_seq.get_color(), none_seq.get_marker())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["none", "ms:keep=0.01,bits=2", "topk:keep=0.01 + EF", "target 0.95"]
    plt.close(fig)


def _agg(cell: dict[str, Any], up: float | None, down: float | None, reached: str, completed: int = 3) -> dict:
    return cell | {
        "cell": cell["key"],
        "completed": completed,
        "reached": reached,
        "mb_up_to_target_mean": up,
        "mb_up_to_target_std": None if up is None else 20.0,
        "mb_down_to_target_mean": down,
        "mb_down_to_target_std": None if down is None else 0.0,
    }


def test_mb_to_target_bars_are_means_with_their_spread_and_unreached_cells_have_no_bar(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cells = [
        _agg(_cell("a", "sl", "none", "splitfed2", "shallow"), 500.0, 480.0, "3/3"),
        _agg(_cell("b", "sl", "ms:keep=0.01,bits=2", "splitfed2", "shallow"), 60.0, 300.0, "2/3"),
        _agg(_cell("c", "sl", "topk:keep=0.01", "splitfed2", "shallow"), None, None, "0/3"),
        _agg(_cell("d", "fl", "none", ef=False), None, None, "0/3", completed=0),
    ]
    kept = _kept(monkeypatch)
    plots.plot_mb_to_target(cells, tmp_path / "t.png", 0.95)
    fig = kept["fig"]
    up, down = fig.axes
    assert [p.get_width() for p in up.patches] == [500.0, 60.0] and [p.get_width() for p in down.patches] == [
        480.0,
        300.0,
    ]
    assert [t.get_text() for t in up.texts] == ["  reached 2/3", "not reached", "failed"]
    assert len(up.collections) == 2  # the whiskers of the two bars
    assert [t.get_text() for t in up.get_yticklabels()] == [
        "SL none (splitfed2, shallow)",
        "SL ms:keep=0.01,bits=2 (splitfed2, shallow)",
        "SL topk:keep=0.01 (splitfed2, shallow)",
        "FL none",
    ]
    plt.close(fig)


def test_seeds_of_a_cell_are_drawn_as_their_mean_with_a_band(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cells = [_cell(k, "sl", "none", "splitfed2", "shallow") | {"cell": "sl none"} for k in ("s0", "s1")]
    curves = {
        "s0": [{"cum_uplink_bytes": 1e6, "cum_downlink_bytes": 2e6, "test_accuracy": 0.5}] * 2,
        "s1": [{"cum_uplink_bytes": 3e6, "cum_downlink_bytes": 2e6, "test_accuracy": 0.7}] * 3,
    }
    kept = _kept(monkeypatch)
    plots.plot_accuracy_vs_mb_grid(cells, curves, tmp_path / "g.png")
    fig = kept["fig"]
    up = fig.axes[0]
    (line,) = up.lines
    assert list(line.get_xdata()) == [2.0, 2.0] and list(line.get_ydata()) == pytest.approx([0.6, 0.6])
    assert len(up.collections) == 1 and "2 seeds" in fig._suptitle.get_text()
    plt.close(fig)
