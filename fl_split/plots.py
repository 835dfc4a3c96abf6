"""Figures drawn from run metrics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The run's accuracy with its codec, and without it (the halves evaluated dense), as drawn.
_CODEC = {"marker": "o", "markersize": 3, "color": "tab:blue", "label": "with the codec"}
_DENSE = {"marker": "s", "markersize": 3, "linestyle": "--", "color": "tab:orange", "label": "dense evaluation"}


def plot_accuracy_vs_mb(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test accuracy against the cumulative measured uplink MB and, in a second panel, downlink MB.

    The two directions get their own axes: a dense downlink (split learning's gradients) would
    otherwise hide every uplink difference. The dense-evaluation line is drawn only where it differs
    from the run's accuracy (it never does in FL, where the model is evaluated as it is). Rows without
    measured bytes (``cum_uplink_bytes`` is ``None``: plain DDP's own all-reduce) are drawn against
    ``round`` in one panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [r["test_accuracy"] for r in rows]
    dense = [r.get("test_accuracy_dense") for r in rows]
    show_dense = any(d is not None and d != a for a, d in zip(acc, dense, strict=True))
    measured = all(r["cum_uplink_bytes"] is not None and r["cum_downlink_bytes"] is not None for r in rows)
    if measured:
        axes_x = [
            ("cumulative uplink MB (measured)", [r["cum_uplink_bytes"] / 1e6 for r in rows]),
            ("cumulative downlink MB (measured)", [r["cum_downlink_bytes"] / 1e6 for r in rows]),
        ]
    else:
        axes_x = [("round / step (no bytes measured)", [float(r["round"]) for r in rows])]
    fig, axes = plt.subplots(1, len(axes_x), figsize=(4.2 * len(axes_x), 3.4), dpi=110, sharey=True, squeeze=False)
    for ax, (label, x) in zip(axes[0], axes_x, strict=True):
        ax.plot(x, acc, **_CODEC)
        if show_dense:
            ax.plot(x, dense, **_DENSE)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    if show_dense:
        axes[0][0].legend(fontsize=8, loc="lower right")
    if title:  # wrapped to the figure's width
        fig.suptitle("\n".join(textwrap.wrap(title, 45 * len(axes_x))), fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
