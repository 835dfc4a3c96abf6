"""The per-run figure (``accuracy_vs_mb.png``): what it draws, read back from the figure itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fl_split import plots


def _rows(dense_offset: float, measured: bool = True) -> list[dict[str, Any]]:
    rows = []
    for r in range(1, 5):
        up, down = (r * 1_000_000, r * 12_000_000) if measured else (None, None)
        acc = 0.2 * r
        rows.append(
            {
                "round": r,
                "test_accuracy": acc,
                "test_accuracy_dense": acc + dense_offset,
                "cum_uplink_bytes": up,
                "cum_downlink_bytes": down,
            }
        )
    return rows


def _drawn(monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]], tmp_path: Path, title: str = "") -> Any:
    """Draw ``rows`` and return the figure as it was saved (savefig is wrapped to keep it)."""
    kept: dict[str, Any] = {}
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    out = plots.plot_accuracy_vs_mb(rows, tmp_path / "a.png", title=title)
    monkeypatch.setattr(plt, "close", close)
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return kept["fig"]


def test_uplink_and_downlink_get_their_own_panel_with_the_measured_mb(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fig = _drawn(monkeypatch, _rows(0.01), tmp_path, title="SL splitfed2, digits, 10 clients, cut 2: up ms, down none")
    up, down = fig.axes
    assert "uplink" in up.get_xlabel() and "downlink" in down.get_xlabel()
    assert list(up.lines[0].get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert list(down.lines[0].get_xdata()) == [12.0, 24.0, 36.0, 48.0]
    assert len(up.lines) == 2  # the dense evaluation differs here: drawn
    assert list(up.lines[1].get_ydata()) == pytest.approx([0.21, 0.41, 0.61, 0.81])
    assert fig._suptitle.get_text().startswith("SL splitfed2")
    plt.close(fig)


def test_a_dense_line_equal_to_the_run_is_not_drawn_twice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fig = _drawn(monkeypatch, _rows(0.0), tmp_path)  # FL: evaluated as it is
    assert [len(ax.lines) for ax in fig.axes] == [1, 1] and fig.axes[0].get_legend() is None
    plt.close(fig)


def test_rows_without_measured_bytes_are_drawn_against_the_round(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fig = _drawn(monkeypatch, _rows(0.0, measured=False), tmp_path)
    (ax,) = fig.axes
    assert list(ax.lines[0].get_xdata()) == [1.0, 2.0, 3.0, 4.0] and "round" in ax.get_xlabel()
    plt.close(fig)
