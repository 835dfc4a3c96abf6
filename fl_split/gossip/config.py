"""The decentralized-learning configuration schema (``fl-split gossip``)."""

from __future__ import annotations

from typing import Any

from fl_split.checkpoint import output_fields
from fl_split.config import (
    ConfigError,
    Field,
    Schema,
    at_least_one,
    build_config,
    check_data_source,
    fraction,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import data_fields
from fl_split.gossip.topology import TOPOLOGIES

ALGORITHMS = ("malcom", "choco")
TRANSPORTS = ("inprocess", "distributed")
#: Malcom-PSGD's codec: QSGD-style dithered quantization (s = 15) with the source coder, rescaled (spec R3, T7).
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


GOSSIP_SCHEMA: Schema = {
    "algorithm": Field(
        "malcom",
        (str,),
        "malcom (Malcom-PSGD: L1 prox + dither codec) or choco (CHOCO-SGD with any codec, no L1)",
        ALGORITHMS,
    ),
    "nodes": Field(8, (int,), "number of nodes (each holds an IID shard of the data)", check=at_least_one),
    "topology": Field("ring", (str,), "communication graph", TOPOLOGIES),
    "torus_shape": Field(None, (list, type(None)), "torus: [rows, cols] (default: the most square)", check=_two_sizes),
    "edge_probability": Field(0.3, (float,), "erdos_renyi: probability of each edge", check=fraction),
    "graph_seed": Field(0, (int,), "erdos_renyi: seed of the graph"),
    "codec": Field(
        "auto",
        (str,),
        f"codec of the gossiped model differences (auto: malcom {MALCOM_CODEC}, choco qsgd:levels=16)",
        check=lambda v: None if v == "auto" else _model_difference(v),
    ),
    "gamma": Field(
        0.2, (float,), "consensus step size γ (0.5 let the nodes drift apart on the default ring)", check=positive
    ),
    "lr": Field(0.1, (float,), "SGD learning rate η (constant; plain SGD, no momentum)", check=positive),
    "l1": Field(
        None,
        (float, type(None)),
        "L1 weight λ: soft-threshold by η·λ after mixing (default: malcom 0.002, choco 0)",
        check=lambda v: None if v is None else non_negative(v),
    ),
    "rounds": Field(200, (int,), "iterations: one local SGD step and one gossip exchange each", check=at_least_one),
    "batch_size": Field(32, (int,), "batch size per node", check=at_least_one),
    "eval_every": Field(25, (int,), "rounds per metrics row (test accuracy of the average model)", check=at_least_one),
    **data_fields("model name (auto: the dataset's default; no BatchNorm)"),
    "seed": Field(0, (int,), "seed of the shared initial model, batch order and each node's codec draws"),
    "transport": Field(
        "inprocess",
        (str,),
        "inprocess (all nodes in this process) or distributed (one torch.distributed rank per node)",
        TRANSPORTS,
    ),
    "threads": Field(0, (int,), "torch threads per process (0: cores / processes)", check=non_negative),
    "timeout_s": Field(60.0, (float,), "distributed: a rank waiting longer on a neighbour fails", check=positive),
    **output_fields("runs/gossip", rows_every="eval_every"),
}


def resolved_codec(config: dict[str, Any]) -> str:
    """The codec spec a run uses (``auto`` resolved by algorithm)."""
    if config["codec"] != "auto":
        return str(config["codec"])
    return MALCOM_CODEC if config["algorithm"] == "malcom" else "qsgd:levels=16"


def resolved_l1(config: dict[str, Any]) -> float:
    """The L1 weight a run uses (``None`` resolved by algorithm)."""
    if config["l1"] is not None:
        return float(config["l1"])
    return MALCOM_L1 if config["algorithm"] == "malcom" else 0.0


def _refuse_buffers(config: dict[str, Any]) -> None:
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


def validate_gossip(config: dict[str, Any]) -> None:
    """Cross-key checks.

    Raises
    ------
    ConfigError
        CHOCO-SGD with an L1 weight, fewer than 2 nodes, a topology that does not fit ``nodes``, or a
        model with buffers (BatchNorm), which gossip would leave unmixed.
    """
    if config["nodes"] < 2:
        raise ConfigError(f"gossip needs at least 2 nodes, got nodes={config['nodes']}")
    check_data_source(config)
    if config["algorithm"] == "choco" and resolved_l1(config) > 0:
        raise ConfigError("choco solves the unregularized problem: set l1=0 (or algorithm=malcom for the L1 prox)")
    _refuse_buffers(config)
    from fl_split.gossip.topology import TopologyError, config_topology

    try:
        config_topology(config)
    except TopologyError as exc:
        raise ConfigError(f"topology: {exc}") from exc


def load_gossip_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved and validated gossip config."""
    config = build_config(GOSSIP_SCHEMA, file=file, values=values, overrides=overrides, command="gossip")
    validate_gossip(config)
    return config
