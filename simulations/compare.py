"""``fl-split compare``: run a grid of split-learning and FL cells and compare them at measured bytes.

Each cell runs in ``OUT/cells/<key>/`` (its own ``metrics.jsonl`` and ``summary.json``); a cell
whose ``summary.json`` is there is not run again (the key is a hash of its resolved config, so a
changed config is a new cell). A cell that raises is reported as failed (``error.txt``) and the
others go on; a rerun tries it again. ``--jobs N`` runs N cells at once in separate processes.
At the end: ``summary.csv``, ``summary.md`` and the plots ``accuracy_vs_mb.png`` (1),
``codec_error.png`` (2, with ``codec_error.csv``) and ``mb_to_target.png`` (3).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from fl_split.compare.cells import Cell, cell_result, expand_grid, stored_cell_key, stored_config_differs
from fl_split.config import ConfigError, resolve_config_path
from fl_split.link import PROFILES, LinkProfile, parse_link
from fl_split.metrics import read_metrics
from fl_split.sl.config import SLConfig

#: Columns of ``summary.csv`` / ``summary.md``, in order.
COLUMNS = [
    "cell",
    "seed",
    "scheme",
    "codec",
    "downlink",
    "cut",
    "mode",
    "error_feedback",
    "status",
    "final_accuracy",
    "best_accuracy",
    "mb_up",
    "mb_down",
    "mb_to_target",
    "mb_up_to_target",
    "mb_down_to_target",
    "wall_s",
    "s_to_target",
    "link",
    "s_to_target_link",
    "uplink_bits_per_element",
    "test_images",
    "key",
]


def _adopt_and_check(cells_dir: Path, cells: Sequence[Cell]) -> None:
    """Match stored runs to the grid's cells by their configs, not only their folder names.

    A stored run in a folder named by an older key rule (or by the key of a config a release has since
    extended) moves to its cell's folder when its config is that cell's; a run whose folder matches a
    cell but whose config differs (a default changed since it ran) moves aside to ``KEY.stale``, and the
    cell runs again.
    """
    if not cells_dir.is_dir():
        return
    wanted = {c.key: c for c in cells}

    def stored(folder: Path) -> dict[str, Any] | None:
        try:
            config = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    for folder in sorted(p for p in cells_dir.iterdir() if p.is_dir() and p.name not in wanted and "." not in p.name):
        config = stored(folder)
        key = stored_cell_key(config) if config is not None else None
        if key in wanted and not (cells_dir / key).exists():
            print(f"compare: adopting the stored run {folder.name} as cell {wanted[key].label!r}", file=sys.stderr)
            folder.rename(cells_dir / key)
    for key, cell in wanted.items():
        config = stored(cells_dir / key)
        differs = stored_config_differs(cell, config) if config is not None else []
        if differs:
            print(
                f"compare: the stored run of {cell.label!r} (seed {cell.seed}) has another {', '.join(differs[:3])}; "
                "moved aside (KEY.stale), running it again",
                file=sys.stderr,
            )
            aside = cells_dir / f"{key}.stale"
            n = 1
            while aside.exists():
                n += 1
                aside = cells_dir / f"{key}.stale{n}"
            (cells_dir / key).rename(aside)


def run_cell(cell: Cell, cell_dir: str) -> str:
    """Run one cell into ``cell_dir``; ``"completed"``, or ``"failed: ..."`` (the traceback in ``error.txt``)."""
    out = Path(cell_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = cell.config.replace(out_dir=str(out), progress=False, existing_out="overwrite")
    try:
        if isinstance(config, SLConfig):
            from simulations.sl import run_sl

            run_sl(config)
        else:
            import logging

            from simulations.fl import run_fl

            logging.getLogger("flwr").setLevel(logging.WARNING)  # one line per round and node, times 30 rounds
            run_fl(config)
    except Exception as exc:  # one cell's failure is a result; the grid goes on
        (out / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        (out / "summary.json").unlink(missing_ok=True)
        return f"failed: {type(exc).__name__}: {exc}"
    (out / "error.txt").unlink(missing_ok=True)
    return "completed"


def load_grid(name_or_path: str) -> dict[str, Any]:
    """A grid config: ``conf/compare/NAME.yaml`` or a path.

    Raises
    ------
    ConfigError
        The file is not a mapping.
    """
    path = resolve_config_path(name_or_path, "compare")
    grid = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: a grid config is a mapping with base, sl, fl, target_accuracy")
    return grid


def run_grid(
    grid: dict[str, Any],
    out_dir: str | Path,
    jobs: int = 1,
    progress: bool = True,
    overrides: Sequence[str] = (),
    link: LinkProfile | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not yet done; write and return the summary rows (one per cell, grid order).

    ``overrides``: ``KEY=VALUE`` for every cell that has the key (:func:`expand_grid`). Progress is
    a bar on a terminal, else a line per finished cell. ``link``: add the link model's time to the
    target on that link (:func:`~fl_split.compare.cells.cell_result`).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    cells = expand_grid(grid, overrides)
    target = float(grid.get("target_accuracy", 0.9))
    _adopt_and_check(out / "cells", cells)
    todo = [c for c in cells if not (out / "cells" / c.key / "summary.json").exists()]
    errors: dict[str, str] = {}
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc="compare",
        unit="cell",
        disable=not (progress and sys.stderr.isatty()),
    )
    done = len(cells) - len(todo)

    def finished(cell: Cell, status: str) -> None:
        nonlocal done
        done += 1
        if status != "completed":
            errors[cell.key] = status
        bar.update()
        if progress and bar.disable:
            print(f"compare cell {done}/{len(cells)}: {cell.label}: {status}", file=sys.stderr, flush=True)

    if jobs <= 1:
        for cell in todo:
            bar.set_postfix_str(cell.label)
            finished(cell, run_cell(cell, str(out / "cells" / cell.key)))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, c, str(out / "cells" / c.key)): c for c in todo}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
    bar.close()
    rows = []
    for cell in cells:
        cell_dir = out / "cells" / cell.key
        summary_path = cell_dir / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            rows.append(cell_result(cell, summary, read_metrics(cell_dir / "metrics.jsonl"), target, link))
        else:
            rows.append(cell_result(cell, {"status": errors.get(cell.key, "failed")}, [], target, link))
    write_summary(rows, out, grid, target, link)
    return rows


def _cell_text(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std``; the mean alone when there is no spread to give (one run: ``std`` is ``None``)."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_summary(
    rows: list[dict[str, Any]], out: Path, grid: dict[str, Any], target: float, link: LinkProfile | None = None
) -> None:
    """``summary.csv`` (a row per run), ``summary_by_cell.csv`` and ``summary.md`` (a row per cell: mean
    ± std over its seeds) and the two plots."""
    from fl_split.compare.plots import plot_accuracy_vs_mb_grid, plot_mb_to_target
    from fl_split.compare.stats import AGGREGATE_COLUMNS, aggregate

    out.mkdir(parents=True, exist_ok=True)
    by_cell = aggregate(rows)
    for name, columns, table in (("summary.csv", COLUMNS, rows), ("summary_by_cell.csv", AGGREGATE_COLUMNS, by_cell)):
        with (out / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    images = {r["test_images"] for r in rows if r.get("test_images")}
    lines = [
        f"# {grid.get('title', 'fl-split compare')}",
        "",
        f"Target test accuracy {target}. Each cell ran with seeds {by_cell[0]['seeds'] if by_cell else '-'}: mean ± "
        "sample standard deviation over them (accuracy over the runs that completed; MB over those that reached "
        "the target, `reached` of how many). MB are measured payload bytes, up + down and then each direction."
        + (
            f" The test set holds {images.pop()} images; `± images` is the accuracy spread in images."
            if len(images) == 1
            else ""
        ),
        "",
        "| cell | uplink bits/element | final accuracy | ± images | reached | MB to target | uplink MB to target "
        "| downlink MB to target |" + (f" s to target on {link.name} (model) |" if link else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if link else ""),
    ]
    if link is not None:
        lines[2] += (
            f" The last column is the link model's time to the target with every client on its own {link.describe()}"
            " link (fl_split.link), from the run's measured bytes and times."
        )
    for r in by_cell:
        acc = r["status"] if not r["completed"] else _pm(r["final_accuracy_mean"], r["final_accuracy_std"], 4)
        mb = [_pm(r[f"{k}_mean"], r[f"{k}_std"], 1) for k in ("mb_to_target", "mb_up_to_target", "mb_down_to_target")]
        if r["mb_to_target_mean"] is None:
            mb = ["not reached"] * 3
        bits, spread = _cell_text(r["uplink_bits_per_element_mean"], 2), _cell_text(r["std_in_test_images"], 1)
        if link is not None:
            mb.append(_pm(r["s_to_target_link_mean"], r["s_to_target_link_std"], 1) if r["reached"][0] != "0" else "–")
        lines.append(f"| {r['cell']} | {bits} | {acc} | {spread} | {r['reached']} | " + " | ".join(mb) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    curves = {}
    for r in rows:
        metrics = out / "cells" / r["key"] / "metrics.jsonl"
        if metrics.exists():
            curves[r["key"]] = read_metrics(metrics)
    plot_accuracy_vs_mb_grid(rows, curves, out / "accuracy_vs_mb.png", target)
    plot_mb_to_target(by_cell, out / "mb_to_target.png", target)
    write_codec_error(out, int(grid.get("feature_maps", 64)))


def write_codec_error(out: Path, n: int) -> None:
    """Plot 2: every codec's error against measured bits per element on real cut-layer feature maps
    (``n`` post-ReLU 64x16x16 maps of a digits CNN trained 100 steps); ``codec_error.csv`` and ``.png``."""
    from fl_split.compare.codec_error import codec_error_curves, plot_codec_error
    from fl_split.data.feature_maps import real_feature_maps

    rows = codec_error_curves(real_feature_maps(n))
    with (out / "codec_error.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_codec_error(rows, out / "codec_error.png", title=f"{n} real cut-layer feature maps (digits CNN)")


def main(argv: list[str] | None = None) -> int:
    """``fl-split compare [--config NAME|PATH] [--set KEY=VALUE ...] [--out DIR] [--jobs N] [--link L]``."""
    from fl_split.plugins import add_import_option, add_plugins

    parser = argparse.ArgumentParser(prog="fl-split compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="conf/compare/NAME.yaml or a path (default: default)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="a config key for every cell that has it, over the grid's values (e.g. rounds=2 seed=1)",
    )
    parser.add_argument("--out", default="runs/compare", help="output folder (cells are kept here for reruns)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    parser.add_argument("--no-progress", action="store_true", help="no bar or per-cell lines")
    parser.add_argument(
        "--link",
        default=None,
        help="add the time to the target on this link (the link model): a profile name ("
        + ", ".join(PROFILES)
        + ") or up=MBIT,down=MBIT[,rtt=MS]",
    )
    add_import_option(parser)
    args = parser.parse_args(argv)
    try:
        link = None if args.link is None else parse_link(args.link)
    except ValueError as err:
        parser.error(f"--link: {err}")
    try:
        add_plugins(args.imports)
        grid = load_grid(args.config)
        rows = run_grid(grid, args.out, jobs=args.jobs, progress=not args.no_progress, overrides=args.set, link=link)
    except (ConfigError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    failed = [r for r in rows if r["status"] != "completed"]
    print(f"{len(rows)} cells, {len(failed)} failed; wrote {args.out}/summary.csv, summary.md and the plots")
    for r in failed:
        print(f"  {r['cell']}: {r['status']}", file=sys.stderr)
    return 0 if not failed else 1
