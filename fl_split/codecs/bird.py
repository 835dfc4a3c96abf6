"""BIRD: tensor-wise bi-random block sampling with index sharing (Wu et al., ICCD 2023).

The tensor is cut into blocks of ``B`` consecutive elements (one index per block: *index sharing*).
Stage 1 keeps block ``b`` with probability ``n_b / M`` (``n_b`` its L1 or L2 norm, ``M`` the largest
norm), stage 2 keeps a uniformly random ``K = ceil(keep * R)`` of the survivors, and each kept block
is sent with its decoded norm set to ``c * M`` (``c = |S1| / |S2|``), which keeps every block's
expected norm (``E||x_hat_b|| = n_b``). ``mode="sign"`` sends one sign bit per kept element and one
float32 scale; ``mode="values"`` sends the kept elements pre-scaled, which makes ``E[x_hat] = x``.
The mechanics follow the first author's prototype; every choice it leaves open is fl-split's
reconstruction, listed in the ``bird`` section of ``docs/codecs.md``.

Body layout (after the common header and the ``<IB`` parameter block ``block, norm``)::

    flags   u8      bit0 bitmap indices, bit1 values mode, bit2 float16 values
    m       u32     kept blocks
    s       f32     decoded norm c*M of a kept block (sign mode only)
    indices         ceil(R/8)-byte bitmap if that is smaller than 4*m, else m ascending u32
    payload         ceil(L/8) bytes of sign bits (1 = negative), or L values (f32 or f16)

``L`` is the number of elements in the kept blocks. Bit vectors use the project's planar packing
(:mod:`fl_split.codecs.bitpack`, width 1). ``block = 0`` in the parameter block marks the dense
float32 passthrough used for ``keep = 1``: the body is then the ``N`` raw float32 values.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar

import torch

from fl_split.codecs.base import Codec, InputStats, NonFinitePolicy, require, resolve_seed
from fl_split.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from fl_split.codecs.errors import CodecError
from fl_split.codecs.registry import register_codec
from fl_split.codecs.sparsifiers import decode_positions, encode_positions, sparse_index_bits
from fl_split.codecs.wire import Header, PayloadReader, unpack_header

FLAG_BITMAP = 0x01
FLAG_VALUES = 0x02
FLAG_F16 = 0x04
_KNOWN_FLAGS = FLAG_BITMAP | FLAG_VALUES | FLAG_F16

_NORM_CODES = {"l1": 0, "l2": 1}
_U32_MAX = 2**32 - 1
_F32_MAX = float(torch.finfo(torch.float32).max)
#: Default block length for tensors of fewer than two dimensions (docs/papers.md, BIRD).
DEFAULT_FLAT_BLOCK = 64

#: An int block length, ``None`` (the default rule) or ``"spatial"`` (see :func:`default_block`).
BlockRule = int | str | None


def default_block(shape: tuple[int, ...], block: BlockRule = None) -> int:
    """Block length ``B`` that :class:`BirdCodec` uses for a tensor of ``shape``.

    Parameters
    ----------
    shape:
        Shape of the tensor to encode.
    block:
        An int is used as is. ``None`` (default): ``prod(shape[1:])`` when ``len(shape) >= 2``
        (one block per row, filter or sample, as in the BIRD prototype), else 64.
        ``"spatial"``: ``prod(shape[2:])`` when ``len(shape) >= 3`` (``H*W`` for ``[N, C, H, W]``
        activations or gradients: one block per sample and channel), else as ``None``.

    Returns
    -------
    int
        The block length in elements, at least 1 (a block longer than the tensor is allowed; the
        codec clamps it to the element count).
    """
    if isinstance(block, int):
        return block
    if block == "spatial" and len(shape) >= 3:
        return max(1, math.prod(shape[2:]))
    if len(shape) >= 2:
        return max(1, math.prod(shape[1:]))
    return DEFAULT_FLAT_BLOCK


def keep_count(keep: float | None, num_blocks: int) -> int:
    """Stage-2 cap ``K = ceil(keep * R)``, clamped to ``[1, R]`` (``R`` when ``keep`` is ``None``).

    The product is rounded to 9 decimals first so that, e.g., ``0.3 * 10`` gives 3, not 4.
    """
    if keep is None:
        return num_blocks
    return min(num_blocks, max(1, math.ceil(round(keep * num_blocks, 9))))


@dataclass(frozen=True)
class _Body:
    """The parsed, validated head of a sampled BIRD body (everything before the payload)."""

    flags: int
    m: int
    scale: float
    indices: torch.Tensor  # ascending int64 block indices on the CPU
    num_blocks: int
    block: int
    numel: int

    @property
    def tail(self) -> int:
        """Length of the last block if it is shorter than ``block`` (else 0)."""
        return self.numel % self.block

    @property
    def last_kept(self) -> bool:
        """Whether the (short) last block is among the kept blocks."""
        return self.tail > 0 and self.m > 0 and int(self.indices[-1]) == self.num_blocks - 1

    @property
    def kept_elements(self) -> int:
        """``L``: the number of elements in the kept blocks."""
        if self.last_kept:
            return (self.m - 1) * self.block + self.tail
        return self.m * self.block

    @property
    def values_dtype(self) -> torch.dtype:
        """dtype of the values payload (values mode)."""
        return torch.float16 if self.flags & FLAG_F16 else torch.float32


@register_codec
class BirdCodec(Codec):
    """``bird``: bi-random block sampling with index sharing (BIRD, Wu et al., ICCD 2023).

    Parameters
    ----------
    keep:
        Stage-2 cap as a fraction of blocks, in (0, 1]: at most ``ceil(keep * R)`` blocks are sent.
        ``1`` sends the tensor dense in float32 (bit-exact). ``None`` runs stage 1 only (no cap;
        the number of kept blocks then follows the data, ``E[m] = sum_b n_b / M``). Default 0.1
        (the prototype's ``sr``).
    block:
        Block length ``B`` in elements (an int >= 1), ``None`` for the default rule
        (``prod(shape[1:])`` for tensors of 2+ dimensions, 64 otherwise) or ``"spatial"``
        (``prod(shape[2:])``, i.e. ``H*W`` for ``[N, C, H, W]`` activations). See :func:`default_block`.
    norm:
        Block norm used for sampling and for the decoded scale: ``"l1"`` (default, per the ICCD paper;
        keeps ``E||x_hat||_1 = ||x||_1``) or ``"l2"`` (as the prototype).
    mode:
        ``"sign"`` (default): one sign bit per kept element plus one float32 scale per tensor; each
        element decodes to its block's expected mean magnitude with its own sign. ``"values"``:
        the kept elements themselves, pre-scaled so that ``E[x_hat] = x`` exactly.
    values_dtype:
        ``"f32"`` (default) or ``"f16"``: the wire dtype of values mode (ignored in sign mode).
    seed:
        Seed of the codec's CPU ``torch.Generator`` (all draws use it, on any device). ``None``
        draws one from torch's global RNG. Successive encodes advance the generator.
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "bird"
    codec_id = 11
    #: ``block`` (u32; 0 marks the dense passthrough) and ``norm`` (u8; 0 l1, 1 l2).
    param_format = "IB"
    fixed_size = False
    shape_aware = True  # the default block is one row (filter) of a parameter tensor

    _norm_names: ClassVar[dict[int, str]] = {v: k for k, v in _NORM_CODES.items()}

    def __init__(
        self,
        *,
        keep: float | None = 0.1,
        block: BlockRule = None,
        norm: str = "l1",
        mode: str = "sign",
        values_dtype: str = "f32",
        seed: int | None = None,
        nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__(nonfinite=nonfinite)
        require(
            keep is None or (isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1),
            f"keep must be a fraction in (0, 1] or None (no stage-2 cap), got {keep!r}",
        )
        require(
            block is None
            or block == "spatial"
            or (isinstance(block, int) and not isinstance(block, bool) and 1 <= block <= _U32_MAX),
            f"block must be an int in [1, {_U32_MAX}], None (default rule) or 'spatial', got {block!r}",
        )
        require(norm in ("l1", "l2"), f"norm must be 'l1' or 'l2', got {norm!r}")
        require(mode in ("sign", "values"), f"mode must be 'sign' or 'values', got {mode!r}")
        require(values_dtype in ("f32", "f16"), f"values_dtype must be 'f32' or 'f16', got {values_dtype!r}")
        self.keep: float | None = None if keep is None else float(keep)
        self.block: BlockRule = block
        self.norm = norm
        self.mode = mode
        self.values_dtype = values_dtype
        self.seed = resolve_seed(seed)
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)

    # ----------------------------------------------------------------- public API
    def expected_bits(self, numel: int) -> int:
        """Upper bound of the body size in bits for ``numel`` elements at the configured ``keep``.

        With an int ``block`` the bound is ``m = K`` blocks of full length; when the block length
        depends on the shape (``None`` or ``"spatial"``) it is the bound over every block length
        (one block holding the whole tensor).
        """
        if numel == 0:
            return 0
        if self.keep is not None and self.keep >= 1.0:
            return 32 * numel
        if isinstance(self.block, int):
            b = min(self.block, numel)
            r = -(-numel // b)
            k = keep_count(self.keep, r)
            index_bytes = sparse_index_bits(r, k) // 8
            kept = min(numel, k * b)
        else:
            index_bytes, kept = -(-numel // 8), numel
        return self._body_bits(index_bytes, kept, self.mode == "values", self.values_dtype == "f16")

    def analytic_bits(self, payload: bytes) -> int:
        """Body bits from the size formula, with ``m`` and ``L`` read from ``payload`` itself.

        Sign mode: ``8 * (9 + min(4m, ceil(R/8)) + ceil(L/8))``; values mode:
        ``8 * (5 + min(4m, ceil(R/8))) + L * {32 | 16}``; dense passthrough: ``32 N``.
        """
        header = unpack_header(payload, self.codec_id, self.name, self._param_struct)
        if header.numel == 0:
            return 0
        block, _ = self._check_params(header)
        if block == 0:
            return 32 * header.numel
        body = self._read_head(PayloadReader(payload, header.body_offset, self.name), header)
        index_bytes = sparse_index_bits(body.num_blocks, body.m) // 8
        return self._body_bits(
            index_bytes, body.kept_elements, bool(body.flags & FLAG_VALUES), bool(body.flags & FLAG_F16)
        )

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor | None:
        """The elements of the kept blocks (every element for the dense passthrough)."""
        block, _ = self._check_params(header)
        if block == 0:
            return None
        mask = torch.zeros(header.numel, dtype=torch.bool, device=device)
        one = torch.ones((), dtype=torch.bool, device=device)
        self._scatter_blocks(mask, self._read_head(reader, header), one, device)
        return mask

    # ----------------------------------------------------------------- encode
    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list]:
        n = flat.numel()
        norm_code = _NORM_CODES[self.norm]
        if self.keep is not None and self.keep >= 1.0:
            return (0, norm_code), [flat]  # dense float32 passthrough, as the prototype does at sr = 1
        block = min(default_block(stats.shape, self.block), n)
        nfull, tail = divmod(n, block)
        num_blocks = nfull + (tail > 0)
        values = self.mode == "values"
        f16 = values and self.values_dtype == "f16"

        norms = self._norms_on(flat, block, nfull, tail)
        top = float(norms.max())
        if not math.isfinite(top) or (top == 0.0 and (stats.min != 0.0 or stats.max != 0.0)):
            # float32 overflowed (l2 of |x| > 1.8e19, l1 of huge blocks) or underflowed: redo in float64.
            norms = self._norms_on(flat.double(), block, nfull, tail)
            top = float(norms.max())
        if top == 0.0:
            return (block, norm_code), self._head(values, f16, 0, 0.0, torch.empty(0, dtype=torch.int64), num_blocks)

        # Stage 1: keep b iff u_b < n_b / M (the argmax block has probability 1).
        u = torch.rand(num_blocks, generator=self._generator, dtype=norms.dtype)
        s1 = torch.nonzero(u < norms / top).squeeze(1)
        n1 = s1.numel()
        # Stage 2: a uniformly random K-subset of the survivors, kept in ascending order without a sort.
        k = keep_count(self.keep, num_blocks)
        if n1 > k:
            chosen = torch.zeros(n1, dtype=torch.bool)
            chosen[torch.randperm(n1, generator=self._generator)[:k]] = True
            s2 = s1[chosen]
        else:
            s2 = s1
        m = s2.numel()
        scale = (n1 / m) * top  # c * M, in float64
        if not values and scale > _F32_MAX:
            raise ValueError(f"codec 'bird': the scale s = c*M = {scale:.4g} exceeds the float32 range; scale x down")

        last_kept = tail > 0 and int(s2[-1]) == num_blocks - 1
        full_idx = s2[:-1] if last_kept else s2
        rows = flat[: nfull * block].view(nfull, block).index_select(0, full_idx.to(flat.device))
        tail_vals = flat[nfull * block :] if last_kept else flat[:0]
        if values:
            factors = (scale / norms[s2].double()).float().to(flat.device)  # c * M / n_b per kept block
            kept = torch.cat([(rows * factors[: full_idx.numel(), None]).reshape(-1), tail_vals * factors[-1:]])
            if f16:
                kept = kept.to(torch.float16)
            if not bool(torch.isfinite(kept).all()):
                raise ValueError(
                    "codec 'bird': a pre-scaled value overflows the wire dtype; scale the tensor"
                    + (" or use values_dtype='f32'" if f16 else "")
                )
            payload = kept
        else:
            kept = torch.cat([rows.reshape(-1), tail_vals]) if last_kept else rows.reshape(-1)
            payload = pack_bits((kept < 0).view(torch.uint8), 1)  # sign(0) is sent as +
        return (block, norm_code), [*self._head(values, f16, m, scale, s2, num_blocks), payload]

    def _norms_on(self, flat: torch.Tensor, block: int, nfull: int, tail: int) -> torch.Tensor:
        """Per-block norms (in ``flat``'s dtype), moved to the CPU where the sampling runs."""
        order = 1 if self.norm == "l1" else 2
        parts = []
        if nfull:
            parts.append(torch.linalg.vector_norm(flat[: nfull * block].view(nfull, block), ord=order, dim=1))
        if tail:
            parts.append(torch.linalg.vector_norm(flat[nfull * block :], ord=order).reshape(1))
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).cpu()

    @staticmethod
    def _head(values: bool, f16: bool, m: int, scale: float, s2: torch.Tensor, num_blocks: int) -> list:
        """flags, m, s (sign mode) and the index buffer (the sparsifiers' bitmap-or-u32 positions)."""
        bitmap, indices = encode_positions(s2, num_blocks)
        flags = bitmap | (FLAG_VALUES if values else 0) | (FLAG_F16 if f16 else 0)
        head = struct.pack("<BI", flags, m) if values else struct.pack("<BIf", flags, m, scale)
        return [head, indices]

    # ----------------------------------------------------------------- decode
    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        block, norm_code = self._check_params(header)
        if block == 0:
            return reader.take_tensor(header.numel, torch.float32, "dense float32 values", device)
        body = self._read_head(reader, header)
        out = torch.zeros(header.numel, dtype=torch.float32, device=device)
        if body.m == 0:
            return out
        count = body.kept_elements
        if body.flags & FLAG_VALUES:
            vals = reader.take_tensor(count, body.values_dtype, "kept values", device).float()
            if not bool(torch.isfinite(vals).all()):
                raise reader.error("kept values contain NaN or Inf (corrupted payload)")
            self._scatter_blocks(out, body, vals, device)
            return out
        packed = reader.take_tensor(packed_nbytes(count, 1), torch.uint8, "sign bits", device)
        negative = unpack_bits(packed, 1, count).view(torch.bool)  # bit 1 = negative; codes are 0 or 1
        # A kept block decodes to norm s: s / len per element for l1, s / sqrt(len) for l2.
        root = float if norm_code == 0 else math.sqrt
        magnitude = body.scale / root(body.block)
        signs = torch.where(negative, -magnitude, magnitude)
        if body.last_kept:
            full = body.m - 1
            magnitude = body.scale / root(body.tail)
            signs[full * body.block :] = torch.where(negative[full * body.block :], -magnitude, magnitude)
        self._scatter_blocks(out, body, signs, device)
        return out

    @staticmethod
    def _scatter_blocks(out: torch.Tensor, body: _Body, src: torch.Tensor, device: torch.device) -> None:
        """Write ``src`` (kept elements in block order, or a scalar) into the kept blocks of ``out``."""
        nfull = body.numel // body.block
        full = body.m - body.last_kept
        idx = body.indices[:full].to(device)
        rows = out[: nfull * body.block].view(nfull, body.block)
        if src.ndim == 0:
            rows[idx] = src
            if body.last_kept:
                out[nfull * body.block :] = src
            return
        rows.index_copy_(0, idx, src[: full * body.block].view(full, body.block))
        if body.last_kept:
            out[nfull * body.block :] = src[full * body.block :]

    def _check_params(self, header: Header) -> tuple[int, int]:
        block, norm_code = header.params
        if norm_code not in self._norm_names:
            raise CodecError(f"codec 'bird': unknown norm code {norm_code} in the parameter block (0 l1, 1 l2)")
        return int(block), int(norm_code)

    def _read_head(self, reader: PayloadReader, header: Header) -> _Body:
        """Read and validate flags, m, s and the indices of a sampled body."""
        block = int(header.params[0])
        numel = header.numel
        num_blocks = -(-numel // block)
        (flags,) = reader.take_struct("B", "flags")
        if flags & ~_KNOWN_FLAGS:
            raise reader.error(f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x} (corrupted payload)")
        if flags & FLAG_F16 and not flags & FLAG_VALUES:
            raise reader.error("flag 'float16 values' set without 'values mode' (corrupted payload)")
        (m,) = reader.take_struct("I", "kept-block count m")
        if m > num_blocks:
            raise reader.error(f"kept-block count m={m} exceeds the {num_blocks} blocks of the tensor")
        scale = 0.0
        if not flags & FLAG_VALUES:
            (scale,) = reader.take_struct("f", "scale s")
            if not (math.isfinite(scale) and scale >= 0.0):
                raise reader.error(f"scale s={scale} is not a finite non-negative number (corrupted payload)")
        indices = decode_positions(reader, flags & FLAG_BITMAP, num_blocks, m, "cpu")
        return _Body(flags, m, scale, indices, num_blocks, block, numel)

    @staticmethod
    def _body_bits(index_bytes: int, kept: int, values: bool, f16: bool) -> int:
        if values:
            return 8 * (5 + index_bytes) + kept * (16 if f16 else 32)
        return 8 * (9 + index_bytes + -(-kept // 8))
