"""``powersgd``: rank-r low-rank approximation by one power iteration (Vogels et al., NeurIPS 2019)."""

from __future__ import annotations

import torch

from fl_split.codecs.base import Chunk, Codec, InputStats, is_int, require, resolve_seed
from fl_split.codecs.registry import register_codec
from fl_split.codecs.wire import Header, PayloadReader

_FLAG_DENSE = 1


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a tensor is viewed as: ``(shape[0], prod(shape[1:]))``; 1-D and 0-D are ``(1, n)``."""
    if len(shape) < 2:
        n = 1
        for s in shape:
            n *= s
        return 1, n
    rows = shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    return rows, cols


@register_codec
class PowerSGDCodec(Codec):
    """``powersgd``: send ``P`` (n×r) and ``Q`` (m×r) with ``M ≈ P Qᵀ`` for ``M`` the tensor as a matrix.

    A tensor of shape ``(n, ...)`` is viewed as ``n × m`` with ``m = prod(shape[1:])``. One power
    iteration: ``P = orth(M Q₀)``, ``Q = Mᵀ P``. ``Q₀`` is warm-started from this codec's previous
    ``Q`` for the same matrix shape (as PowerSGD does across steps), and drawn from the seeded
    generator the first time. Tensors with fewer than 2 dimensions, or where the factors would
    not be smaller than the matrix (``r (n + m) >= n m``), are sent dense in float32 (a flag says
    so). PowerSGD is biased: compose with :class:`~fl_split.codecs.ErrorFeedback` for training.

    Parameters
    ----------
    rank:
        Target rank ``r >= 1`` (capped at ``min(n, m)``). Default 4.
    warm_start:
        Reuse the previous ``Q`` per matrix shape. Default True.
    seed:
        Seed of the initial ``Q`` (``None``: drawn from torch's global RNG).
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "powersgd"
    codec_id = 10
    param_format = "HB"  # rank used, flags (bit0: dense float32)
    shape_aware = True

    def __init__(
        self, *, rank: int = 4, warm_start: bool = True, seed: int | None = None, nonfinite: str = "raise"
    ) -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        require(is_int(rank) and 1 <= rank <= 65535, f"rank must be an int in 1..65535, got {rank!r}")
        self.rank = rank
        self.warm_start = bool(warm_start)
        self.seed = resolve_seed(seed)
        self._init = torch.Generator().manual_seed(self.seed)
        self._q: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _plan(self, shape: tuple[int, ...]) -> tuple[int, int, int, bool]:
        n, m = matrix_shape(shape)
        r = min(self.rank, n, m)
        dense = len(shape) < 2 or r * (n + m) >= n * m
        return n, m, r, dense

    def expected_bits(self, numel: int, shape: tuple[int, ...] | None = None) -> int:
        """Body bits; the size depends on the shape, so pass ``shape`` (default: a 1-D tensor)."""
        if numel == 0:
            return 0
        n, m, r, dense = self._plan(shape if shape is not None else (numel,))
        return 32 * (n * m if dense else r * (n + m))

    def analytic_bits(self, payload: bytes) -> int:
        from fl_split.codecs.wire import unpack_header

        header = unpack_header(payload, self.codec_id, self.name, self._param_struct)
        return self.expected_bits(header.numel, header.shape) if header.numel else 0

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        n, m, r, dense = self._plan(stats.shape)
        if dense:
            return (0, _FLAG_DENSE), [flat]
        mat = flat.view(n, m)
        key = (n, m, flat.device)
        q0 = self._q.get(key) if self.warm_start else None
        if q0 is None or q0.shape[1] != r:
            q0 = torch.randn(m, r, generator=self._init).to(flat.device)
        p = torch.linalg.qr(mat @ q0).Q
        q = mat.T @ p
        if self.warm_start:
            self._q[key] = q
        return (r, 0), [p.contiguous(), q.contiguous()]

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        r, flags = header.params
        if flags & ~_FLAG_DENSE:
            raise reader.error(f"unknown flags {flags}")
        if flags & _FLAG_DENSE:
            return reader.take_tensor(header.numel, torch.float32, "dense values", device)
        n, m = matrix_shape(header.shape)
        if not 1 <= r <= min(n, m) or len(header.shape) < 2:
            raise reader.error(f"rank {r} is invalid for a {n}x{m} matrix")
        p = reader.take_tensor(n * r, torch.float32, "P factor", device).view(n, r)
        q = reader.take_tensor(m * r, torch.float32, "Q factor", device).view(m, r)
        return (p @ q.T).reshape(-1)
