"""The split-learning accuracy benchmark runs its grid and reports measured bytes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from simulations.bench_sl_accuracy import DEFAULT_CONFIG, main


def test_tiny_grid_end_to_end(tmp_path: Path) -> None:
    bench = yaml.safe_load(DEFAULT_CONFIG.read_text())
    bench["base"].update({"clients": 2, "rounds": 1, "max_steps_per_round": 2})
    bench["groups"] = {
        "tiny": {"modes": ["splitfed2"], "codecs": ["none", "ms"], "vary": {"batches_per_message": [1, 2]}},
        "seeds": {"modes": ["splitfed2"], "codecs": ["ms"], "seeds": [0, 1]},
    }
    conf = tmp_path / "bench.yaml"
    conf.write_text(yaml.safe_dump(bench, sort_keys=False))
    out = tmp_path / "acc.json"
    assert main(["--config", str(conf), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    seeded = rows.pop()
    assert seeded["seeds"] == [0, 1] and len(seeded["final_test_accuracy_per_seed"]) == 2
    a, b = seeded["final_test_accuracy_per_seed"]
    assert abs(seeded["final_test_accuracy"] - (a + b) / 2) < 1e-12
    assert abs(seeded["final_test_accuracy_std"] - abs(a - b) / 2) < 1e-12
    assert [(r["codec"], r["batches_per_message"]) for r in rows] == [
        ("none", 1),
        ("none", 2),
        ("ms:keep=0.01,bits=2", 1),
        ("ms:keep=0.01,bits=2", 2),
    ]
    # measured bits per element: float32 for none (+ header), 2.32 for MS (+ header)
    assert 32.0 < rows[0]["bits_per_element"] < 32.01
    assert 2.32 < rows[2]["bits_per_element"] < 2.33
    assert "| tiny batches_per_message=2 | splitfed2 | `none` |" in out.with_suffix(".md").read_text()
