"""Figures drawn from run metrics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_accuracy_vs_mb(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test accuracy (with and without the codec) against cumulative measured uplink+downlink MB.

    Rows without measured bytes (``cum_uplink_bytes`` is ``None``: plain DDP's own all-reduce) are
    plotted against ``round`` instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = all(r["cum_uplink_bytes"] is not None and r["cum_downlink_bytes"] is not None for r in rows)
    if measured:
        mb = [(r["cum_uplink_bytes"] + r["cum_downlink_bytes"]) / 1e6 for r in rows]
    else:
        mb = [float(r["round"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(mb, [r["test_accuracy"] for r in rows], marker="o", label="codec in the loop")
    ax.plot(mb, [r["test_accuracy_dense"] for r in rows], marker=".", linestyle="--", label="dense (no codec)")
    ax.set_xlabel("cumulative measured MB (uplink + downlink)" if measured else "round / step (no bytes measured)")
    ax.set_ylabel("test accuracy")
    if title:  # wrapped to the figure's width (a run's title spells out its config)
        ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
