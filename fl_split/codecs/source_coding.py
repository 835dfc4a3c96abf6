"""Lossless source coding of sparse integer vectors: frequency + support, Golomb gaps, Elias-γ.

This is the coder of the ``dither`` codec (Malcom-PSGD's "vector source coding"; the concrete
layout is fl-split's own reconstruction; ``docs/papers.md``, Malcom-PSGD). A vector
``z`` of ``d`` integers, mostly zero, is sent as::

    γ(K + 1)                                  K = number of distinct nonzero values
    for each value a, by increasing count n_a (ties: smaller |a|, then smaller a):
        γ(zigzag(a))  γ(n_a)  G_{m_a}(g_1) ... G_{m_a}(g_{n_a})

The gaps ``g`` of value ``a`` count the *unclaimed* positions (not taken by an earlier value)
skipped before each occurrence of ``a``; there are ``N_a = d - sum of earlier counts`` of them.
Zero is implicit and the trailing run is not sent. The Golomb parameter is Gallager–van Voorhis's
``m_a = ceil(log(1 + q) / -log q)`` with ``q = 1 - n_a / N_a`` (``m_a = 1`` when ``n_a / N_a >= 1/2``).

Codewords (bits are written most significant first; the stream is packed MSB-first into bytes
and the last byte is zero-padded):

* Elias-γ of ``n >= 1``: ``floor(log2 n)`` zeros, then ``n`` in binary (``2 floor(log2 n) + 1`` bits).
* zigzag: 1, -1, 2, -2, ... -> 1, 2, 3, 4, ... (``2a - 1`` for ``a > 0``, ``-2a`` for ``a < 0``).
* Golomb ``G_m(g)``: the quotient ``g // m`` in unary as that many zeros and a terminating one,
  then the remainder ``g % m`` in truncated binary: with ``k = floor(log2 m)`` and
  ``u = 2**(k+1) - m``, a remainder ``r < u`` takes ``k`` bits, otherwise ``r + u`` takes ``k + 1``.

Size in bits: ``γ(K+1) + Σ_a [γ(zigzag a) + γ(n_a) + Σ_g G_{m_a}(g)]`` with ``γ(n) = 2⌊log2 n⌋ + 1``
and ``G_m(g) = ⌊g/m⌋ + 1 + tb_m(g mod m)`` (:func:`sparse_levels_bits`).

Encoding is vectorised in NumPy (loops run over the K distinct values only). Decoding parses the
K value headers sequentially and, per value, finds each codeword's terminating one bit through a
precomputed successor table, so the only per-codeword Python work is one list lookup. Every count
read from a stream is checked against ``d`` and the bits left before it is used.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import Literal

import numpy as np

from fl_split.codecs.errors import CodecError

__all__ = [
    "bit_length",
    "decode_sparse_levels",
    "elias_gamma_bits",
    "encode_sparse_levels",
    "golomb_bits",
    "golomb_parameter",
    "pack_codewords",
    "sparse_levels_bits",
    "truncated_binary_bits",
    "unzigzag",
    "zigzag",
]

#: Widest value a single codeword may carry after its leading zeros (bits). Elias-γ values and
#: Golomb remainders here stay below 2**34; window reads in the decoder handle up to 57 bits.
_MAX_VALUE_BITS = 57
#: Values with at most this many occurrences are decoded codeword by codeword in plain Python.
_FEW_CODEWORDS = 8


# --------------------------------------------------------------------------- scalar / elementwise codes
def bit_length(x: np.ndarray | int) -> np.ndarray:
    """``int.bit_length`` elementwise for non-negative integers below ``2**53`` (0 for 0).

    Parameters
    ----------
    x:
        Non-negative integers.

    Returns
    -------
    numpy.ndarray
        int64 array of bit lengths (``floor(log2 x) + 1``, and 0 for 0).
    """
    _, e = np.frexp(np.asarray(x, dtype=np.int64).astype(np.float64))
    return e.astype(np.int64)


def elias_gamma_bits(n: np.ndarray | int) -> np.ndarray:
    """Length in bits of the Elias-γ code of each ``n >= 1``: ``2 floor(log2 n) + 1``."""
    return 2 * bit_length(n) - 1


def zigzag(v: np.ndarray) -> np.ndarray:
    """Map nonzero integers 1, -1, 2, -2, ... to 1, 2, 3, 4, ... (int64)."""
    v = np.asarray(v, dtype=np.int64)
    return np.where(v > 0, 2 * v - 1, -2 * v)


def unzigzag(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag` for ``z >= 1`` (odd -> positive, even -> negative)."""
    z = np.asarray(z, dtype=np.int64)
    return np.where(z & 1 == 1, (z + 1) // 2, -(z // 2))


def golomb_parameter(n: int, total: int) -> int:
    """Gallager–van Voorhis Golomb parameter for ``n`` ones among ``total`` positions.

    ``m = ceil(log(1 + q) / -log q)`` with ``q = 1 - n / total``, and ``m = 1`` when
    ``n / total >= 1/2``. The ratio is never an exact integer for rational ``q`` in (0, 1); when
    the float64 value lies within ``1e-9`` (relative) of one, it is recomputed with 60-digit
    :mod:`decimal` arithmetic so that every platform picks the same ``m``.

    Parameters
    ----------
    n:
        Number of occurrences, ``1 <= n <= total``.
    total:
        Number of candidate (unclaimed) positions.

    Returns
    -------
    int
        ``m >= 1``.
    """
    if not 1 <= n <= total:
        raise ValueError(f"golomb_parameter needs 1 <= n <= total, got n={n}, total={total}")
    if 2 * n >= total:
        return 1
    p = n / total
    ratio = math.log(2.0 - p) / -math.log1p(-p)
    nearest = round(ratio)
    if abs(ratio - nearest) <= 1e-9 * max(1.0, ratio):
        with localcontext() as ctx:
            ctx.prec = 60
            pd = Decimal(n) / Decimal(total)
            ratio_d = (2 - pd).ln() / -((1 - pd).ln())
            return max(1, int(ratio_d.to_integral_value(rounding="ROUND_CEILING")))
    return max(1, math.ceil(ratio))


def truncated_binary_bits(r: np.ndarray, m: np.ndarray | int) -> np.ndarray:
    """Length of the truncated-binary code of remainder ``r`` in ``[0, m)``: ``k`` or ``k + 1`` bits."""
    m = np.asarray(m, dtype=np.int64)
    k = bit_length(m) - 1
    u = (np.int64(1) << (k + 1)) - m
    return np.where(np.asarray(r, dtype=np.int64) < u, k, k + 1)


def golomb_bits(g: np.ndarray, m: np.ndarray | int) -> np.ndarray:
    """Length of the Golomb code ``G_m(g) = g // m + 1 + tb_m(g % m)`` of gaps ``g >= 0``."""
    g = np.asarray(g, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    return g // m + 1 + truncated_binary_bits(g % m, m)


def _golomb_codewords(g: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, value_bits, length) of Golomb codewords: the unary terminator and remainder form the value."""
    k = bit_length(m) - 1
    u = (np.int64(1) << (k + 1)) - m
    q, r = np.divmod(g, m)
    small = r < u
    tb_value = np.where(small, r, r + u)
    tb_bits = np.where(small, k, k + 1)
    value = (np.int64(1) << tb_bits) | tb_value
    return value, tb_bits + 1, q + 1 + tb_bits


# --------------------------------------------------------------------------- bit packing
def pack_codewords(values: np.ndarray, value_bits: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate variable-length codewords into an MSB-first bit stream.

    Codeword ``i`` is ``lengths[i] - value_bits[i]`` zero bits followed by the ``value_bits[i]``
    low bits of ``values[i]`` (most significant first), so unary prefixes of any length cost
    nothing to build. Runs in O(number of codewords), independent of the zero runs.

    Parameters
    ----------
    values:
        Non-negative integers, each below ``2**value_bits[i]``.
    value_bits:
        1 to 57 bits per codeword.
    lengths:
        Total bits per codeword, ``>= value_bits``.

    Returns
    -------
    tuple[bytes, int]
        The stream, zero-padded to whole bytes, and its length in bits before padding.
    """
    values = np.asarray(values, dtype=np.int64).astype(np.uint64)
    value_bits = np.asarray(value_bits, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if values.size == 0:
        return b"", 0
    if int(value_bits.min()) < 1 or int(value_bits.max()) > _MAX_VALUE_BITS:
        raise ValueError(f"codeword values must have 1..{_MAX_VALUE_BITS} bits")
    ends = np.cumsum(lengths)
    nbits = int(ends[-1])
    start = ends - value_bits
    word = start >> 6
    off = start & 63
    spill = off + value_bits - 64  # > 0: the value crosses into the next 64-bit word
    crosses = spill > 0
    shift_left = np.where(crosses, 0, 64 - off - value_bits).astype(np.uint64)
    shift_right = np.where(crosses, spill, 0).astype(np.uint64)
    head = (values << shift_left) >> shift_right
    words = np.zeros((nbits + 63) // 64 + 1, dtype=np.uint64)
    _or_sorted(words, word, head)
    if crosses.any():
        tail = values[crosses] << (64 - spill[crosses]).astype(np.uint64)
        _or_sorted(words, word[crosses] + 1, tail)
    return words.astype(">u8").tobytes()[: (nbits + 7) // 8], nbits


def _or_sorted(words: np.ndarray, index: np.ndarray, bits: np.ndarray) -> None:
    """``words[index] |= bits`` for a non-decreasing ``index`` (repeated indices are OR-reduced)."""
    first = np.flatnonzero(np.concatenate(([True], index[1:] != index[:-1])))
    words[index[first]] |= np.bitwise_or.reduceat(bits, first)


# --------------------------------------------------------------------------- support <-> ranks
def _searchsorted(sorted_keys: np.ndarray, queries: np.ndarray, side: Literal["left", "right"] = "left") -> np.ndarray:
    """``np.searchsorted`` with the queries sorted first (several times faster for large random queries)."""
    order = np.argsort(queries)
    out = np.empty(queries.size, dtype=np.int64)
    out[order] = np.searchsorted(sorted_keys, queries[order], side=side)
    return out


def _ranks_among_unclaimed(positions: np.ndarray, group: np.ndarray, n_groups: int, numel: int) -> np.ndarray:
    """Rank of each position among the positions not claimed by an earlier group.

    ``rank[i] = positions[i] - #{j : group[j] < group[i], positions[j] < positions[i]}``, computed
    top-down over a binary split of the group ids: log2(K) vectorised passes, no per-group loop.
    """
    rank = positions.astype(np.int64, copy=True)
    stride = numel + 1
    for level in reversed(range(max(n_groups - 1, 0).bit_length())):
        block = group >> (level + 1)
        right = ((group >> level) & 1).astype(bool)
        left_keys = np.sort(block[~right] * stride + rank[~right])
        block_start = np.searchsorted(left_keys, np.arange(((n_groups - 1) >> (level + 1)) + 1) * stride)
        qblock = block[right]
        rank[right] -= _searchsorted(left_keys, qblock * stride + rank[right]) - block_start[qblock]
    return rank


def _positions_from_ranks(rank: np.ndarray, group: np.ndarray, n_groups: int, numel: int) -> np.ndarray:
    """Inverse of :func:`_ranks_among_unclaimed`: absolute positions from ranks among unclaimed ones.

    Bottom-up over the same binary split; the ``r``-th position not in a sorted set ``L`` is
    ``r + #{k : L[k] - k <= r}``.
    """
    pos = rank.astype(np.int64, copy=True)
    stride = numel + 1
    for level in range(max(n_groups - 1, 0).bit_length()):
        block = group >> (level + 1)
        right = ((group >> level) & 1).astype(bool)
        left_keys = np.sort(block[~right] * stride + pos[~right])
        block_start = np.searchsorted(left_keys, np.arange(((n_groups - 1) >> (level + 1)) + 1) * stride)
        first = block_start[left_keys // stride]
        skipped = left_keys - np.arange(left_keys.size) + first  # block*stride + (L[k] - k)
        qblock = block[right]
        pos[right] += _searchsorted(skipped, qblock * stride + pos[right], side="right") - block_start[qblock]
    return pos


# --------------------------------------------------------------------------- canonical grouping
def _canonical_groups(
    positions: np.ndarray, values: np.ndarray, numel: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values in code order, their counts, their unclaimed totals N_a, and all gaps in code order."""
    positions = np.asarray(positions, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if positions.shape != values.shape or positions.ndim != 1:
        raise ValueError("positions and values must be 1-D arrays of the same length")
    if positions.size:
        if (
            int(positions[0]) < 0
            or int(positions[-1]) >= numel
            or (positions.size > 1 and np.any(np.diff(positions) <= 0))
        ):
            raise ValueError(f"positions must be strictly increasing and in [0, {numel})")
        if np.any(values == 0):
            raise ValueError("values must be nonzero (zero is implicit)")
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    n_groups = uniq.size
    order = np.lexsort((uniq, np.abs(uniq), counts))
    group_of = np.empty(n_groups, dtype=np.int64)
    group_of[order] = np.arange(n_groups)
    group = group_of[inverse.reshape(-1)]
    rank = _ranks_among_unclaimed(positions, group, n_groups, numel)
    sort_key = group.astype(np.uint16) if n_groups <= 1 << 16 else group
    perm = np.argsort(sort_key, kind="stable")  # within a group, ranks keep the order of positions
    rank = rank[perm]
    counts = counts[order].astype(np.int64)
    starts = np.cumsum(counts) - counts
    previous = np.empty_like(rank)
    previous[1:] = rank[:-1]
    previous[starts] = -1
    return uniq[order].astype(np.int64), counts, numel - starts, rank - previous - 1


def sparse_levels_bits(positions: np.ndarray, values: np.ndarray, numel: int) -> int:
    """Size in bits of the coded vector by the closed formula (no padding, no scale).

    ``γ(K+1) + Σ_a [γ(zigzag a) + γ(n_a) + Σ_g G_{m_a}(g)]``; the ``dither`` codec adds 32 bits
    for its scale to get the spec's ``B``.

    Parameters
    ----------
    positions:
        Strictly increasing positions of the nonzero entries, in ``[0, numel)``.
    values:
        The nonzero integer values at those positions.
    numel:
        Length ``d`` of the vector.
    """
    vals, counts, unclaimed, gaps = _canonical_groups(positions, values, numel)
    n_groups = vals.size
    bits = int(elias_gamma_bits(n_groups + 1))
    if n_groups == 0:
        return bits
    m = np.array([golomb_parameter(int(n), int(t)) for n, t in zip(counts, unclaimed, strict=True)], dtype=np.int64)
    bits += int(elias_gamma_bits(zigzag(vals)).sum() + elias_gamma_bits(counts).sum())
    return bits + int(golomb_bits(gaps, np.repeat(m, counts)).sum())


def encode_sparse_levels(positions: np.ndarray, values: np.ndarray, numel: int) -> tuple[bytes, int]:
    """Encode a sparse integer vector (see the module docstring for the layout).

    Parameters
    ----------
    positions:
        Strictly increasing positions of the nonzero entries, in ``[0, numel)``.
    values:
        The nonzero values at those positions; ``|zigzag(value)|`` must stay below ``2**34``.
    numel:
        Length ``d`` of the vector (known to the decoder from elsewhere).

    Returns
    -------
    tuple[bytes, int]
        The MSB-first stream padded with zero bits to whole bytes, and its length in bits.
    """
    vals, counts, unclaimed, gaps = _canonical_groups(positions, values, numel)
    n_groups = vals.size
    if n_groups and int(zigzag(np.array([vals.min(), vals.max()])).max()) >= 1 << 34:
        raise ValueError("values must satisfy |v| < 2**33")
    m = np.array([golomb_parameter(int(n), int(t)) for n, t in zip(counts, unclaimed, strict=True)], dtype=np.int64)
    n_items = 1 + 2 * n_groups + gaps.size
    value = np.empty(n_items, dtype=np.int64)
    vbits = np.empty(n_items, dtype=np.int64)
    length = np.empty(n_items, dtype=np.int64)
    # Elias-γ items: K + 1, then zigzag(a) and n_a before each group's gaps.
    starts = np.cumsum(counts) - counts
    head = 1 + 2 * np.arange(n_groups) + starts
    gamma_at = np.concatenate(([0], head, head + 1)).astype(np.int64)
    gamma_val = np.concatenate(([n_groups + 1], zigzag(vals), counts)).astype(np.int64)
    value[gamma_at] = gamma_val
    vbits[gamma_at] = bit_length(gamma_val)
    length[gamma_at] = 2 * vbits[gamma_at] - 1
    if gaps.size:
        group = np.repeat(np.arange(n_groups), counts)
        at = 1 + 2 * (group + 1) + np.arange(gaps.size)
        value[at], vbits[at], length[at] = _golomb_codewords(gaps, m[group])
    return pack_codewords(value, vbits, length)


# --------------------------------------------------------------------------- decoding
class _BitStream:
    """Random-access reads from an MSB-first bit stream, with every read bounds-checked."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        self.nbytes = len(raw)
        self.nbits = 8 * len(raw)
        self.raw = raw + bytes(9)
        self.padded = np.frombuffer(self.raw, dtype=np.uint8)
        self.ones = np.flatnonzero(np.unpackbits(self.padded[: len(raw)])).astype(np.int64)

    def read_bits(self, pos: int, n: int, what: str) -> int:
        """The ``n`` bits at ``pos`` as an unsigned integer."""
        if pos + n > self.nbits:
            raise CodecError(f"coded stream truncated inside {what} (bit {pos + n} of {self.nbits})")
        if n == 0:
            return 0
        b0, b1 = pos >> 3, (pos + n + 7) >> 3
        return (int.from_bytes(self.raw[b0:b1], "big") >> (8 * b1 - pos - n)) & ((1 << n) - 1)

    def windows(self, pos: np.ndarray, n: int) -> np.ndarray:
        """The ``n <= 57`` bits at each position in ``pos`` (bits past the end read as 0)."""
        if n == 0:
            return np.zeros(pos.shape, dtype=np.int64)
        gathered = self.padded[(pos >> 3)[:, None] + np.arange(8)]
        word = np.ascontiguousarray(gathered).view(">u8").reshape(-1).astype(np.uint64)
        word = (word << (pos & 7).astype(np.uint64)) >> np.uint64(64 - n)
        return word.astype(np.int64)

    def first_one(self, pos: int) -> int:
        """Index into ``ones`` of the first one bit at or after ``pos`` (``len(ones)`` if none)."""
        return int(self.ones.searchsorted(pos))

    def next_one(self, pos: int) -> int:
        """Position of the first one bit at or after ``pos``, or -1 if there is none."""
        b = pos >> 3
        word = int.from_bytes(self.raw[b : b + 8], "big") & ((1 << (64 - (pos & 7))) - 1)
        if word:  # the common case: within the next 8 bytes (the zero padding holds no ones)
            return (b << 3) + 64 - word.bit_length()
        i = self.first_one(pos)
        return int(self.ones[i]) if i < self.ones.size else -1

    def read_gamma(self, pos: int, max_value: int, what: str) -> tuple[int, int]:
        """Read an Elias-γ code at ``pos``; returns (value, next position)."""
        one = self.next_one(pos)
        if one < 0:
            raise CodecError(f"coded stream truncated: Elias-γ code of {what} at bit {pos} has no terminating 1")
        zeros = one - pos
        if zeros >= max_value.bit_length():
            raise CodecError(f"{what} has a {zeros}-zero Elias-γ prefix; at most {max_value} is allowed")
        value = self.read_bits(pos + zeros, zeros + 1, what)
        if value > max_value:
            raise CodecError(f"{what} is {value}, above the allowed {max_value}")
        return value, pos + 2 * zeros + 1

    def read_golomb_run(self, pos: int, count: int, m: int, total: int, what: str) -> tuple[np.ndarray, int]:
        """Read ``count`` Golomb codes with parameter ``m``; returns (gaps, next position).

        Each codeword is its unary zeros, a terminating one and ``k`` or ``k + 1`` remainder
        bits, so the next codeword's terminator is at most ``k + 2`` one bits further: the
        successor of every candidate terminator in that window is computed at once, and the
        chain through it is followed with one list lookup per codeword.
        """
        if count > self.nbits - pos:
            raise CodecError(f"coded stream truncated: {what} needs {count} codewords, {self.nbits - pos} bits remain")
        if count <= _FEW_CODEWORDS:
            return self._read_golomb_few(pos, count, m, total, what)
        k = m.bit_length() - 1
        u = (1 << (k + 1)) - m
        i0 = self.first_one(pos)
        width = min(count * (k + 2), self.ones.size - i0)
        if width <= 0:
            raise CodecError(f"coded stream truncated inside {what}")
        cand = self.ones[i0 : i0 + width]
        win = self.windows(cand + 1, k + 1)
        high = win >> 1
        small = high < u
        rem = np.where(small, high, win - u)
        ends = cand + 1 + np.where(small, k, k + 1)
        succ = (np.searchsorted(self.ones, ends) - i0).tolist()
        chain = [0] * count
        i = 0
        for c in range(count):
            if i >= width:
                raise CodecError(f"coded stream truncated inside {what} (codeword {c} of {count})")
            chain[c] = i
            i = succ[i]
        idx = np.asarray(chain, dtype=np.int64)
        end = ends[idx]
        begin = np.concatenate(([pos], end[:-1]))
        quotient = cand[idx] - begin
        if int(quotient.max()) > total:
            raise CodecError(f"{what}: a gap's unary part exceeds the {total} unclaimed positions")
        new_pos = int(end[-1])
        if new_pos > self.nbits:
            raise CodecError(f"coded stream truncated inside the last codeword of {what}")
        return quotient * m + rem[idx], new_pos

    def _read_golomb_few(self, pos: int, count: int, m: int, total: int, what: str) -> tuple[np.ndarray, int]:
        """Scalar twin of :meth:`read_golomb_run` for a few codewords (cheaper than the array set-up)."""
        k = m.bit_length() - 1
        u = (1 << (k + 1)) - m
        gaps = np.empty(count, dtype=np.int64)
        for c in range(count):
            one = self.next_one(pos)
            if one < 0:
                raise CodecError(f"coded stream truncated inside {what} (codeword {c} of {count})")
            if one - pos > total:
                raise CodecError(f"{what}: a gap's unary part exceeds the {total} unclaimed positions")
            high = self.read_bits(one + 1, k, what)
            if high < u:
                rem, end = high, one + 1 + k
            else:
                rem, end = ((high << 1) | self.read_bits(one + 1 + k, 1, what)) - u, one + 2 + k
            gaps[c] = (one - pos) * m + rem
            pos = end
        return gaps, pos


def decode_sparse_levels(
    data: bytes | bytearray | memoryview, numel: int, max_zigzag: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a stream made by :func:`encode_sparse_levels`, validating every field.

    Parameters
    ----------
    data:
        The whole coded stream (its length must be exactly the padded length).
    numel:
        Length ``d`` of the vector.
    max_zigzag:
        Largest allowed ``zigzag(value)`` (``2 s`` for values in ``-s..s``).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray, int]
        Positions (int64, unsorted), values (int64, nonzero) and the stream length in bits.

    Raises
    ------
    CodecError
        On truncation, counts or values out of range, a non-canonical value order, gaps that run
        past the unclaimed positions, nonzero padding or trailing bytes.
    """
    stream = _BitStream(data)
    max_groups = min(numel, max_zigzag)
    k_plus_1, pos = stream.read_gamma(0, max_groups + 1, "the number of distinct values K+1")
    if k_plus_1 == 0:  # pragma: no cover - a γ code is never 0
        raise CodecError("K+1 is 0")
    n_groups = k_plus_1 - 1
    if 3 * n_groups > stream.nbits - pos:  # each value costs at least 3 bits: γ(zigzag), γ(n), one gap
        raise CodecError(f"coded stream truncated: {n_groups} values need at least {3 * n_groups} more bits")
    remaining = numel
    vals = np.empty(n_groups, dtype=np.int64)
    counts = np.empty(n_groups, dtype=np.int64)
    ranks: list[np.ndarray] = []
    previous: tuple[int, int, int] | None = None
    for j in range(n_groups):
        if remaining == 0:
            raise CodecError(f"value {j} of {n_groups} has no unclaimed positions left (d = {numel})")
        zz, pos = stream.read_gamma(pos, max_zigzag, f"zigzag(value {j})")
        value = (zz + 1) // 2 if zz & 1 else -(zz // 2)
        n, pos = stream.read_gamma(pos, remaining, f"count of value {value}")
        key = (n, abs(value), value)
        if previous is not None and key <= previous:
            raise CodecError(
                f"values out of canonical order (count, |v|, v): {key} after {previous} (corrupted stream)"
            )
        previous = key
        m = golomb_parameter(n, remaining)
        gaps, pos = stream.read_golomb_run(pos, n, m, remaining, f"gaps of value {value}")
        rank = np.cumsum(gaps + 1) - 1
        if int(rank[-1]) >= remaining:
            raise CodecError(f"positions of value {value} run past the {remaining} unclaimed positions")
        vals[j], counts[j] = value, n
        ranks.append(rank)
        remaining -= n
    nbytes = (pos + 7) >> 3
    if nbytes != stream.nbytes:
        raise CodecError(f"coded stream is {stream.nbytes} bytes, but its codes end at bit {pos} ({nbytes} bytes)")
    if stream.read_bits(pos, 8 * nbytes - pos, "padding"):
        raise CodecError("nonzero padding bits after the coded stream")
    if n_groups == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), pos
    group = np.repeat(np.arange(n_groups), counts)
    positions = _positions_from_ranks(np.concatenate(ranks), group, n_groups, numel)
    return positions, np.repeat(vals, counts), pos
