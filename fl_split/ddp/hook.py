"""A DDP communication hook that sends each gradient bucket as codec payload bytes.

Per bucket and step, on every rank: add the bucket's error-feedback residual, encode with the
codec (on the bucket's device), exchange the payload *bytes* — first every rank's length
(``all_gather`` of one int64), then the payloads zero-padded to the longest as ``uint8`` tensors
(``all_gather``; never ``all_gather_object``, which pickles) — decode every rank's payload and
average. A codec whose encoding uses the tensor's shape (``powersgd``, ``bird``) gets each
parameter's gradient in its own shape instead: the bucket's payload is then
``u32 n | n × u32 length | n codec payloads`` (:func:`~fl_split.codecs.parts.encode_parts`). Every rank decodes the
same payloads, so a payload that does not decode raises the same
:class:`~fl_split.codecs.CodecError` on every rank (nobody is left waiting in a collective).

The state holds the residuals and the measured byte counters and round-trips through
``state_dict`` / ``load_state_dict`` (save it next to the model's checkpoint). Residuals are kept
per parameter (by name), so they survive DDP regrouping its buckets (it does after the first step)
and a checkpoint restores them into whatever layout the resumed run's buckets have.
"""

# no ``from __future__ import annotations``: DDP checks the hook's annotations at runtime
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from fl_split.codecs import Codec, CodecError, codec_from_spec
from fl_split.codecs.parts import decode_parts, encode_parts
from fl_split.training import synchronize


@dataclass
class CodecHookState:
    """What the hook keeps between steps.

    Attributes
    ----------
    codec:
        The codec every bucket goes through.
    error_feedback:
        Keep each bucket's compression residual and add it to the next step's gradient.
    process_group:
        The group to exchange in (``None``: the default group).
    per_tensor:
        Encode each parameter's gradient in its own shape (see :func:`encode_bucket`) instead of the
        flat bucket.
    residuals:
        Parameter name → its part of the residual (flat, on the bucket's device).
    param_names:
        ``id(parameter)`` → name (:func:`register_codec_hook` fills it from the module).
    bytes_sent, bytes_received:
        Payload bytes this rank sent and received, in total (measured ``len(payload)``).
    calls:
        Hook calls (one per bucket and step).
    last_bucket_bytes:
        Bucket index → this rank's payload bytes at its last call (see :meth:`step_bytes`).
    bucket_numel:
        Bucket index → gradient elements in that bucket at its last call.
    encode_s, exchange_s, decode_s:
        Seconds this rank spent encoding (with the residual added), exchanging and decoding/averaging.
    """

    codec: Codec
    error_feedback: bool = True
    process_group: Any = None
    per_tensor: bool = False
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)
    param_names: dict[int, str] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    calls: int = 0
    last_bucket_bytes: dict[int, int] = field(default_factory=dict)
    bucket_numel: dict[int, int] = field(default_factory=dict)
    encode_s: float = 0.0
    exchange_s: float = 0.0
    decode_s: float = 0.0
    #: bucket index -> (its parameter names, its residual): the whole-bucket tensor the per-name
    #: residuals are views of, reused while the bucket holds the same parameters (no copy per step)
    _bucket_residual: dict[int, tuple[tuple[str, ...], torch.Tensor]] = field(default_factory=dict, repr=False)

    def step_bytes(self) -> int:
        """Payload bytes this rank sent for one step (the last call of each bucket)."""
        return sum(self.last_bucket_bytes.values())

    def residual_bytes(self) -> int:
        """Memory the error-feedback residuals hold on this rank (bytes)."""
        return sum(r.numel() * r.element_size() for r in self.residuals.values())

    def state_dict(self) -> dict[str, Any]:
        """Residuals (on the CPU) and counters, for a checkpoint."""
        return {
            "codec": self.codec.name,
            "error_feedback": self.error_feedback,
            "residuals": {n: r.detach().cpu().clone() for n, r in self.residuals.items()},
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "calls": self.calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (residuals move to their bucket's device at the next step)."""
        if state.get("codec") != self.codec.name:
            raise ValueError(
                f"checkpoint holds hook state of codec {state.get('codec')!r}, this hook uses {self.codec.name!r}"
            )
        residuals = state["residuals"]
        if any(not isinstance(n, str) for n in residuals):
            raise ValueError(
                "checkpoint holds residuals keyed by bucket index (an older fl-split); they cannot be mapped to "
                "parameters: start the run afresh"
            )
        self.error_feedback = bool(state["error_feedback"])
        self.residuals = {n: r.detach().clone().flatten() for n, r in residuals.items()}
        self._bucket_residual = {}
        self.bytes_sent = int(state["bytes_sent"])
        self.bytes_received = int(state.get("bytes_received", 0))
        self.calls = int(state["calls"])


def _exchange(payload: bytes, device: torch.device, group: Any) -> list[bytes]:
    """Every rank's payload, in rank order: sizes first, then the padded bytes."""
    world = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if payload:
        mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    mine = mine.to(device)
    gathered = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    return [g[:n].cpu().numpy().tobytes() for g, n in zip(gathered, lengths, strict=True)]


def _shapes(bucket: dist.GradBucket, numel: int) -> list[torch.Size] | None:
    """The bucket's gradient shapes in buffer order (``None`` if they do not tile the buffer)."""
    shapes = [p.shape for p in bucket.parameters()]
    return shapes if shapes and sum(math.prod(sh) for sh in shapes) == numel else None


def _layout(state: CodecHookState, bucket: dist.GradBucket) -> tuple[tuple[str, ...], list[int]]:
    """The bucket's parameter names and sizes in buffer order (``bucket{i}.{j}``: a parameter the state cannot name)."""
    index, params = bucket.index(), bucket.parameters()
    names = tuple(state.param_names.get(id(p), f"bucket{index}.{j}") for j, p in enumerate(params))
    return names, [p.numel() for p in params]


def _residual(state: CodecHookState, index: int, names: tuple[str, ...], sizes: list[int]) -> torch.Tensor | None:
    """The bucket's residual, from its parameters' parts (zeros for a part not kept yet; ``None``: no part is)."""
    cached = state._bucket_residual.get(index)
    if cached is not None and cached[0] == names:
        return cached[1]
    pieces = [state.residuals.get(n) for n in names]
    ref = next((r for r in pieces if r is not None), None)
    if ref is None:
        return None  # nothing kept for these parameters yet (the first step)
    wrong = [n for n, r, k in zip(names, pieces, sizes, strict=True) if r is not None and r.numel() != k]
    if wrong:
        raise ValueError(f"DDP codec hook: the residuals kept for {wrong[:3]} do not fit those parameters")
    # a new grouping (DDP rebuilt its buckets, or a checkpoint was loaded): gather the parameters' parts
    return torch.cat([r if r is not None else ref.new_zeros(k) for r, k in zip(pieces, sizes, strict=True)])


def _keep_residual(
    state: CodecHookState, index: int, names: tuple[str, ...], sizes: list[int], r: torch.Tensor
) -> None:
    """Keep ``r`` as the bucket's residual: per parameter (views of ``r``) and cached under the bucket."""
    cached = state._bucket_residual.get(index)
    if cached is None or cached[0] != names:  # a new grouping: a regrouped parameter is cached only once
        for other, (held, _) in list(state._bucket_residual.items()):
            if other != index and set(held) & set(names):
                del state._bucket_residual[other]
    state._bucket_residual[index] = (names, r)
    if sum(sizes) != r.numel():  # parameters that do not tile the buffer: keep it whole, under the bucket
        state.residuals[f"bucket{index}"] = r
        return
    for name, part in zip(names, r.split(sizes), strict=True):
        state.residuals[name] = part


def codec_hook(state: CodecHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The communication hook (``ddp.register_comm_hook(state, codec_hook)``)."""
    grad = bucket.buffer()
    synchronize(grad.device)  # the backward kernels that filled the bucket are not encode time
    t0 = time.perf_counter()
    index = bucket.index()
    group = state.process_group
    x = grad.detach()
    names, sizes = _layout(state, bucket) if state.error_feedback else ((), [])
    residual = _residual(state, index, names, sizes) if state.error_feedback else None
    if residual is not None and residual.shape == x.shape:
        x = x + residual.to(device=x.device, dtype=x.dtype)
    shapes = _shapes(bucket, grad.numel()) if state.per_tensor else None
    payload = encode_parts(state.codec, x, shapes)
    t1 = time.perf_counter()
    comm_device = grad.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    payloads = _exchange(payload, comm_device, group)
    t2 = time.perf_counter()
    decoded = []
    for rank, p in enumerate(payloads):
        try:
            t = decode_parts(state.codec, p, grad.numel(), shapes, grad.device)
        except CodecError as exc:
            raise CodecError(
                f"DDP codec hook: the payload of rank {rank} for bucket {index} does not decode: {exc}"
            ) from exc
        decoded.append(t.view_as(grad).to(grad.dtype))
    if state.error_feedback:  # what this rank's payload did not carry (its own decode is among the above)
        _keep_residual(state, index, names, sizes, x - decoded[dist.get_rank(group)])
    total = torch.stack(decoded).sum(0) if len(decoded) > 1 else decoded[0].clone()
    state.bytes_sent += len(payload)
    state.bytes_received += sum(len(p) for r, p in enumerate(payloads) if r != dist.get_rank(group))
    state.calls += 1
    state.last_bucket_bytes[index] = len(payload)
    state.bucket_numel[index] = grad.numel()
    mean = total / len(payloads)
    synchronize(grad.device)  # the decode and average kernels (a short stall; encode_parts already waited)
    t3 = time.perf_counter()
    state.encode_s, state.exchange_s, state.decode_s = (
        state.encode_s + t1 - t0,
        state.exchange_s + t2 - t1,
        state.decode_s + t3 - t2,
    )
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(mean)
    return fut


def register_codec_hook(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    codec: Codec | str,
    *,
    error_feedback: bool = True,
    process_group: Any = None,
    per_tensor: bool | None = None,
) -> CodecHookState:
    """Register :func:`codec_hook` on ``ddp_model``; return its state (residuals, byte counters).

    Parameters
    ----------
    ddp_model:
        A ``DistributedDataParallel`` module (gloo on CPU, NCCL on GPU).
    codec:
        A codec instance or a spec string (``"topk:keep=0.01"``).
    error_feedback:
        Keep per-bucket residuals (one bucket-sized tensor per bucket on each rank).
    process_group:
        The group DDP uses (``None``: the default group).
    per_tensor:
        Encode each gradient in its parameter's shape rather than the flat bucket. ``None``
        (default): for codecs whose encoding uses the shape (``Codec.shape_aware``: ``powersgd``,
        ``bird``); a flat bucket would make PowerSGD send dense and BIRD cut blocks across layers.
    """
    codec = codec_from_spec(codec) if isinstance(codec, str) else codec
    per = codec.shape_aware if per_tensor is None else per_tensor
    state = CodecHookState(codec, error_feedback, process_group, per_tensor=per)
    state.param_names = {id(p): n for n, p in ddp_model.module.named_parameters()}
    ddp_model.register_comm_hook(state, codec_hook)
    return state
