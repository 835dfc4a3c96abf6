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
    return {"key": key, "scheme": scheme, "codec": codec, "mode": mode, "cut": cut, "error_feedback": ef}


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


def test_a_cell_that_did_not_reach_the_target_has_no_bar(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = [
        {**_cell("a", "sl", "none", "splitfed2", "shallow"), "status": "completed"}
        | {"mb_up_to_target": 500.0, "mb_down_to_target": 480.0},
        {**_cell("b", "sl", "topk:keep=0.01", "splitfed2", "shallow"), "status": "completed"}
        | {"mb_up_to_target": None, "mb_down_to_target": None},
        {**_cell("c", "fl", "none", ef=False), "status": "failed: boom"}
        | {"mb_up_to_target": None, "mb_down_to_target": None},
    ]
    kept = _kept(monkeypatch)
    plots.plot_mb_to_target(rows, tmp_path / "t.png", 0.95)
    fig = kept["fig"]
    up, down = fig.axes
    assert [p.get_width() for p in up.patches] == [500.0] and [p.get_width() for p in down.patches] == [480.0]
    assert [t.get_text() for t in up.texts] == ["not reached", "failed"]
    assert [t.get_text() for t in up.get_yticklabels()] == [
        "SL none (splitfed2, shallow)",
        "SL topk:keep=0.01 (splitfed2, shallow)",
        "FL none",
    ]
    plt.close(fig)
