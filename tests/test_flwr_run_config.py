"""``conf/flwr/*.toml``: run-config files for ``flwr run . --run-config FILE``, read as Flower reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from fl_split.config import ConfigError
from fl_split.fl.config import FLConfig
from simulations.apps import task_config

REPO = Path(__file__).resolve().parents[1]


def test_the_fl_toml_selects_fl_with_its_keys_through_flowers_own_parser_and_merge() -> None:
    overrides = parse_config_args([str(REPO / "conf" / "flwr" / "fl.toml")])
    assert overrides["optimizer.lr"] == 0.05  # a TOML table flattens to the dotted run-config key
    fused = get_fused_config_from_dir(REPO, overrides)  # raises on a key the app does not declare
    task, config = task_config(fused)
    assert task == "fl" and isinstance(config, FLConfig)
    assert (config.rounds, config.uplink, config.error_feedback, config.out_dir) == (
        30,
        "ms:keep=0.01,bits=2,signed=true",
        True,
        "runs/flwr-fl",
    )
    assert config.optimizer["lr"] == 0.05 and config.local_epochs == 1


def test_a_misspelt_key_in_a_toml_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "fl"\nround = 3\n')
    with pytest.raises(ValueError, match="round"):
        get_fused_config_from_dir(REPO, parse_config_args([str(bad)]))
    wrong_task = tmp_path / "wrong.toml"
    wrong_task.write_text('mode = "fl"\ncut = "deep"\n')
    with pytest.raises(ConfigError, match="cut"):
        task_config(get_fused_config_from_dir(REPO, parse_config_args([str(wrong_task)])))
