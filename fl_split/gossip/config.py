"""The decentralized-learning configuration schema (``fl-split gossip``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fl_split.config import (
    ConfigError,
    Schema,
    at_least_one,
    check_data_source,
    fraction,
    key,
    model_choices,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import OUT_HELP, DataKeys, OutputKeys, checkpoint_at_rows
from fl_split.gossip.topology import TOPOLOGIES

ALGORITHMS = ("malcom", "choco")
TRANSPORTS = ("inprocess", "distributed")
#: Malcom-PSGD's codec: QSGD-style dithered quantization (s = 15), source coded, rescaled (docs/papers.md).
MALCOM_CODEC = "dither:levels=15,rescale=true"
#: Malcom-PSGD's default L1 weight: on the default run about 40 % of the weights are exactly 0 after
#: 200 rounds at 0.96 test accuracy (0.005 reaches 68 % zeros but only 0.90 on 4 nodes in 100 rounds).
MALCOM_L1 = 0.002
_model_difference = signed_codec_check("a model difference")


def _two_sizes(value: Any) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 2 for v in value)
    return None if ok else "[rows, cols], two ints >= 2 (rows x cols = nodes)"


@dataclass(frozen=True)
class GossipConfig(OutputKeys, DataKeys):
    """The decentralized-learning config (Malcom-PSGD or CHOCO-SGD over a graph of nodes)."""

    command: ClassVar[str] = "gossip"

    algorithm: str = key(
        "malcom", "malcom (Malcom-PSGD: L1 prox + dither codec) or choco (CHOCO-SGD with any codec, no L1)", ALGORITHMS
    )
    nodes: int = key(8, "number of nodes (each holds an IID shard of the data)", check=at_least_one)
    topology: str = key("ring", "communication graph", TOPOLOGIES)
    torus_shape: list[int] | None = key(None, "torus: [rows, cols] (default: the most square)", check=_two_sizes)
    edge_probability: float = key(0.3, "erdos_renyi: probability of each edge", check=fraction)
    graph_seed: int = key(0, "erdos_renyi: seed of the graph")
    codec: str = key(
        "auto",
        f"codec of the gossiped model differences (auto: malcom {MALCOM_CODEC}, choco qsgd:levels=16)",
        check=lambda v: None if v == "auto" else _model_difference(v),
    )
    gamma: float = key(0.2, "consensus step size γ (0.5 let the nodes drift apart on the default ring)", check=positive)
    lr: float = key(0.1, "SGD learning rate η (constant; plain SGD, no momentum)", check=positive)
    l1: float | None = key(
        None,
        "L1 weight λ: soft-threshold by η·λ after mixing (default: malcom 0.002, choco 0)",
        check=lambda v: None if v is None else non_negative(v),
    )
    rounds: int = key(200, "iterations: one local SGD step and one gossip exchange each", check=at_least_one)
    batch_size: int = key(32, "batch size per node", check=at_least_one)
    eval_every: int = key(25, "rounds per metrics row (test accuracy of the average model)", check=at_least_one)
    model: str = key("auto", "model name (auto: the dataset's default; no BatchNorm)", model_choices)
    seed: int = key(0, "seed of the shared initial model, batch order and each node's codec draws")
    transport: str = key(
        "inprocess",
        "inprocess (all nodes in this process) or distributed (one torch.distributed rank per node)",
        TRANSPORTS,
    )
    threads: int = key(0, "torch threads per process (0: cores / processes)", check=non_negative)
    timeout_s: float = key(60.0, "distributed: a rank waiting longer on a neighbour fails", check=positive)
    out_dir: str = key("runs/gossip", OUT_HELP)
    checkpoint_every: int = key(1, checkpoint_at_rows("eval_every"), check=non_negative)

    def check(self) -> None:
        """Cross-key checks.

        Raises
        ------
        ConfigError
            CHOCO-SGD with an L1 weight, fewer than 2 nodes, a topology that does not fit ``nodes``, or a
            model with buffers (BatchNorm), which gossip would leave unmixed.
        """
        if self.nodes < 2:
            raise ConfigError(f"gossip needs at least 2 nodes, got nodes={self.nodes}")
        check_data_source(self)
        if self.algorithm == "choco" and resolved_l1(self) > 0:
            raise ConfigError("choco solves the unregularized problem: set l1=0 (or algorithm=malcom for the L1 prox)")
        _refuse_buffers(self)
        from fl_split.gossip.topology import TopologyError, config_topology

        try:
            config_topology(self)
        except TopologyError as exc:
            raise ConfigError(f"topology: {exc}") from exc


#: The schema :class:`GossipConfig` declares.
GOSSIP_SCHEMA: Schema = GossipConfig.schema()


def resolved_codec(config: Mapping[str, Any]) -> str:
    """The codec spec a run uses (``auto`` resolved by algorithm)."""
    if config["codec"] != "auto":
        return str(config["codec"])
    return MALCOM_CODEC if config["algorithm"] == "malcom" else "qsgd:levels=16"


def resolved_l1(config: Mapping[str, Any]) -> float:
    """The L1 weight a run uses (``None`` resolved by algorithm)."""
    if config["l1"] is not None:
        return float(config["l1"])
    return MALCOM_L1 if config["algorithm"] == "malcom" else 0.0


def _refuse_buffers(config: Mapping[str, Any]) -> None:
    """Gossip mixes parameters only: a model with buffers (BatchNorm statistics) would keep them unmixed."""
    from fl_split.training import build_model

    model = build_model(config, seed=0)
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ConfigError(
            f"gossip mixes model parameters only, and model {config['model']!r} has buffers that would never be "
            f"gossiped ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''}: BatchNorm statistics); "
            "use a model without BatchNorm (model=auto: digits_cnn / mnist1d_cnn)"
        )


def validate_gossip(config: Mapping[str, Any]) -> None:
    """Check a resolved gossip config as :meth:`GossipConfig.check` does."""
    GossipConfig.from_dict(config)


def load_gossip_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: Mapping[str, Any] | None = None
) -> GossipConfig:
    """The resolved and validated gossip config (:meth:`GossipConfig.load`)."""
    return GossipConfig.load(file, overrides, values)
