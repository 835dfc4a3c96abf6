"""Split-learning configs: codec specs, --set overrides, errors that list choices, the Flower run config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fl_split.codecs import codec_from_spec, parse_codec_spec
from fl_split.config import ConfigError, flat_fields, from_run_config, to_run_config
from fl_split.fl.config import FL_SCHEMA, load_fl_config
from fl_split.sl.config import SL_SCHEMA, SLConfig, load_sl_config, validate_sl
from simulations.apps import task_config
from simulations.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_codec_spec_parses_types_and_builds_the_codec() -> None:
    assert parse_codec_spec("ms:keep=0.01,bits=2") == ("ms", {"keep": 0.01, "bits": 2})
    assert parse_codec_spec("ms: keep=0.5 , signed=true") == ("ms", {"keep": 0.5, "signed": True})
    assert parse_codec_spec("none") == ("none", {})
    codec = codec_from_spec("topk:keep=0.04125")
    assert codec.name == "topk" and codec.config()["keep"] == 0.04125


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("msx", "registered codecs: bf16, bird"),
        ("ms:kep=0.1", "its parameters: keep, bits, signed"),
        ("ms:keep", "expected key=value"),
        ("ms:keep=0.1,keep=0.2", "sets 'keep' twice"),
        ("ms:keep=2", "must be in (0, 1)"),
        ("", "codecs: bf16"),
    ],
)
def test_bad_codec_specs_say_what_is_valid(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        codec_from_spec(spec)
    assert needle in str(err.value)


def test_defaults_overrides_and_dotted_keys() -> None:
    cfg = load_sl_config("sl", ["optimizer.lr=0.1", "rounds=3", "uplink=topk:keep=0.05", "cut=3"])
    assert cfg["optimizer"]["lr"] == 0.1 and cfg["rounds"] == 3 and cfg["cut"] == 3
    assert cfg["uplink"] == "topk:keep=0.05"
    assert cfg["clients"] == 10 and cfg["mode"] == "splitfed2" and cfg["engine"] == "flower"
    assert load_sl_config("sl", ["fraction=1"])["fraction"] == 1.0  # int accepted where float is


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("nosuch=1", "unknown config key 'nosuch' in --set; `fl-split sl --list-keys` lists every key"),
        ("lr=0.1", "unknown config key 'lr' (did you mean 'optimizer.lr'?)"),
        ("optimizer.nosuch=1", "unknown config key 'optimizer.nosuch'"),
        ("mode=vanilla", "one of sequential, splitfed1, splitfed2"),
        ("engine=ray", "one of flower, inprocess"),
        ("dataset=svhn", "one of digits, mnist1d, cifar10"),
        ("model=vit", "one of auto, digits_cnn"),
        ("partition=zipf", "one of iid, dirichlet, shard"),
        ("rounds=0", "must be >= 1"),
        ("rounds=two", "must be int"),
        ("fraction=1.5", "must be in (0, 1]"),
        ("cut=middle", "named cuts: shallow, medium, deep"),
        ("uplink=ms:bits=9", "bits"),
        ("downlink=masked", "unknown codec 'masked'"),
        ("rounds", "--set expects key=value"),
        ("dataset=cifar10", "set data_dir"),
        ("downlink=mask", "keeps every position"),  # with uplink none below
    ],
)
def test_bad_keys_and_values_list_the_choices(override: str, needle: str) -> None:
    extra = ["uplink=none"] if override == "downlink=mask" else []
    with pytest.raises(ConfigError) as err:
        load_sl_config("sl", [*extra, override])
    assert needle in str(err.value)


def _pyproject_run_config() -> dict[str, object]:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat: dict[str, object] = {}
    for key, value in declared.items():  # TOML dotted keys are nested tables
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def test_flower_run_config_in_pyproject_gives_each_task_the_defaults_of_its_command() -> None:
    flat = _pyproject_run_config()
    fl_keys, sl_keys = set(flat_fields(FL_SCHEMA)), set(flat_fields(SL_SCHEMA))
    task, sl = task_config(flat)
    from_yaml = load_sl_config("sl").replace(progress=sl.progress)  # flwr run has no terminal for a bar
    assert task == "sl" and sl == from_yaml
    fl_only = {k.replace("_", "-") for k in fl_keys - sl_keys}
    assert set(flat) == set(to_run_config(from_yaml)) | fl_only, "every config key of both tasks is a run-config key"
    # mode = "fl": the same run config gives `fl-split fl`'s defaults, not split learning's
    task, fl = task_config({**flat, "mode": "fl"})
    from_fl_yaml = load_fl_config("fl").replace(progress=fl.progress)
    assert task == "fl" and fl == from_fl_yaml
    assert (fl["rounds"], fl["optimizer"]["lr"], fl["uplink"], fl["out_dir"]) == (
        30,
        0.05,
        "ms:keep=0.01,bits=2,signed=true",
        "runs/fl",
    )
    assert (sl["rounds"], sl["optimizer"]["lr"], sl["uplink"], sl["out_dir"]) == (
        10,
        0.02,
        "ms:keep=0.01,bits=2",
        "runs/sl",
    )
    # -c overrides still win over either task's defaults
    _, fl = task_config({**flat, "mode": "fl", "rounds": 3, "uplink": "topk:keep=0.01", "error-feedback": False})
    assert (fl["rounds"], fl["uplink"], fl["error_feedback"]) == (3, "topk:keep=0.01", False)
    with pytest.raises(ConfigError, match="add signed=true"):
        task_config({**flat, "mode": "fl", "uplink": "ms:keep=0.01,bits=2"})
    # a key of the other task, set, is refused with the mode it needs (not silently ignored)
    with pytest.raises(ConfigError, match=r"'cut' = 'deep' belongs to split learning"):
        task_config({**flat, "mode": "fl", "cut": "deep"})
    with pytest.raises(ConfigError, match=r"'error-feedback' = False belongs to federated learning \(mode='fl'\)"):
        task_config({**flat, "error-feedback": False})
    with pytest.raises(ConfigError, match="no-such-key"):
        task_config({**flat, "mode": "fl", "no-such-key": 1})


def test_run_config_round_trip_and_unknown_run_config_key() -> None:
    cfg = load_sl_config("sl", ["data_dir=/data"])
    assert from_run_config(SL_SCHEMA, to_run_config(cfg)) == cfg.to_dict()
    assert SLConfig.from_run_config(to_run_config(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"'local-epoch' \(did you mean 'local-epochs'\?\) in the Flower run config"):
        SLConfig.from_run_config({"local-epoch": 3})


def test_cli_sl_inprocess_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "sl",
            "--set",
            "engine=inprocess",
            "rounds=1",
            "clients=2",
            "progress=false",
            "max_steps_per_round=3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text and str(out / "metrics.jsonl") in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["steps"] == 6
    assert json.loads((out / "summary.json").read_text())["config"]["clients"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "clients=0"], "'clients'"),
        (["--config", "nosuch"], "no sl config named 'nosuch'"),
        (["--set", "model=vgg19", "engine=inprocess"], "does not accept 'digits' inputs"),
        (["--set", "cut=9", "engine=inprocess"], "integer in 1..6"),
        (["--set", "dataset=mnist", "data_dir=/nonexistent", "engine=inprocess"], "obtain it on a machine"),
    ],
)
def test_cli_errors_before_training(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sl", *args, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing started, nothing written


def test_cli_list_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sl", "--list-keys"]) == 0
    text = capsys.readouterr().out
    assert "optimizer.lr" in text and "one of: sequential, splitfed1, splitfed2" in text


def test_client_app_without_partition_id_says_how_to_start_the_supernode() -> None:
    from simulations.client_app import node_partition

    assert node_partition({"partition-id": 3, "num-partitions": 10}) == (3, 10)
    with pytest.raises(ValueError, match='--node-config "partition-id=0 num-partitions=2"'):
        node_partition({})
    with pytest.raises(ValueError, match="outside"):
        node_partition({"partition-id": 2, "num-partitions": 2})


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "sl").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sl_config_resolves(path: Path) -> None:
    from fl_split.config import build_config

    values = {"data_dir": "/data"} if "cifar" in path.stem else {}
    cfg = build_config(SL_SCHEMA, file=path, values=values, validate=validate_sl)
    assert cfg == load_sl_config(path.stem, values=values).to_dict()  # found by name under conf/sl/
