"""Seeds in the comparison: the grid's ``seeds``, and the mean ± std a cell is summarised by."""

from __future__ import annotations

import statistics

import pytest

from fl_split.compare.cells import expand_grid
from fl_split.compare.stats import aggregate, mean_std
from fl_split.config import ConfigError


def _run(cell: str, seed: int, acc: float | None, mb: float | None, status: str = "completed") -> dict:
    return {
        "cell": cell,
        "seed": seed,
        "scheme": "sl",
        "codec": "none",
        "cut": "shallow",
        "mode": "splitfed2",
        "error_feedback": "",
        "status": status,
        "final_accuracy": acc,
        "mb_to_target": mb,
        "mb_up_to_target": None if mb is None else mb / 4,
        "mb_down_to_target": None if mb is None else 3 * mb / 4,
        "mb_up": 10.0,
        "mb_down": 30.0,
        "test_images": 360,
    }


def test_a_cell_is_its_mean_and_sample_std_over_seeds_with_the_spread_in_test_images() -> None:
    runs = [
        _run("a", 0, 0.95, 100.0),
        _run("a", 1, 0.96, 140.0),
        _run("a", 2, 0.93, None),
        _run("b", 0, None, None, "failed: x"),
    ]
    a, b = aggregate(runs)
    accs = [0.95, 0.96, 0.93]
    assert a["final_accuracy_mean"] == pytest.approx(statistics.mean(accs))
    assert a["final_accuracy_std"] == pytest.approx(statistics.stdev(accs))
    assert a["std_in_test_images"] == pytest.approx(round(statistics.stdev(accs) * 360, 1))
    assert (a["seeds"], a["completed"], a["reached"]) == ("0 1 2", 3, "2/3")
    assert a["mb_to_target_mean"] == 120.0 and a["mb_to_target_std"] == pytest.approx(statistics.stdev([100, 140]))
    assert a["mb_up_to_target_mean"] == 30.0 and a["mb_down_to_target_mean"] == 90.0
    assert (b["completed"], b["reached"], b["final_accuracy_mean"], b["mb_to_target_mean"]) == (0, "0/1", None, None)
    assert mean_std([0.5]) == (0.5, None) and mean_std([]) == (None, None)


def test_seeds_multiply_the_runs_and_keep_each_cells_runs_together() -> None:
    grid = {"seeds": [0, 3], "base": {"engine": "inprocess"}, "sl": {"codecs": ["none", "quant:bits=2"]}}
    cells = expand_grid(grid)
    assert [(c.label, c.seed) for c in cells] == [
        ("sl none shallow splitfed2", 0),
        ("sl none shallow splitfed2", 3),
        ("sl quant:bits=2 shallow splitfed2", 0),
        ("sl quant:bits=2 shallow splitfed2", 3),
    ]
    assert len({c.key for c in cells}) == 4
    # seed 0 from seeds is the same run as seed 0 from base: done runs are found again
    assert cells[0].key == expand_grid({"base": {"engine": "inprocess", "seed": 0}, "sl": {"codecs": ["none"]}})[0].key


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"seeds": [0, 0], "sl": {"codecs": ["none"]}}, "distinct non-negative integers"),
        ({"seeds": [0, "1"], "sl": {"codecs": ["none"]}}, "distinct non-negative integers"),
        ({"seeds": [], "sl": {"codecs": ["none"]}}, "non-empty list"),
        ({"seeds": [1], "base": {"seed": 0}, "sl": {"codecs": ["none"]}}, "seeds or base.seed, not both"),
    ],
)
def test_bad_seeds_are_a_config_error(grid: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_grid(grid)
