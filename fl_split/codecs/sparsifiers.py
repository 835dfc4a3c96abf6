"""Sparsifiers: ``topk``, ``randk`` and ``randtopk``.

Sparse wire body (``topk``, ``randtopk``): the kept positions, then their float32 values in
ascending position order. Positions travel as a ``d``-bit bitmap when that is smaller than
32-bit indices (``ceil(d/8) < 4k``, i.e. keep > 1/32) and as ascending little-endian u32 indices
otherwise; a flag in the parameter block says which. ``randk`` sends no positions at all: they
are regenerated from the 64-bit per-message seed in the parameter block.
"""

from __future__ import annotations

import math

import torch

from fl_split.codecs.base import Chunk, Codec, InputStats, is_number, require, resolve_seed
from fl_split.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from fl_split.codecs.registry import register_codec
from fl_split.codecs.selection import flatnonzero, select_topk
from fl_split.codecs.wire import Header, PayloadReader

_FLAG_BITMAP = 1


def keep_count(keep: float, d: int) -> int:
    """``k = floor(keep * d)``, at least 1 (and at most ``d``) for a non-empty tensor."""
    return min(d, max(1, math.floor(keep * d)))


def check_keep(keep: float) -> None:
    """Validate a kept fraction."""
    require(
        is_number(keep) and 0.0 < keep <= 1.0,
        f"keep is the fraction of elements kept and must be in (0, 1], got {keep!r}",
    )


def use_bitmap(d: int, k: int) -> bool:
    """Whether a d-bit bitmap is smaller than k 32-bit indices (true exactly when keep > 1/32)."""
    return packed_nbytes(d, 1) < 4 * k


def sparse_index_bits(d: int, k: int) -> int:
    """Bits spent on positions by :func:`encode_positions`."""
    return 8 * (packed_nbytes(d, 1) if use_bitmap(d, k) else 4 * k)


def encode_positions(idx_sorted: torch.Tensor, d: int) -> tuple[int, Chunk]:
    """Return ``(flags, chunk)`` for ascending int64 positions, as a bitmap or u32 indices."""
    k = idx_sorted.numel()
    if use_bitmap(d, k):
        mask = torch.zeros(d, dtype=torch.uint8, device=idx_sorted.device)
        mask[idx_sorted] = 1
        return _FLAG_BITMAP, pack_bits(mask, 1)
    return 0, idx_sorted.to(torch.int32)


def decode_positions(reader: PayloadReader, flags: int, d: int, k: int, device: torch.device | str) -> torch.Tensor:
    """Read ``k`` ascending positions written by :func:`encode_positions`, validating them.

    The encoding must be the one :func:`use_bitmap` picks for ``(d, k)``, a bitmap must have
    exactly ``k`` bits set, and u32 positions must be below ``d`` and strictly ascending.
    """
    if bool(flags & _FLAG_BITMAP) != use_bitmap(d, k):
        raise reader.error(
            f"index encoding does not match k={k} and d={d} (a bitmap is used exactly when ceil(d/8) < 4k); "
            "corrupted payload"
        )
    if flags & _FLAG_BITMAP:
        bitmap = reader.take_tensor(packed_nbytes(d, 1), torch.uint8, "position bitmap", device)
        idx = flatnonzero(unpack_bits(bitmap, 1, d))
        if idx.numel() != k:
            raise reader.error(f"position bitmap has {idx.numel()} bits set, but k={k}")
        return idx
    idx = reader.take_tensor(k, torch.int32, "u32 positions", device).long() & 0xFFFFFFFF
    if k and int(idx.max()) >= d:
        raise reader.error(f"position {int(idx.max())} is out of range (the tensor has {d})")
    if k > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise reader.error("positions are not strictly ascending (corrupted payload)")
    return idx


class _SparseCodec(Codec):
    """Shared wire of top-k style sparsifiers: (positions, float32 values)."""

    param_format = "IB"  # k, flags

    def __init__(self, *, keep: float, nonfinite: str = "raise") -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        check_keep(keep)
        self.keep = float(keep)

    def expected_bits(self, numel: int) -> int:
        if numel == 0:
            return 0
        k = keep_count(self.keep, numel)
        return sparse_index_bits(numel, k) + 32 * k

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Ascending positions of the ``k`` elements to send."""
        raise NotImplementedError

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        d = flat.numel()
        k = keep_count(self.keep, d)
        idx = self._select(flat, k)
        flags, positions = encode_positions(idx, d)
        return (k, flags), [positions, flat[idx]]

    def _positions(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        k, flags = header.params
        d = header.numel
        if not 1 <= k <= d or flags & ~_FLAG_BITMAP:
            raise reader.error(f"invalid parameter block: k = {k} for {d} elements, flags = {flags}")
        return decode_positions(reader, flags, d, k, device)

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        idx = self._positions(reader, header, device)
        values = reader.take_tensor(idx.numel(), torch.float32, "values", device)
        out = torch.zeros(header.numel, dtype=torch.float32, device=device)
        out[idx] = values
        return out

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(header.numel, dtype=torch.bool, device=device)
        mask[self._positions(reader, header, device)] = True
        return mask


@register_codec
class TopKCodec(_SparseCodec):
    """``topk``: keep the ``k = floor(keep * d)`` largest-magnitude elements (exact), zero the rest.

    Body: positions (bitmap when keep > 1/32, else u32 indices) + k float32 values.

    Parameters
    ----------
    keep:
        Fraction of elements kept, in (0, 1]. Default 0.01.
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "topk"
    codec_id = 5

    def __init__(self, *, keep: float = 0.01, nonfinite: str = "raise") -> None:
        super().__init__(keep=keep, nonfinite=nonfinite)

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        return select_topk(flat.abs(), k).indices


@register_codec
class RandomizedTopKCodec(_SparseCodec):
    """``randtopk``: randomized top-k sparsification (Zheng et al., IJCAI 2023).

    ``k`` positions are drawn without replacement; each of the exact top-k elements has weight
    ``(1 - alpha) / k`` and every other element ``alpha / (d - k)``, so with ``alpha = 0`` it is
    top-k and with larger ``alpha`` it explores more neurons. Kept values are sent unscaled, on
    the ``topk`` wire. The draw is exact and O(k log k) after the top-k (see :meth:`split_counts`);
    random numbers come from a CPU generator, so the selection is the same on any device.

    Parameters
    ----------
    keep:
        Fraction of elements kept, in (0, 1]. Default 0.01.
    alpha:
        Probability mass given to the non-top-k elements, in [0, 1). Default 0.1.
    seed:
        Seed of the sampling generator (``None``: drawn from torch's global RNG).
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "randtopk"
    codec_id = 7

    def __init__(
        self, *, keep: float = 0.01, alpha: float = 0.1, seed: int | None = None, nonfinite: str = "raise"
    ) -> None:
        super().__init__(keep=keep, nonfinite=nonfinite)
        require(is_number(alpha) and 0.0 <= alpha < 1.0, f"alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.seed = resolve_seed(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        d = flat.numel()
        top_sorted = select_topk(flat.abs(), k).indices  # ascending
        if k == d or self.alpha == 0.0:
            return top_sorted
        n_top, n_rest = self.split_counts(k, d - k)
        # a uniform n_top-subset of the top-k ...
        pick_top = top_sorted[torch.randperm(k, generator=self._gen)[:n_top].to(top_sorted.device)]
        # ... and a uniform n_rest-subset of the others: ranks among the non-top positions, mapped to
        # positions by skipping the top-k (position = rank + #top positions at or before it)
        ranks = random_positions(d - k, n_rest, int(torch.randint(0, 2**62, (1,), generator=self._gen)))
        shifted = top_sorted.cpu() - torch.arange(k)
        pick_rest = ranks + torch.searchsorted(shifted, ranks, right=True)
        return torch.sort(torch.cat([pick_top, pick_rest.to(top_sorted.device)])).values

    def split_counts(self, k: int, n: int) -> tuple[int, int]:
        """How many of the k draws land in the top-k and how many in the other ``n`` elements.

        Sampling k of the d elements without replacement with weight ``w1 = (1 - alpha) / k`` on
        the top-k and ``w0 = alpha / n`` elsewhere is a race of exponential clocks ``E / w``
        (Efraimidis-Spirakis): the k earliest win. Top-k clocks are k i.i.d. ``Exp(1) / w1``; only
        the k earliest of the n other clocks can win, and those are the order statistics
        ``sum_{i<=j} Z_i / (n - i + 1) / w0`` (Renyi). So the split is exact in O(k log k), and
        the winners inside each class are uniform subsets.
        """
        w1, w0 = (1.0 - self.alpha) / k, self.alpha / n
        m = min(k, n)
        top_clocks = torch.empty(k, dtype=torch.float64).exponential_(generator=self._gen) / w1
        z = torch.empty(m, dtype=torch.float64).exponential_(generator=self._gen)
        rest_clocks = torch.cumsum(z / torch.arange(n, n - m, -1, dtype=torch.float64), 0) / w0
        winners = torch.topk(torch.cat([top_clocks, rest_clocks]), k, largest=False).indices
        n_top = int((winners < k).sum())
        return n_top, k - n_top


@register_codec
class RandomKCodec(Codec):
    """``randk``: ``k`` uniformly random positions regenerated from a shared per-message seed.

    The body is only the ``k`` float32 values: the decoder regenerates the same positions from
    the 64-bit seed in the parameter block (a CPU ``torch.Generator``, so any device agrees).
    With ``unbiased=True`` (default) the decoder scales by ``d / k``, so ``E[decode] = x``.

    Parameters
    ----------
    keep:
        Fraction of elements kept, in (0, 1]. Default 0.01.
    unbiased:
        Scale the kept values by ``d / k`` at decode. Default True.
    seed:
        Seed of the generator that draws per-message seeds (``None``: from torch's global RNG).
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "randk"
    codec_id = 6
    param_format = "IQB"  # k, message seed, flags (bit0: unbiased scaling)

    def __init__(
        self, *, keep: float = 0.01, unbiased: bool = True, seed: int | None = None, nonfinite: str = "raise"
    ) -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        check_keep(keep)
        self.keep = float(keep)
        self.unbiased = bool(unbiased)
        self.seed = resolve_seed(seed)
        self._seeds = torch.Generator().manual_seed(self.seed)

    def expected_bits(self, numel: int) -> int:
        return 32 * keep_count(self.keep, numel) if numel else 0

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        d = flat.numel()
        k = keep_count(self.keep, d)
        msg_seed = int(torch.randint(0, 2**63 - 1, (1,), generator=self._seeds).item())
        idx = random_positions(d, k, msg_seed).to(flat.device)
        return (k, msg_seed, int(self.unbiased)), [flat[idx]]

    def _params(self, reader: PayloadReader, header: Header) -> tuple[int, int, int]:
        k, msg_seed, flags = header.params
        if not 1 <= k <= header.numel or flags & ~1:
            raise reader.error(f"invalid parameter block: k = {k} for {header.numel} elements, flags = {flags}")
        return k, msg_seed, flags

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        k, msg_seed, flags = self._params(reader, header)
        d = header.numel
        values = reader.take_tensor(k, torch.float32, "values", device)
        if flags & 1:
            values = values * (d / k)
        out = torch.zeros(d, dtype=torch.float32, device=device)
        out[random_positions(d, k, msg_seed).to(device)] = values
        return out

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        k, msg_seed, _ = self._params(reader, header)
        mask = torch.zeros(header.numel, dtype=torch.bool, device=device)
        mask[random_positions(header.numel, k, msg_seed).to(device)] = True
        return mask


def random_positions(d: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct uniform positions in ``[0, d)``, ascending, a pure function of ``seed``.

    For ``k <= d / 16``: draw positions with replacement and keep the first ``k`` distinct ones in
    draw order (a uniform k-subset), O(k log k). Otherwise a prefix of a random permutation, O(d)
    (faster once collisions make redraws frequent; measured crossover near d / 16).
    """
    g = torch.Generator().manual_seed(seed)
    if 16 * k > d:
        return torch.sort(torch.randperm(d, generator=g)[:k]).values
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:
        need = k - chosen.numel()
        draws = torch.randint(0, d, (need + need // 8 + 16,), generator=g)
        allv = torch.cat([chosen, draws])
        uniq, inverse = torch.unique(allv, return_inverse=True)
        first = torch.full((uniq.numel(),), allv.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(allv.numel()), reduce="amin")
        chosen = uniq[torch.argsort(first)][:k]
    return torch.sort(chosen).values
