"""The run outputs every command writes: ``metrics.jsonl``, ``summary.json`` and the plot.

One schema for split learning, FL, gossip and the comparison: one JSON object per round with at
least ``round``, ``train_loss``, ``test_accuracy``, ``test_accuracy_dense``, ``uplink_bytes``,
``downlink_bytes``, ``cum_uplink_bytes``, ``cum_downlink_bytes``, ``steps``, ``samples``,
``dropped``, ``wall_s``. Byte fields are sums of ``len()`` of real payloads.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fl_split.config import plain
from fl_split.durable import append_line, atomic_write_text

ROUND_KEYS = (
    "round",
    "train_loss",
    "test_accuracy",
    "test_accuracy_dense",
    "uplink_bytes",
    "downlink_bytes",
    "cum_uplink_bytes",
    "cum_downlink_bytes",
    "steps",
    "samples",
    "dropped",
    "wall_s",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("fl-split", "torch", "torchvision", "flwr", "flwr-datasets", "numpy", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


#: What a run does with an ``out_dir`` that already holds a run (the ``existing_out`` config key).
EXISTING_OUT = ("refuse", "resume", "overwrite")


class OutputExists(ValueError):
    """``out_dir`` already holds a run and neither resuming nor overwriting was asked for."""


def refuse_used(out_dir: str | Path) -> None:
    """:class:`OutputExists` if ``out_dir`` holds a run (a non-empty ``metrics.jsonl`` or a ``summary.json``)."""
    out = Path(out_dir).expanduser()
    metrics, summary = out / "metrics.jsonl", out / "summary.json"
    if (metrics.exists() and metrics.stat().st_size > 0) or summary.exists():
        raise OutputExists(
            f"{out} already holds a run ({metrics.name} / {summary.name}); pass --resume to continue it from its "
            "last checkpoint, --overwrite to replace it, or choose another --out (config key existing_out)"
        )


class RunWriter:
    """Writes one run's outputs under ``out_dir`` (created).

    Parameters
    ----------
    out_dir:
        The run's folder.
    existing:
        What to do when ``out_dir`` already holds a run (a non-empty ``metrics.jsonl`` or a
        ``summary.json``): ``refuse`` (:class:`OutputExists`, nothing is touched), ``overwrite``
        (start a fresh ``metrics.jsonl``) or ``resume`` (keep the rows up to ``resume_round``).
    resume_round:
        With ``resume``: the last round the checkpoint holds; later rows are dropped (they are
        trained again).

    Every row is appended, flushed and synced (:func:`fl_split.durable.append_line`);
    ``summary.json`` is replaced atomically.
    """

    def __init__(self, out_dir: str | Path, existing: str = "refuse", resume_round: int = 0) -> None:
        if existing not in EXISTING_OUT:
            raise ValueError(f"existing must be one of {EXISTING_OUT}, got {existing!r}")
        self.out_dir = Path(out_dir).expanduser()
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.summary_path = self.out_dir / "summary.json"
        self.plot_path = self.out_dir / "accuracy_vs_mb.png"
        if existing == "refuse":
            refuse_used(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if existing == "resume" and self.metrics_path.exists():
            self.rows = [r for r in read_metrics(self.metrics_path, torn_tail=True) if int(r["round"]) <= resume_round]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def write_round(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics (must hold every key of :data:`ROUND_KEYS`)."""
        missing = [k for k in ROUND_KEYS if k not in row]
        if missing:
            raise ValueError(f"round metrics lack {missing}")
        self.rows.append(dict(row))
        append_line(self.metrics_path, json.dumps(dict(row)))

    def write_summary(self, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` (config, final/best accuracy, byte totals, wall time, versions) and the plot."""
        rows = self.rows
        last = rows[-1] if rows else {}
        summary: dict[str, Any] = {
            "config": plain(config),
            "rounds_completed": len(rows),
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_accuracy_dense": last.get("test_accuracy_dense"),
            "best_test_accuracy": max((r["test_accuracy"] for r in rows), default=None),
            "total_uplink_bytes": last.get("cum_uplink_bytes", 0),
            "total_downlink_bytes": last.get("cum_downlink_bytes", 0),
            "total_dropped": sum(r["dropped"] for r in rows),
            "wall_s": last.get("wall_s"),
            "versions": package_versions(),
            "files": {"metrics": str(self.metrics_path), "plot": str(self.plot_path)},
        }
        summary.update(extra or {})
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
        if rows:
            from fl_split.plots import plot_accuracy_vs_mb

            plot_accuracy_vs_mb(rows, self.plot_path, title=str(summary.get("title", "")))
        return summary


def failure_summary(failures: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``'s fault fields from a run's failure log (one entry per client that left a round)."""
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    return {"failed_clients": len(failures), "failure_reasons": dict(sorted(reasons.items())), "failures": failures}


def read_metrics(path: str | Path, *, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file.

    With ``torn_tail``, a last line that does not parse (the process died while appending it) is
    left out instead of raising.
    """
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if torn_tail and i == len(lines) - 1:
                break
            raise
    return rows
