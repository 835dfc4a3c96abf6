"""``fl-split compare``: a tiny grid end to end, a failing cell, a rerun that does no work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fl_split.compare.cells import expand_grid
from fl_split.config import ConfigError
from simulations import compare

TINY = {
    "title": "tiny",
    "feature_maps": 4,
    "target_accuracy": 0.2,
    "base": {"engine": "inprocess", "clients": 2, "rounds": 2, "max_steps_per_round": 4, "seed": 0},
    "sl": {"codecs": ["ms:keep=0.01,bits=2", "topk:keep=0.01"], "cuts": ["shallow"], "modes": ["splitfed2"]},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """One serial run of :data:`TINY`: its folder and rows (two tests look at it)."""
    out = tmp_path_factory.mktemp("tiny")
    return out, compare.run_grid(TINY, out, progress=False)


def test_a_tiny_grid_writes_every_file_and_a_rerun_does_no_work(
    tiny: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path, rows = tiny
    assert [r["status"] for r in rows] == ["completed", "completed"]
    for name in ("summary.csv", "summary.md", "accuracy_vs_mb.png", "mb_to_target.png", "codec_error.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "summary.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["codec"] for t in table] == ["ms:keep=0.01,bits=2", "topk:keep=0.01"]
    for r in rows:  # bytes from the cell's own metrics: MS sends more than top-k at the same keep
        assert r["mb_up"] > 0 and r["mb_down"] > 0 and r["final_accuracy"] is not None
    assert rows[0]["mb_up"] > rows[1]["mb_up"]
    # measured bits per activation element: MS 2 bits + 1 % of 32-bit values, top-k 1 % of (value, index)
    assert 2.32 <= rows[0]["uplink_bits_per_element"] < 2.33 and 0.64 <= rows[1]["uplink_bits_per_element"] < 0.65
    calls: list[str] = []
    monkeypatch.setattr(compare, "run_cell", lambda cell, d: calls.append(cell.label) or "completed")
    again = compare.run_grid(TINY, tmp_path, progress=False)
    assert calls == [] and again == rows  # every cell was found done


def test_stored_runs_are_matched_by_config_adopted_from_old_folders_and_rerun_when_stale(
    tiny: tuple[Path, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stored under another folder name (an older key rule) is adopted; a run whose stored config
    differs from its cell's (a default changed since) is moved aside and runs again."""
    import shutil

    src, rows = tiny
    shutil.copytree(src / "cells", tmp_path / "cells")
    first, second = (r["key"] for r in rows)
    (tmp_path / "cells" / first).rename(tmp_path / "cells" / "0123456789abcdef")  # an old-rule folder name
    summary = tmp_path / "cells" / second / "summary.json"
    stored = json.loads(summary.read_text())
    stored["config"]["optimizer"]["lr"] = 0.5  # as if the default had been another when it ran
    summary.write_text(json.dumps(stored))
    calls: list[str] = []
    monkeypatch.setattr(compare, "run_cell", lambda cell, d: calls.append(cell.key) or "completed")
    compare.run_grid(TINY, tmp_path, progress=False)
    assert (tmp_path / "cells" / first / "summary.json").exists()  # adopted, not run
    assert calls == [second] and (tmp_path / "cells" / f"{second}.stale" / "summary.json").exists()


@pytest.mark.parametrize(
    ("variants", "words"),
    [
        ([{"uplink": "topk:keep=0.01"}], "are the same run"),  # repeats a grid cell
        ([{"gradients": "local"}, {"gradients": "local", "send_every": 1}], "are the same run"),
        ([{"gradients": "local", "cut": "medium"}], "a variant takes lists `cuts` and `modes`"),
        ([{"gradients": "local", "seed": 3}], "a variant takes lists `cuts` and `modes`"),
    ],
)
def test_a_variant_that_repeats_a_run_or_sets_a_cut_is_refused(variants: list, words: str) -> None:
    grid = {**TINY, "sl": {**TINY["sl"], "variants": variants}}
    with pytest.raises(ConfigError, match=words):
        expand_grid(grid)


def test_variant_labels_come_from_the_resolved_config() -> None:
    grid = {**TINY, "sl": {**TINY["sl"], "variants": [{"downlink": "mask"}, {"gradients": "local", "send_every": 2}]}}
    labels = [c.label for c in expand_grid(grid)]
    assert labels[2:] == [
        "sl ms:keep=0.01,bits=2 down mask shallow splitfed2",
        "sl ms:keep=0.01,bits=2 local every 2 shallow splitfed2",
    ]


def test_a_failing_cell_is_reported_and_the_other_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simulations.sl

    real = simulations.sl.run_sl

    def run_sl(config: dict, **kw: object) -> dict:
        if config["uplink"].startswith("topk"):
            raise FileNotFoundError("dataset folder /data/x not found: see README 'Data'")
        return real(config, **kw)

    monkeypatch.setattr(simulations.sl, "run_sl", run_sl)
    rows = compare.run_grid(TINY, tmp_path, progress=False)
    assert rows[0]["status"] == "completed" and rows[0]["final_accuracy"] is not None
    assert rows[1]["status"] == "failed: FileNotFoundError: dataset folder /data/x not found: see README 'Data'"
    assert "FileNotFoundError" in (tmp_path / "cells" / rows[1]["key"] / "error.txt").read_text()
    assert "| failed: FileNotFoundError" in (tmp_path / "summary.md").read_text()
    monkeypatch.setattr(simulations.sl, "run_sl", real)  # a rerun retries only the failed cell
    again = compare.run_grid(TINY, tmp_path, progress=False)
    assert [r["status"] for r in again] == ["completed", "completed"] and again[0] == rows[0]


def test_seeds_add_runs_next_to_the_done_ones_and_the_summary_gives_mean_and_spread(
    tiny: tuple[Path, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TINY with ``seeds: [0, 1]`` in a copy of its folder: seed 0's runs are found done, seed 1's run."""
    import shutil
    import statistics

    done, serial = tiny
    out = tmp_path / "seeds"
    shutil.copytree(done / "cells", out / "cells")
    grid = {**TINY, "seeds": [0, 1], "base": {k: v for k, v in TINY["base"].items() if k != "seed"}}
    ran: list[tuple[str, int]] = []
    real = compare.run_cell
    monkeypatch.setattr(compare, "run_cell", lambda cell, d: ran.append((cell.label, cell.seed)) or real(cell, d))
    rows = compare.run_grid(grid, out, progress=False)
    assert ran == [("sl ms:keep=0.01,bits=2 shallow splitfed2", 1), ("sl topk:keep=0.01 shallow splitfed2", 1)]
    assert [(r["cell"], r["seed"]) for r in rows] == [(s["cell"], seed) for s in serial for seed in (0, 1)]
    assert [r for r in rows if r["seed"] == 0] == serial and rows[0]["test_images"] == 360
    with (out / "summary_by_cell.csv").open() as fh:
        by_cell = list(csv.DictReader(fh))
    accs = [r["final_accuracy"] for r in rows[:2]]
    assert accs[0] != accs[1]  # the seed changes the run
    assert float(by_cell[0]["final_accuracy_std"]) == pytest.approx(statistics.stdev(accs))
    assert by_cell[0]["seeds"] == "0 1" and by_cell[0]["completed"] == "2"
    assert " ± " in (out / "summary.md").read_text()


def test_grid_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown keys \\['sll'\\]"):
        expand_grid({"sll": {}})
    with pytest.raises(ConfigError, match="cell 'sl nope shallow splitfed2'"):
        expand_grid({"sl": {"codecs": ["nope"]}})
    with pytest.raises(ConfigError, match="no cells"):
        expand_grid({"base": {}})


def test_jobs_run_cells_in_separate_processes_with_the_same_results(
    tiny: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    """``--jobs 2``: the two cells run in spawned processes; their rows equal a serial run's (deterministic SL)."""
    _, serial = tiny
    parallel = compare.run_grid(TINY, tmp_path / "parallel", jobs=2, progress=False)
    keys = ("cell", "status", "final_accuracy", "mb_up", "mb_down", "mb_to_target", "key")
    assert [[r[k] for k in keys] for r in parallel] == [[r[k] for k in keys] for r in serial]


def test_a_cells_key_hashes_the_keys_that_differ_from_their_defaults_so_a_new_key_keeps_the_old_keys() -> None:
    """Done cells are found again by this key: it hashes the values that differ from the defaults (dotted,
    as plain JSON, not the repr of a config object), so a key added later with a default changes no key."""
    import hashlib
    import json

    from fl_split.compare.cells import Cell
    from fl_split.sl.config import load_sl_config

    cfg = load_sl_config("sl", ["optimizer.lr=0.1", "rounds=3", "out_dir=/elsewhere"])
    text = json.dumps({"scheme": "sl", "config": {"optimizer.lr": 0.1, "rounds": 3}}, sort_keys=True)
    assert Cell("sl", "x", cfg).key == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert Cell("sl", "x", cfg.replace(optimizer={"lr": 0.2})).key != Cell("sl", "x", cfg).key
    # keys added after a grid ran (here: the local-loss keys), at their defaults, leave its keys as they were
    assert Cell("sl", "x", cfg.replace(gradients="server", send_every=1)).key == Cell("sl", "x", cfg).key
    assert Cell("sl", "x", cfg.replace(gradients="local")).key != Cell("sl", "x", cfg).key


def test_set_overrides_every_cell_that_has_the_key_over_the_grids_own_values() -> None:
    base = {k: v for k, v in TINY["base"].items() if k not in ("engine", "max_steps_per_round")}  # SL-only keys
    grid = {**TINY, "base": base, "fl": {"codecs": ["none"], "rounds": 5}}
    cells = expand_grid(grid, ["rounds=1", "cut=medium", "optimizer.lr=0.2"])
    sl = [c for c in cells if c.scheme == "sl"]
    (fl,) = [c for c in cells if c.scheme == "fl"]
    assert len(sl) == 2 and all(
        (c.config.rounds, c.config.cut, c.config.optimizer.lr) == (1, "medium", 0.2) for c in sl
    )
    assert (fl.config.rounds, fl.config.optimizer.lr) == (1, 0.2)  # over the fl block's rounds=5; FL has no cut
    assert [c.key for c in expand_grid(grid)] != [c.key for c in cells]  # another config: other cells
    with pytest.raises(ConfigError, match=r"compare --set: no cell has a key 'rouds' \(did you mean 'rounds'\?\)"):
        expand_grid(grid, ["rouds=1"])
