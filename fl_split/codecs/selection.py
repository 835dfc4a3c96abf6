"""Exact top-k selection without a full ``torch.topk`` over the tensor.

``torch.topk`` on millions of elements is dominated by its selection over the whole tensor. But
the exact k largest values can be found with one streaming pass: estimate a threshold from a
small sample, keep the candidates at or above it (a comparison and a compaction, both
bandwidth-bound), and run ``torch.topk`` only on the candidates (about ``1.2 k`` of them). If the
sample under-estimates and fewer than ``k`` candidates survive, the function falls back to the
full ``torch.topk``, so the result is always exact; the sample only decides the speed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: Below this size the plain ``torch.topk`` is as fast as anything cleverer.
_SMALL = 1 << 16
_SAMPLE = 1 << 16
_SAMPLE_SEED = 0x5EED


@lru_cache(maxsize=16)
def _sample_positions(d: int, device: torch.device) -> torch.Tensor:
    """Fixed pseudo-random sample positions for length ``d`` (cached: shapes repeat every step)."""
    g = torch.Generator().manual_seed(_SAMPLE_SEED)
    return torch.randint(0, d, (_SAMPLE,), generator=g).to(device)


def select_topk(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the positions of exactly ``k`` largest elements of ``a`` and the k-th largest value.

    Parameters
    ----------
    a:
        1-D float tensor (typically ``|x|``), any device.
    k:
        Number of positions, ``1 <= k <= len(a)``.

    Returns
    -------
    (idx, t):
        ``idx`` — int64 positions (in no particular order), ``t`` — 0-d tensor, the smallest
        selected value ("Top_min"). Ties at ``t`` are broken by position (lowest first) when the
        fast path is taken, and by ``torch.topk`` otherwise; either way exactly ``k`` positions.
    """
    d = a.numel()
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    if d <= _SMALL or k > d // 8:
        top = torch.topk(a, k, sorted=False)
        return top.indices, top.values.min()
    sample = a[_sample_positions(d, a.device)]
    # Choose the sample rank whose value leaves ~k + 4 sigma elements above it.
    p = k / d
    j = min(_SAMPLE, math.ceil(_SAMPLE * p + 4.0 * math.sqrt(_SAMPLE * p * (1 - p)) + 8))
    tau = torch.topk(sample, j, sorted=False).values.min()
    if tau.item() <= 0.0:
        return _select_with_zero_threshold(a, k)
    cand = torch.nonzero(a >= tau).squeeze(1)
    if cand.numel() < k:  # the sample under-estimated: exact fallback
        top = torch.topk(a, k, sorted=False)
        return top.indices, top.values.min()
    top = torch.topk(a[cand], k, sorted=False)
    return cand[top.indices], top.values.min()


def _select_with_zero_threshold(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k when at most about k elements are positive (sparse, e.g. post-ReLU maps)."""
    pos = torch.nonzero(a > 0).squeeze(1)
    if pos.numel() >= k:
        top = torch.topk(a[pos], k, sorted=False)
        return pos[top.indices], top.values.min()
    # every positive element is kept; the rest are zeros (or negatives), lowest positions first
    rest = torch.nonzero(a <= 0).squeeze(1)
    need = k - pos.numel()
    vals_rest = a[rest]
    if bool((vals_rest < 0).any()):  # generic input: fall back to the exact full selection
        top = torch.topk(a, k, sorted=False)
        return top.indices, top.values.min()
    idx = torch.cat([pos, rest[:need]])
    return idx, torch.zeros((), dtype=a.dtype, device=a.device)
