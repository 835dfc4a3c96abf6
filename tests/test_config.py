"""The typed configs: one frozen dataclass per command, composed from shared blocks, validated once."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from fl_split.config import Config, ConfigError, flat_fields, key, plain
from fl_split.config_blocks import DataKeys, FederationKeys, Optimizer, OutputKeys, PartitionKeys, RayKeys
from fl_split.ddp.config import DDPConfig
from fl_split.fl.config import FLConfig
from fl_split.gossip.config import GossipConfig
from fl_split.sl.config import SLConfig

COMMANDS: list[type[Config]] = [SLConfig, FLConfig, DDPConfig, GossipConfig]
#: Keys a command redeclares to change a default (and nothing else about the key).
REDECLARED = {"out_dir", "checkpoint_every", "model", "lr", "momentum"}


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.command)
def test_a_config_is_frozen_typed_and_equal_to_its_round_trips(cls: type[Config], tmp_path: Any) -> None:
    cfg = cls.load(cls.command if cls in (SLConfig, FLConfig) else None, values={"out_dir": str(tmp_path)})
    assert dataclasses.is_dataclass(cfg) and cfg.out_dir == str(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.out_dir = "elsewhere"  # type: ignore[misc]
    # the mapping view reads the same values as the attributes
    assert list(cfg) == [f.name for f in dataclasses.fields(cfg)]
    assert all(cfg[name] is getattr(cfg, name) for name in cfg)
    with pytest.raises(KeyError):
        cfg["no_such_key"]
    # JSON (summaries, checkpoints, Flower records), a dict, pickle (spawned ranks): the same config back
    text = json.dumps(plain(cfg))
    assert cls.from_dict(json.loads(text)) == cfg == cls.from_dict(cfg.to_dict())
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_values_have_the_declared_types() -> None:
    cfg = SLConfig.load("sl", ["fraction=1", "optimizer.lr=1", "cut=3"])
    assert cfg.fraction == 1.0 and type(cfg.fraction) is float  # an int is accepted where a float is
    assert type(cfg.optimizer.lr) is float and cfg.optimizer.lr == 1.0
    assert cfg.cut == 3 and isinstance(cfg.optimizer, Optimizer)
    assert isinstance(SLConfig.load("sl").flower, RayKeys) and isinstance(FLConfig.load("fl").flower, RayKeys)
    with pytest.raises(ConfigError, match="'rounds' must be int, got 'ten'"):
        SLConfig.load("sl", ["rounds=ten"])


@pytest.mark.parametrize(
    "block", [DataKeys, PartitionKeys, FederationKeys, OutputKeys, Optimizer, RayKeys], ids=lambda b: b.__name__
)
def test_a_shared_block_means_the_same_in_every_command(block: type[Config]) -> None:
    """The same key, help, types, choices and check wherever a block appears; only a redeclared default differs."""
    users = 0
    for cls in COMMANDS:
        fields = flat_fields(cls.schema())
        prefix = {Optimizer: "optimizer.", RayKeys: "flower."}.get(block, "")
        mine = {f"{prefix}{k}": v for k, v in flat_fields(block.schema()).items()}
        if not all(k in fields for k in mine):
            # a command without the block may have a key of the same name only where it means something
            # else there (ddp's and gossip's seed: no partitioning or sampling)
            assert not any(k in fields for k in mine if k != "seed"), f"{cls.__name__} has part of {block.__name__}"
            continue
        users += 1
        for name, spec in mine.items():
            theirs = fields[name]
            assert theirs.types == spec.types, name
            if name.split(".")[-1] in REDECLARED:
                continue
            assert (theirs.help, theirs.default, theirs.choices, theirs.check) == (
                spec.help,
                spec.default,
                spec.choices,
                spec.check,
            ), f"{cls.__name__}.{name}"
    assert users >= 2, f"{block.__name__} is shared by {users} command(s)"


def test_each_command_keeps_its_own_defaults() -> None:
    assert (SLConfig().optimizer.lr, FLConfig().optimizer.lr, DDPConfig().optimizer.lr) == (0.02, 0.05, 0.05)
    assert [c().out_dir for c in COMMANDS] == ["runs/sl", "runs/fl", "runs/ddp", "runs/gossip"]
    assert SLConfig().rounds == 10 and FLConfig().rounds == 30 and GossipConfig().rounds == 200


def test_replace_validates_and_keeps_the_rest_of_a_block() -> None:
    cfg = SLConfig.load("sl", ["optimizer.momentum=0.5", "rounds=3"])
    new = cfg.replace(optimizer={"lr": 0.5}, seed=7)
    assert (new.optimizer.lr, new.optimizer.momentum, new.rounds, new.seed) == (0.5, 0.5, 3, 7)
    assert cfg.seed == 0, "replace returns a copy"
    assert cfg.replace(**{"optimizer.lr": 0.25}).optimizer.lr == 0.25
    with pytest.raises(ConfigError, match="'rounds' = 0: must be >= 1"):
        cfg.replace(rounds=0)
    with pytest.raises(ConfigError, match=r"server_batching .* needs mode=splitfed2"):
        cfg.replace(server_batching=True, mode="sequential")


@pytest.mark.parametrize(
    ("cls", "override"),
    [(FLConfig, "uplink"), (DDPConfig, "codec"), (GossipConfig, "codec")],
    ids=lambda v: v if isinstance(v, str) else v.command,
)
def test_every_command_refuses_unsigned_ms_for_signed_values_up_front(cls: type[Config], override: str) -> None:
    with pytest.raises(ConfigError, match="add signed=true"):
        cls.load(overrides=[f"{override}=ms:keep=0.01"])
    assert cls.load(overrides=[f"{override}=ms:keep=0.01,signed=true"])[override] == "ms:keep=0.01,signed=true"


def test_cross_key_checks_run_whatever_builds_the_config() -> None:
    bad = {"transport": "stream", "engine": "inprocess"}
    for build in (lambda: SLConfig.from_dict(bad), lambda: SLConfig.load(values=bad)):
        with pytest.raises(ConfigError, match=r"transport=stream .* needs engine=flower"):
            build()
    with pytest.raises(ConfigError, match="choco solves the unregularized problem"):
        GossipConfig.from_dict({"algorithm": "choco", "l1": 0.001})
    with pytest.raises(ConfigError, match="read from disk: set data_dir"):
        DDPConfig.from_dict({"dataset": "cifar10"})


def test_a_key_declared_without_key_is_refused() -> None:
    @dataclass(frozen=True)
    class Sloppy(Config):
        command: ClassVar[str] = "sloppy"
        rounds: int = key(1, "rounds")
        lr: float = 0.1

    with pytest.raises(TypeError, match=r"Sloppy.lr: declare config keys with fl_split.config.key"):
        Sloppy.schema()
