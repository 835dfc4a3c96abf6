"""The comparison's plots: accuracy against cumulative measured MB, and MB to the target per cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_mb_grid(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Test accuracy against cumulative measured MB (up + down); SL cells on the left, FL on the right."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for ax, scheme, title in ((axes[0], "sl", "split learning"), (axes[1], "fl", "federated learning")):
        for label, rows in curves.items():
            if not label.startswith(scheme + " ") or not rows:
                continue
            mb = [(r["cum_uplink_bytes"] + r["cum_downlink_bytes"]) / 1e6 for r in rows]
            ax.plot(mb, [r["test_accuracy"] for r in rows], marker=".", label=label[len(scheme) + 1 :])
        ax.set_xscale("log")
        ax.set_xlabel("cumulative measured MB (up + down)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_mb_to_target(rows: Sequence[Mapping[str, Any]], path: str | Path, target: float) -> Path:
    """Bars of MB to reach ``target`` per cell; a cell that never reached it is a hatched bar marked so."""
    plt = _plt()
    reached = [r["mb_to_target"] for r in rows if r["mb_to_target"] is not None]
    ceiling = 1.2 * max(reached) if reached else 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4), dpi=100)
    for i, r in enumerate(rows):
        if r["mb_to_target"] is None:
            ax.bar(i, ceiling, color="none", edgecolor="grey", hatch="//")
            ax.text(
                i,
                ceiling,
                "not reached" if r["status"] == "completed" else "failed",
                rotation=90,
                ha="center",
                va="top",
                fontsize=7,
            )
        else:
            ax.bar(i, r["mb_to_target"], color="tab:blue" if r["scheme"] == "sl" else "tab:orange")
    ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel(f"measured MB to test accuracy {target}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
