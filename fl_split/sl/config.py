"""The split-learning configuration schema (``fl-split sl``, the Flower app's run config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fl_split.config import (
    Config,
    ConfigError,
    Schema,
    at_least_one,
    block,
    check_data_source,
    client_device_check,
    codec_spec_check,
    is_device_name,
    key,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import (
    OUT_HELP,
    DataKeys,
    FederationKeys,
    Optimizer,
    OutputKeys,
    PartitionKeys,
    RayKeys,
    SeedKey,
)
from fl_split.data.partition import PARTITIONERS

ENGINES = ("flower", "inprocess")
TRANSPORTS = ("messages", "stream")
MODES = ("sequential", "splitfed1", "splitfed2")
#: Partition schemes (fl_split.data.partition).
PARTITIONS = PARTITIONERS
#: Downlink value meaning "the gradient only at the positions the uplink kept, no indices sent".
MASK = "mask"
#: Where a client half's gradient comes from (``gradients``): the server's activation gradient, sent back
#: (split learning as published), or the loss of an auxiliary head on the client (local-loss SL: nothing
#: is sent back).
GRADIENT_SOURCES = ("server", "local")


_activation_gradient = signed_codec_check("an activation gradient")


def _downlink_check(value: str) -> str | None:
    return None if value == MASK else _activation_gradient(value)


def _aux_head_check(value: str) -> str | None:
    from fl_split.models.aux_heads import AUX_HEADS

    return None if value in ("auto", *AUX_HEADS) else f"auto or one of {', '.join(AUX_HEADS)}"


def _cut_check(value: str | int) -> str | None:
    if isinstance(value, int):
        return None if value >= 1 else "an integer cut is the number of client layers, >= 1"
    return None if value in ("shallow", "medium", "deep") else "named cuts: shallow, medium, deep (or an integer)"


def _device_check(value: str) -> str | None:
    return None if is_device_name(value) else "cpu, cuda or cuda:N (the server half's torch device)"


def _accuracy_or_off(value: float) -> str | None:
    return None if 0 <= value <= 1 else "an accuracy in [0, 1] (0: off)"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "a TCP port in 0..65535 (0: a free one)"


@dataclass(frozen=True)
class SLOptimizer(Optimizer):
    """SGD of both halves; split learning's default lr is 0.02."""

    lr: float = key(0.02, "SGD learning rate (both halves)", check=positive)


@dataclass(frozen=True)
class StreamKeys(Config):
    """The ``stream`` block: the gRPC stream that carries a round's steps (``transport=stream``)."""

    host: str = key(
        "auto", "host the SuperNodes dial for the stream (auto: this machine's outward IP; 127.0.0.1 in simulation)"
    )
    bind: str = key("0.0.0.0", "interface the stream server listens on")
    port: int = key(0, "TCP port of the stream (0: a free one; fix it to open a firewall)", check=_port)
    max_message_mb: float = key(
        64.0, "largest frame accepted, MiB; a larger one is refused before decoding", check=positive
    )
    timeout_s: float = key(
        300.0, "a client gives up waiting for a gradient (the server for its answer) after this", check=positive
    )
    idle_timeout_s: float = key(
        120.0,
        "the server ends a stream whose next frame does not come within this long of its last gradient",
        check=positive,
    )
    ssl_certfile: str = key("", "TLS: the server certificate (PEM; as flower-superlink --ssl-certfile)")
    ssl_keyfile: str = key("", "TLS: its private key (PEM; as flower-superlink --ssl-keyfile)")
    ssl_ca_certfile: str = key("", "TLS: the CA certificate sent to clients to verify the server (empty: ssl_certfile)")
    insecure: bool = key(False, "accept a plaintext stream on a non-loopback address (without TLS it is refused)")


@dataclass(frozen=True)
class SLFlowerKeys(RayKeys):
    """The ``flower`` block of split learning: Ray's resources and the ServerApp's message timing."""

    poll_ms: float = key(1.0, "ServerApp wait between pulls for replies, milliseconds", check=positive)
    timeout_s: float = key(600.0, "give up on a client reply after this many seconds", check=positive)
    engine_wait_ms: float = key(
        100.0,
        "simulation engine's wait between polls of the nodes' inboxes, ms (100: Flower's own; less patches "
        "flwr 1.42.0's engine for `fl-split sl`, see simulations/engine.py)",
        check=positive,
    )


@dataclass(frozen=True)
class SLClientKeys(Config):
    """The keys a client half trains with besides the data, the partition and the seed: its batches, the
    cut, the codecs and SGD."""

    local_epochs: int = key(1, "passes over its partition a client makes per round", check=at_least_one)
    max_steps_per_round: int = key(0, "cap on a client's batches per round (0: no cap)", check=non_negative)
    batch_size: int = key(32, "samples per batch (one codec call per batch)", check=at_least_one)
    batches_per_message: int = key(1, "k batches per Flower message (1: exact vanilla SL)", check=at_least_one)
    cut: str | int = key("shallow", "shallow, medium, deep, or the number of client layers", check=_cut_check)
    uplink: str = key("ms:keep=0.01,bits=2", "codec spec for the activations", check=codec_spec_check)
    downlink: str = key("none", "codec spec for the activation gradient, or 'mask'", check=_downlink_check)
    gradients: str = key(
        "server",
        "where the client half's gradient comes from: server (the activation gradient, sent back) or local (an "
        "auxiliary head's loss on the client; no gradient is sent back)",
        GRADIENT_SOURCES,
    )
    aux_head: str = key(
        "auto", "gradients=local: the client's auxiliary head (auto, linear, pool, mlp)", check=_aux_head_check
    )
    send_every: int = key(
        1,
        "gradients=local: send the activations of every h-th batch only (the client trains on every batch)",
        check=at_least_one,
    )
    client_device: str = key(
        "auto",
        "torch device of the client half, its batches and its codec: auto (CUDA when the client process sees a GPU: "
        "in simulation when flower.num_gpus > 0 gave it a share), cpu, cuda, cuda:N",
        check=client_device_check,
    )
    optimizer: SLOptimizer = block(SLOptimizer)


@dataclass(frozen=True)
class SLClientTask(SLClientKeys, SeedKey, PartitionKeys, DataKeys):
    """What a split-learning client is sent in ``sl_begin``: only the keys it trains with (none of the
    server's: not its device, the outputs, the stream's TLS files or Flower's settings)."""

    @classmethod
    def of(cls, config: SLConfig) -> SLClientTask:
        """The client task of a resolved run config."""
        return cls.project(config)


@dataclass(frozen=True)
class SLConfig(SLClientKeys, OutputKeys, FederationKeys, PartitionKeys, DataKeys):
    """The split-learning config (``fl-split sl``, the Flower app's ``task = "sl"``)."""

    command: ClassVar[str] = "sl"

    engine: str = key("flower", "flower (Ray virtual clients) or inprocess (no Flower, same step functions)", ENGINES)
    mode: str = key("splitfed2", "how the server loops over clients", MODES)
    rounds: int = key(10, "training rounds", check=at_least_one)
    stop_at_accuracy: float = key(
        0.0,
        "end the run after the first round whose test accuracy reaches this (0: run every round)",
        check=_accuracy_or_off,
    )
    max_update_norm: float = key(
        10.0,
        "refuse a client half that moved more than this times the global half's norm + 1 (0: no bound)",
        check=non_negative,
    )
    round_timeout_s: float = key(
        3600.0,
        "a round's deadline, seconds: clients still training then leave the round (0: no deadline)",
        check=non_negative,
    )
    server_device: str = key(
        "cpu", "torch device of the server half and its codec work (cpu, cuda, cuda:N)", check=_device_check
    )
    server_batching: bool = key(
        False, "splitfed2: one server forward/backward over the batches that arrive together (changes the step order)"
    )
    eval_batch_size: int = key(0, "test batch size (0: batch_size, so the codec sees training-sized batches)")
    out_dir: str = key("runs/sl", OUT_HELP)
    transport: str = key(
        "messages",
        "engine=flower: how batches travel within a round; messages (a Flower message per step) or stream "
        "(one gRPC stream per client and round, for deployment)",
        TRANSPORTS,
    )
    stream: StreamKeys = block(StreamKeys)
    flower: SLFlowerKeys = block(SLFlowerKeys)

    def check(self) -> None:
        """Cross-key checks: data source, server batching needs splitfed2, the stream needs Flower, TLS
        files come in pairs, ``downlink=mask`` needs a sparse uplink, local-loss keys need ``gradients=local``."""
        check_data_source(self)
        if self.server_batching and self.mode != "splitfed2":
            raise ConfigError(
                f"server_batching runs one server step over batches of several clients on the shared server half: "
                f"it needs mode=splitfed2 (mode is {self.mode!r}); or set server_batching=false"
            )
        if self.transport == "stream" and self.flower.ray_address:
            raise ConfigError(
                "transport=stream in a simulation serves the stream on 127.0.0.1, which virtual clients on other "
                "machines of a Ray cluster cannot reach: use transport=messages with flower.ray_address (the stream "
                "is for deployments: docs/deployment.md)"
            )
        if self.transport == "stream" and self.engine != "flower":
            raise ConfigError(
                "transport=stream carries the batches of Flower clients over a gRPC stream: it needs engine=flower "
                "(the in-process engine has no transport); or set transport=messages"
            )
        stream = self.stream
        given = [k for k in ("ssl_certfile", "ssl_keyfile") if stream[k]]
        if len(given) == 1 or (stream.ssl_ca_certfile and not given):
            raise ConfigError(
                "stream TLS needs both stream.ssl_certfile and stream.ssl_keyfile (and optionally "
                f"stream.ssl_ca_certfile); got only {given or ['ssl_ca_certfile']}"
            )
        if self.gradients == "local" and self.downlink != "none":
            raise ConfigError(
                f"gradients=local sends no gradient back, so downlink={self.downlink!r} would compress nothing: "
                "leave downlink at none, or set gradients=server"
            )
        if self.gradients == "server" and (self.send_every != 1 or self.aux_head != "auto"):
            raise ConfigError(
                "send_every and aux_head belong to local-loss split learning (the client trains on its own head's "
                "loss between the batches it sends): set gradients=local, or leave them at their defaults"
            )
        if self.downlink == MASK and self.uplink.split(":")[0] in ("none", "fp16", "bf16"):
            raise ConfigError(
                f"downlink 'mask' sends the gradient at the positions a sparse uplink kept; uplink "
                f"{self.uplink!r} keeps every position: use downlink=none (the same bytes, simpler)"
            )


#: The schema :class:`SLConfig` declares (listings, the Flower run config).
SL_SCHEMA: Schema = SLConfig.schema()


def validate_sl(config: Mapping[str, Any]) -> None:
    """Check a resolved split-learning config as :meth:`SLConfig.check` does (raise :class:`ConfigError`)."""
    SLConfig.from_dict(config)


def load_sl_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: Mapping[str, Any] | None = None
) -> SLConfig:
    """The resolved, validated split-learning config (:meth:`SLConfig.load`)."""
    return SLConfig.load(file, overrides, values)
