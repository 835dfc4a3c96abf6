"""One run reporter for every command (sl, fl, ddp, gossip): rows, progress, summary, the results table.

A :class:`RunReporter` is the run's :class:`~fl_split.metrics.RunWriter` (``metrics.jsonl``,
``summary.json``, the plot) with a progress bar and the end-of-run table; each command hands it
its rows (every row holds :data:`~fl_split.metrics.ROUND_KEYS`) and, at the end, its summary
fields. The bar and the table read only those common keys, so all four commands show the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fl_split.checkpoint import CHECKPOINT, MODEL
from fl_split.metrics import RunWriter


class RunReporter(RunWriter):
    """Writes a run's rows and summary (a :class:`~fl_split.metrics.RunWriter`) and shows its progress.

    Progress is a bar when stderr is a terminal, else one plain line per row (no carriage returns
    in logs): on stderr, or through ``lines`` when given (the ServerApp under ``flwr run`` hands
    Flower's logger, so ``flwr run --stream`` and ``flwr log`` show a line per round).

    Parameters
    ----------
    out_dir, existing, resume_round:
        As :class:`~fl_split.metrics.RunWriter`.
    total:
        Rows' ``round`` value at the end (rounds, or steps for ``ddp``): the bar's length.
    desc:
        The bar's label (``"SL splitfed2 (flower)"``, ``"FL"``...).
    unit:
        What ``round`` counts: ``round`` or ``step``.
    progress:
        Show progress on stderr (off in workers, the compare grid's cells, benchmarks).
    lines:
        Where each row's line goes instead of stderr (shown whatever ``progress`` says).
    """

    def __init__(
        self,
        out_dir: str | Path,
        existing: str = "refuse",
        resume_round: int = 0,
        *,
        total: int,
        desc: str,
        unit: str = "round",
        progress: bool = True,
        lines: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(out_dir, existing, resume_round)
        self.unit, self.total, self.desc = unit, total, desc
        self._bar: Any = None
        self._lines = lines
        if progress and lines is None:
            if sys.stderr.isatty():
                from tqdm import tqdm

                done = int(self.rows[-1]["round"]) if self.rows else 0
                self._bar = tqdm(total=total, initial=done, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            else:
                self._lines = _to_stderr

    def write_round(self, row: Mapping[str, Any]) -> None:
        """Write one row (:meth:`RunWriter.write_round`) and show it (the bar, or a line)."""
        previous = self.rows[-1] if self.rows else None
        super().write_round(row)
        if self._bar is not None:
            loss = row["train_loss"]
            self._bar.set_postfix(
                acc=f"{row['test_accuracy']:.4f}", loss="-" if loss is None else f"{loss:.3f}", MB=f"{_mb(row):.1f}"
            )
            self._bar.update(int(row["round"]) - self._bar.n)
        if self._lines is not None:
            self._lines(round_line(row, previous, self.total, self.desc, self.unit))

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def write_summary(self, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Close the bar; write ``summary.json`` and the plot; return the summary."""
        self.close()
        return super().write_summary(config, extra)

    def table(self, summary: Mapping[str, Any]) -> str:
        """The results table of this run (:func:`results_table`)."""
        return results_table(summary, self.rows, self.out_dir, self.unit)


def results_table(
    summary: Mapping[str, Any], rows: list[dict[str, Any]], out_dir: str | Path, unit: str = "round"
) -> str:
    """The short results table printed at the end of a run (every command), with the paths written.

    Parameters
    ----------
    summary:
        The run's ``summary.json`` content.
    rows:
        Its metrics rows (at most 8 shown: the first 3 and the last 4).
    out_dir:
        The run's folder (the files in it are listed).
    unit:
        What a row's ``round`` counts (``round``, ``step``).
    """
    out = Path(out_dir)
    lines = ["", f"{unit:>5}  train_loss  test_acc  test_acc_dense  uplink_MB  downlink_MB  dropped"]
    shown: list[dict[str, Any] | None] = list(rows) if len(rows) <= 8 else [*rows[:3], None, *rows[-4:]]
    for r in shown:
        if r is None:
            lines.append("  ...")
            continue
        lines.append(
            f"{r['round']:>5}  {_num(r['train_loss'], 10)}  {r['test_accuracy']:>8.4f}"
            f"  {r['test_accuracy_dense']:>14.4f}"
            f"  {_num(_scaled(r['cum_uplink_bytes']), 9, 3)}  {_num(_scaled(r['cum_downlink_bytes']), 11, 3)}"
            f"  {r['dropped']:>7}"
        )
    # the final round's accuracy only: the best round's would be chosen on the test set (no model is selected)
    final, dense = (summary.get(k) for k in ("final_test_accuracy", "final_test_accuracy_dense"))
    if final is not None:
        lines.append(f"final test accuracy {final:.4f} (dense {dense:.4f}); wall {summary['wall_s']:.1f} s")
    files = [out / name for name in ("metrics.jsonl", "summary.json", "accuracy_vs_mb.png", MODEL, CHECKPOINT)]
    lines += [f"{'wrote' if i == 0 else '':<5} {p}" for i, p in enumerate(p for p in files if p.exists())]
    return "\n".join(lines)


def round_line(
    row: Mapping[str, Any], previous: Mapping[str, Any] | None, total: int, desc: str, unit: str = "round"
) -> str:
    """One row as a log line: ``FL round 3/30: loss 0.4123, acc 0.9521, up 7.58 MB, down 94.90 MB, 1.23 s/round``.

    MB are cumulative payload bytes each way (``-`` where a run does not measure them); the time
    per round is the row's ``wall_s`` less the previous row's (rounds between rows are averaged).
    """
    n = int(row["round"])
    since = int(previous["round"]) if previous is not None else 0
    elapsed = float(row["wall_s"]) - (float(previous["wall_s"]) if previous is not None else 0.0)
    loss = row["train_loss"]
    up, down = _scaled(row["cum_uplink_bytes"]), _scaled(row["cum_downlink_bytes"])
    return (
        f"{desc} {unit} {n}/{total}: loss {'-' if loss is None else f'{loss:.4f}'}, acc {row['test_accuracy']:.4f}, "
        f"up {'-' if up is None else f'{up:.2f}'} MB, down {'-' if down is None else f'{down:.2f}'} MB, "
        f"{elapsed / max(n - since, 1):.2f} s/{unit}"
    )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _mb(row: Mapping[str, Any]) -> float:
    return ((row["cum_uplink_bytes"] or 0) + (row["cum_downlink_bytes"] or 0)) / 1e6


def _scaled(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _num(value: float | None, width: int, digits: int = 4) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
