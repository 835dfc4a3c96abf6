"""``--import``: a user's module registers a codec, a dataset and a model, and every process sees them.

The module is the worked example of ``docs/extend.md`` (``docs/examples/my_extension.py``), so the
page's code is what is tested. The runs go through the real CLI in a subprocess: Ray's actors (the
simulated ClientApps) are other processes, which must import the module too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_split.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "my_extension.py"


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FL_SPLIT_IMPORT"}
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_an_imported_codec_dataset_and_model_train_split_learning_over_flower(tmp_path: Path) -> None:
    """Four clients in Ray actors decode, load and build the user's names: 2 bytes per activation
    element (the codec), the dataset's 4 classes learnt (a wrong dataset or model could not reach 0.9)."""
    out = tmp_path / "run"
    args = ("--set", "dataset=blobs", "uplink=half2", "clients=4", "rounds=2", "progress=false", "--out", str(out))
    done = _cli("sl", "--import", str(EXAMPLE), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out / "metrics.jsonl")
    assert summary["status"] == "completed" and summary["final_test_accuracy"] >= 0.9
    assert (summary["config"]["uplink"], summary["config"]["model"]) == ("half2", "auto")  # auto: the dataset's model
    row = rows[-1]
    assert row["clients"] == 4 and row["failed_clients"] == 0 and row["dropped"] == 0
    per_element = row["uplink_activation_bytes"] / (row["samples"] * 32)  # 32 activations per sample at the cut
    assert 2.0 <= per_element < 2.1, per_element  # bfloat16 plus the payload headers


def test_without_the_import_the_names_are_unknown_and_a_bad_import_is_one_line(tmp_path: Path) -> None:
    done = _cli("sl", "--set", "dataset=blobs", "--print-config", cwd=tmp_path)
    assert done.returncode == 2 and "config key 'dataset' must be one of digits" in done.stderr
    done = _cli(
        "sl", "--import", str(EXAMPLE), "--set", "dataset=blobs", "uplink=half2", "--print-config", cwd=tmp_path
    )
    assert done.returncode == 0 and "dataset: blobs" in done.stdout and "uplink: half2" in done.stdout
    done = _cli("codecs", "--import", str(EXAMPLE), cwd=tmp_path)
    assert done.returncode == 0 and "half2     bfloat16 under another name" in done.stdout
    (tmp_path / "broken_ext.py").write_text("raise RuntimeError('boom')\n")
    for bad, needle in (("no_such_module_here", "ModuleNotFoundError"), ("broken_ext", "RuntimeError: boom")):
        done = _cli("codecs", "--import", bad, cwd=tmp_path)  # a module name is found in the working directory
        assert done.returncode == 2 and f"--import {bad}: {needle}" in done.stderr and "Traceback" not in done.stderr


def test_a_registered_loader_that_returns_the_wrong_shape_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_split.data import registry

    monkeypatch.setattr(registry, "_INFOS", dict(registry._INFOS))  # registrations undone after the test
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))

    @registry.register_dataset("flat_blobs", num_classes=3, input_shape=(1, 4, 4))
    def flat(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(10, 16), torch.zeros(10, dtype=torch.int64)  # forgot the view to (1, 4, 4)

    with pytest.raises(ValueError, match=r"dataset 'flat_blobs' \(train\): got torch.float32 \(10, 16\) inputs"):
        registry.load_dataset("flat_blobs", "train", seed=123)
    with pytest.raises(ValueError, match="dataset 'digits' is already registered"):
        registry.register_dataset("digits", num_classes=10, input_shape=(1, 16, 16))
