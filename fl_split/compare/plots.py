"""The comparison's plots: accuracy against cumulative measured MB, and MB to the target per cell.

Uplink and downlink are always drawn apart: split learning's dense gradient downlink is an order
of magnitude above any compressed uplink, and a sum would hide every codec difference. Each codec
keeps one style (colour, marker and line style together) in every panel of a figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_LINES = ("-", "--", "-.", ":")
_SCHEME_COLOURS = {"sl": "tab:blue", "fl": "tab:orange"}
_SCHEME_NAMES = {"sl": "split learning", "fl": "federated learning"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def downlink_words(down: str) -> str:
    """What goes back to a client, in a label: nothing for the dense gradient (``none``), ``local ...`` for
    local-loss SL, else ``down CODEC``."""
    return "" if down == "none" else down if down.startswith("local") else f"down {down}"


def codec_label(row: Mapping[str, Any]) -> str:
    """What a curve is called in the legend: the uplink codec, ``/ down D`` when the downlink is not dense
    (``/ local`` for local-loss SL), ``+ EF`` for FL's error feedback."""
    back = downlink_words(str(row.get("downlink") or "none"))
    return f"{row['codec']}{f' / {back}' if back else ''}{' + EF' if row.get('error_feedback') is True else ''}"


def codec_styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct (colour, marker, line style) per label, in first-seen order: no two labels share all three,
    and no two of the first ten share a colour or a marker."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors  # type: ignore[attr-defined]  # a ListedColormap
    styles: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(dict.fromkeys(labels)):
        styles[label] = {
            "color": colours[i % len(colours)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINES[(i + i // len(colours)) % len(_LINES)],
        }
    return styles


def _log_x(ax: Any, subs: tuple[float, ...] = (1.0,)) -> None:
    """A log x axis labelled as plain numbers at ``subs`` of each decade only (minor labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _panel_of(row: Mapping[str, Any]) -> str:
    if row["scheme"] == "sl":
        return f"SL {row['mode']}, cut {row['cut']}"
    return "FL (FedAvg)"


def _mean_curve(
    runs: Sequence[Sequence[Mapping[str, Any]]], key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Over the seeds' curves, per round (up to the shortest): mean MB, mean, min and max accuracy."""
    n = min(len(rows) for rows in runs)
    mb = [sum(rows[i][key] for rows in runs) / len(runs) / 1e6 for i in range(n)]
    accs = [[rows[i]["test_accuracy"] for rows in runs] for i in range(n)]
    return mb, [sum(a) / len(a) for a in accs], [min(a) for a in accs], [max(a) for a in accs]


def plot_accuracy_vs_mb_grid(
    cells: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    target: float | None = None,
) -> Path:
    """Test accuracy against cumulative measured uplink MB (top row) and downlink MB (bottom row).

    One column per question: each SL (mode, cut) and FL. ``cells`` are the rows of ``summary.csv``
    (one per run: ``cell``, ``key``, ``scheme``, ``mode``, ``cut``, ``codec``, ``error_feedback``);
    ``curves`` maps a run's ``key`` to its metric rows. A cell run with several seeds is drawn as
    its mean per round, with the band from the lowest to the highest seed. ``target``, if given, is
    a line in every panel.
    """
    plt = _plt()
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for c in cells:
        if curves.get(c["key"]):
            runs.setdefault(str(c["cell"]), []).append(c)
    firsts = [group[0] for group in runs.values()]
    panels = list(dict.fromkeys(_panel_of(c) for c in firsts)) or ["(no finished cell)"]
    styles = codec_styles([codec_label(c) for c in firsts])
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6.2), dpi=110, sharey=True, squeeze=False)
    for col, panel in enumerate(panels):
        for row, (direction, key) in enumerate((("uplink", "cum_uplink_bytes"), ("downlink", "cum_downlink_bytes"))):
            ax = axes[row][col]
            for group in runs.values():
                first = group[0]
                if _panel_of(first) != panel:
                    continue
                style = styles[codec_label(first)]
                mb, mean, low, high = _mean_curve([curves[c["key"]] for c in group], key)
                ax.plot(mb, mean, markersize=4, label=codec_label(first), **style)
                if len(group) > 1:
                    ax.fill_between(mb, low, high, color=style["color"], alpha=0.15, linewidth=0)
            if target is not None:
                ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            _log_x(ax)
            ax.set_xlabel(f"cumulative {direction} MB (measured)", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(panel, fontsize=10)
    seeds = max((len(group) for group in runs.values()), default=1)
    for row in range(2):
        axes[row][0].set_ylabel("test accuracy")
    if seeds > 1:  # a figure-wide line: on the axis label it ran over the ticks and off the figure
        fig.suptitle(f"mean of {seeds} seeds per cell; band: lowest to highest seed", fontsize=9)
    handles = [plt.Line2D([], [], markersize=5, label=label, **style) for label, style in styles.items()]
    if target is not None:
        handles.append(plt.Line2D([], [], color="grey", linestyle=":", label=f"target {target}"))
    fig.tight_layout()
    if handles:
        fig.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)), fontsize=8
        )
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_mb_to_target(cells: Sequence[Mapping[str, Any]], path: str | Path, target: float) -> Path:
    """Measured uplink MB and downlink MB each cell needed to reach ``target``, side by side.

    ``cells`` are the rows of ``summary_by_cell.csv`` (:func:`fl_split.compare.stats.aggregate`): a
    bar is the mean over the seeds that reached the target, its whisker the standard deviation, and
    ``reached 2/3`` is written beside it when some seeds did not. A cell no seed brought there gets
    no bar, only the words ``not reached`` (or ``failed``): a bar would read as the largest cost.
    Bars are coloured by scheme (legend).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(cells) + 1.6), dpi=110, sharey=True, squeeze=False)
    labels = [
        f"{r['scheme'].upper()} {codec_label(r)}" + (f" ({r['mode']}, {r['cut']})" if r["scheme"] == "sl" else "")
        for r in cells
    ]
    directions = (("uplink", "mb_up_to_target"), ("downlink", "mb_down_to_target"))
    for ax, (direction, key) in zip(axes[0], directions, strict=True):
        reached = [float(r[f"{key}_mean"]) for r in cells if r.get(f"{key}_mean")]
        floor = min(reached) / 3 if reached else 0.1
        for i, r in enumerate(cells):
            value, spread = r.get(f"{key}_mean"), r.get(f"{key}_std")
            hits, runs = (int(x) for x in str(r["reached"]).split("/"))
            if value:
                ax.barh(i, value, xerr=spread or None, color=_SCHEME_COLOURS[r["scheme"]], height=0.7, capsize=2)
                if hits < runs:
                    ax.text(value + (spread or 0), i, f"  reached {hits}/{runs}", va="center", fontsize=7)
            else:
                why = "not reached" if r["completed"] else "failed"
                ax.text(floor, i, why, va="center", ha="left", fontsize=7, style="italic", color="dimgrey")
        wide = bool(reached) and max(reached) / floor > 300  # over 2.5 decades: label decades only
        _log_x(ax, subs=(1.0,) if wide else (1.0, 2.0, 5.0))
        ax.set_xlim(left=floor)
        ax.set_xlabel(f"{direction} MB to accuracy {target}, measured", fontsize=9)
        ax.grid(alpha=0.3, axis="x", which="both")
    axes[0][0].set_yticks(list(range(len(cells))), labels, fontsize=7)
    axes[0][0].invert_yaxis()
    schemes = list(dict.fromkeys(r["scheme"] for r in cells))
    axes[0][1].legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=_SCHEME_COLOURS[s], label=_SCHEME_NAMES[s]) for s in schemes],
        fontsize=8,
        loc="lower right",
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
