"""``dither``: dithered quantization + lossless source coding of the sparse integer levels (Malcom-PSGD).

The quantizer is QSGD's stochastic rounding and the coder fl-split's source coder (``docs/papers.md``, Malcom-PSGD; see
:mod:`fl_split.codecs.source_coding`; layout and size formula in ``docs/codecs.md``). For a
tensor ``r`` of ``d`` elements, with step ``Δ = ‖r‖₂ / s`` (or a fixed ``step``):

* default (QSGD stochastic rounding, *non-subtractive* dither): ``z_k = sign(r_k) ⌊|r_k|/Δ + u_k⌋``,
  ``u_k ~ U[0, 1)``; the receiver outputs ``Δ z``. Unbiased, ``|error| < Δ``, and the receiver
  needs no dither.
* ``subtractive=True``: ``z_k = round(r_k/Δ + u_k)``, ``u_k ~ U[-1/2, 1/2)``; sender and receiver
  output ``Δ (z_k - u_k)``. The error is uniform on ``[-Δ/2, Δ/2]`` and independent of ``r``. ``u``
  is regenerated from a per-message 64-bit seed in the header, on a CPU generator, so every
  device reconstructs the same values.
* ``rescale=True``: the decoder divides by ``τ = 1 + ω``, where ``ω`` bounds the relative error
  variance (``E‖Q(r) - r‖² <= ω ‖r‖²``): ``min(d/s², √d/s)`` for QSGD (CHOCO's contractive QSGD)
  and ``d / (12 s²)`` for subtractive dither. Biased but contractive, as compressed gossip needs.

Wire: header parameter block ``<HBQ`` = (levels s, flags, dither seed); body = float32 scale
(``‖r‖₂`` rounded to float32, or ``Δ`` itself when ``step`` is fixed) + the coded levels.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from fl_split.codecs.base import Codec, InputStats, is_int, is_number, require, resolve_seed
from fl_split.codecs.errors import CodecError
from fl_split.codecs.registry import register_codec
from fl_split.codecs.source_coding import (
    decode_sparse_levels,
    elias_gamma_bits,
    encode_sparse_levels,
    sparse_levels_bits,
)
from fl_split.codecs.wire import Header, PayloadReader, unpack_header

__all__ = [
    "MAX_LEVELS",
    "STEP_MAX_LEVEL",
    "DitherCodec",
    "dequantize",
    "dither_uniform",
    "quantize",
    "variance_factor",
]

#: Largest number of positive levels ``s`` (the header stores it as uint16).
MAX_LEVELS = 2**15
#: Largest ``|z|`` with a fixed ``step`` (the level range is then not bounded by ``s``).
STEP_MAX_LEVEL = 2**31 - 1

_FLAG_SUBTRACTIVE = 1
_FLAG_RESCALE = 2
_FLAG_FIXED_STEP = 4
_KNOWN_FLAGS = _FLAG_SUBTRACTIVE | _FLAG_RESCALE | _FLAG_FIXED_STEP
_F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- quantizer
def dither_uniform(seed: int, numel: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``numel`` float32 draws from U[0, 1), generated on a CPU generator seeded with ``seed``.

    Device-independent: the same ``seed`` gives the same values wherever they are used; the
    result is then moved to ``device``. Subtractive dither uses ``u - 1/2``.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    u = torch.rand(numel, generator=gen, dtype=torch.float32)
    return u if device is None else u.to(device)


def variance_factor(numel: int, levels: int, subtractive: bool = False) -> float:
    """``ω`` with ``E‖Q(r) - r‖² <= ω ‖r‖²`` for the norm-scaled quantizer with ``s = levels``.

    QSGD (non-subtractive): ``min(d/s², √d/s)`` (the QSGD lemma). Subtractive dither:
    ``d / (12 s²)`` (uniform error of variance ``Δ²/12`` per element; fl-split's extension).
    """
    if subtractive:
        return numel / (12.0 * levels**2)
    return min(numel / levels**2, math.sqrt(numel) / levels)


def quantize(
    r: torch.Tensor,
    *,
    levels: int = 15,
    step: float | None = None,
    subtractive: bool = False,
    uniform: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels of the dithered quantizer; each row along the last dimension is one vector.

    Computed in float64 so that ``|z| <= s`` holds exactly and ``Q(c e_k) = c e_k``.

    Parameters
    ----------
    r:
        Input of any float dtype and shape ``(..., d)``.
    levels:
        ``s``; the step is ``Δ = ‖row‖₂ / s`` with the norm rounded to float32 (what is sent).
    step:
        Fixed ``Δ`` instead (rounded to float32); then ``|z|`` may reach :data:`STEP_MAX_LEVEL`.
    subtractive:
        ``False``: ``z = sign(r) ⌊|r|/Δ + u⌋``. ``True``: ``z = ⌊r/Δ + u⌋ = round(r/Δ + u - 1/2)``.
    uniform:
        The draws ``u`` in [0, 1) (shape of ``r``); drawn with ``generator`` on ``r``'s device if omitted.
    generator:
        Generator for ``uniform`` when it is not given.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``z`` (int64, shape of ``r``) and the scale (float64, shape ``(..., 1)``): the float32
        norm, or ``Δ``.

    Raises
    ------
    ValueError
        If the norm overflows float32, or a fixed step would need ``|z| > STEP_MAX_LEVEL``.
    """
    r64 = r.detach().to(torch.float64, copy=True)
    if uniform is None:
        uniform = torch.rand(r.shape, generator=generator, dtype=torch.float32, device=r.device)
    u = uniform.to(device=r.device, dtype=torch.float64, copy=True)
    if step is None:
        norm = torch.linalg.vector_norm(r64, dim=-1, keepdim=True)
        scale = norm.to(torch.float32).to(torch.float64)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("dither: the tensor's L2 norm exceeds the float32 range; scale the input down")
        # |r_k| <= scale (float32 rounding is monotone), so |r_k| s / scale <= s exactly.
        t = r64.mul_(levels).div_(torch.where(scale > 0, scale, torch.ones_like(scale)))
    else:
        scale = torch.full((*r.shape[:-1], 1), float(np.float32(step)), dtype=torch.float64, device=r.device)
        t = r64.div_(scale)
        biggest = float(t.abs().max()) if t.numel() else 0.0
        if biggest + 1 >= STEP_MAX_LEVEL:
            raise ValueError(
                f"dither: |r|/step reaches {biggest:.4g}, beyond the level range ±{STEP_MAX_LEVEL}; "
                "use a larger step or step=None"
            )
    # u < 1 is a float32, so |t| + u stays below the next integer after |t| in float64: |z| <= s.
    z = u.add_(t).floor_() if subtractive else u.add_(t.abs()).floor_().copysign_(t)
    return z.to(torch.int64), scale


def dequantize(
    z: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    levels: int = 15,
    fixed_step: bool = False,
    subtractive: bool = False,
    uniform: torch.Tensor | None = None,
    rescale: bool = False,
    numel: int | None = None,
) -> torch.Tensor:
    """Reconstruct ``Δ z`` (or ``Δ (z - u + 1/2)`` for subtractive dither) in float64.

    ``Δ`` is ``scale / levels`` (computed as ``(z scale) / levels``, exact for ``z = ±s``), or
    ``scale`` when ``fixed_step``. ``rescale`` divides by ``1 + variance_factor(d, levels, subtractive)``
    with ``d = numel``, by default ``z.shape[-1]`` (pass it when ``z`` holds only the nonzero levels).
    """
    zf = z.to(torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=z.device)
    if subtractive:
        if uniform is None:
            raise ValueError("subtractive dither needs the uniform draws to reconstruct")
        zf = zf - uniform.to(device=z.device, dtype=torch.float64) + 0.5
    out = zf * scale if fixed_step else zf * scale / levels
    if rescale:
        d = z.shape[-1] if numel is None else numel
        out = out / (1.0 + variance_factor(d, levels, subtractive))
    return out


def _largest_output(values: np.ndarray, scale: float, levels: int, fixed_step: bool, subtractive: bool) -> float:
    """Upper bound on ``|dequantize(z)|`` (before rescaling) for the nonzero ``values`` of ``z``."""
    biggest = float(np.abs(values).max()) if values.size else 0.0
    if subtractive:
        biggest += 0.5
    return biggest * scale if fixed_step else biggest * scale / levels


def _saturate(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Clamp to the largest finite value of a half-precision output dtype (rounding up can overshoot it)."""
    if dtype in (torch.float16, torch.bfloat16):
        limit = float(torch.finfo(dtype).max)
        out = out.clamp_(-limit, limit)
    return out


# --------------------------------------------------------------------------- codec
@register_codec
class DitherCodec(Codec):
    """``dither``: dithered quantization of the tensor + Elias/Golomb coding of its sparse levels.

    Parameters
    ----------
    levels:
        ``s``, the number of positive quantization levels, 1 to :data:`MAX_LEVELS` (default 15,
        CHOCO's ``2**4 - 1``). The step is ``Δ = ‖r‖₂ / s`` per tensor and ``z ∈ {-s..s}``.
    step:
        Fixed quantization step ``Δ > 0`` (sent as float32) instead of ``‖r‖₂ / s``; ``levels`` is
        then unused and ``|z| <= STEP_MAX_LEVEL``. Default ``None``.
    subtractive:
        Subtractive dither (sender and receivers subtract the same ``u``). Default ``False``: QSGD
        stochastic rounding.
    rescale:
        Divide the reconstruction by ``1 + ω`` (contractive, biased). Default ``False`` so that
        ``E[decode(encode(x))] = x``; Malcom-PSGD / CHOCO gossip pass ``rescale=True``. Needs
        ``step=None``.
    seed:
        Seed of the codec's generator (``None``: drawn from torch's global RNG). Each message draws
        a 64-bit seed from it; subtractive dither writes that seed into the header.
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "dither"
    codec_id = 12
    param_format = "HBQ"  # levels s, flags, per-message dither seed (0 unless subtractive)
    fixed_size = False

    def __init__(
        self,
        *,
        levels: int = 15,
        step: float | None = None,
        subtractive: bool = False,
        rescale: bool = False,
        seed: int | None = None,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        require(
            is_int(levels) and 1 <= levels <= MAX_LEVELS,
            f"levels must be an int in [1, {MAX_LEVELS}], got {levels!r}",
        )
        if step is not None:
            ok = is_number(step) and math.isfinite(step)
            require(
                ok and 0 < step <= _F32_MAX and float(np.float32(step)) > 0,
                f"step must be None or a finite number > 0 representable in float32, got {step!r}",
            )
        require(isinstance(subtractive, bool), f"subtractive must be a bool, got {subtractive!r}")
        require(isinstance(rescale, bool), f"rescale must be a bool, got {rescale!r}")
        require(
            not (rescale and step is not None),
            "rescale needs the norm-scaled step (step=None): its factor 1 + ω is defined through levels",
        )
        self.levels = int(levels)
        self.step = None if step is None else float(step)
        self.subtractive = subtractive
        self.rescale = rescale
        self.seed = resolve_seed(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)

    # ----------------------------------------------------------------- sizes
    def expected_bits(self, numel: int) -> int:
        """Upper bound on the body size in bits, padding included.

        ``32 + γ(K+1) + K (γ(2 cap) + γ(d)) + d (7.1 + log2 K)`` with ``K = min(d, 2 cap)`` the
        most distinct values; the Golomb term bounds ``Σ_a n_a (5.7 + log2(N_a / n_a))`` for the
        Gallager–van Voorhis parameter. Typical payloads are far smaller; see :meth:`analytic_bits`.
        """
        if numel == 0:
            return 0
        cap = STEP_MAX_LEVEL if self.step is not None else self.levels
        k = min(numel, 2 * cap)
        gamma = int(elias_gamma_bits(k + 1)) + k * int(elias_gamma_bits(2 * cap) + elias_gamma_bits(numel))
        bits = 32 + gamma + math.ceil(numel * (7.1 + math.log2(k)))
        return 8 * math.ceil(bits / 8)

    def analytic_bits(self, payload: bytes) -> int:
        """The spec's formula ``B`` for this payload, from its decoded integer levels (bits, no padding).

        ``B = 32 + γ(K+1) + Σ_a [γ(zigzag a) + γ(n_a) + Σ_g G_{m_a}(g)]``; an all-zero tensor gives 33.
        """
        header = unpack_header(payload, self.codec_id, self.name, self._param_struct)
        if header.numel == 0:
            return 0
        reader = PayloadReader(payload, header.body_offset, self.name)
        positions, values, _, _ = self._read_levels(reader, header)
        order = np.argsort(positions)
        return 32 + sparse_levels_bits(positions[order], values[order], header.numel)

    # ----------------------------------------------------------------- hooks
    def _next_seed(self) -> int:
        halves = torch.randint(0, 2**32, (2,), generator=self._generator, dtype=torch.int64).tolist()
        return (halves[0] << 32) | halves[1]

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list]:
        numel = flat.numel()
        message_seed = self._next_seed()
        if self.subtractive:
            uniform = dither_uniform(message_seed, numel, flat.device)
        else:
            gen = torch.Generator(device=flat.device)
            gen.manual_seed(message_seed)
            uniform = torch.rand(numel, generator=gen, dtype=torch.float32, device=flat.device)
        z, scale = quantize(flat, levels=self.levels, step=self.step, subtractive=self.subtractive, uniform=uniform)
        index = torch.nonzero(z).reshape(-1)
        positions = index.cpu().numpy()
        values = z[index].cpu().numpy()
        scale_f = float(scale.reshape(-1)[0])
        if _largest_output(values, scale_f, self.levels, self.step is not None, self.subtractive) > _F32_MAX:
            raise ValueError("codec 'dither': the reconstruction would overflow float32; scale the input down")
        coded, _ = encode_sparse_levels(positions, values, numel)
        flags = (
            (_FLAG_SUBTRACTIVE if self.subtractive else 0)
            | (_FLAG_RESCALE if self.rescale else 0)
            | (_FLAG_FIXED_STEP if self.step is not None else 0)
        )
        params = (self.levels, flags, message_seed if self.subtractive else 0)
        return params, [struct.pack("<f", scale_f), coded]

    def _read_levels(self, reader: PayloadReader, header: Header) -> tuple[np.ndarray, np.ndarray, float, int]:
        """Validate the parameter block, read the scale and the coded levels; (positions, values, scale, flags)."""
        levels, flags, seed = header.params
        if not 1 <= levels <= MAX_LEVELS:
            raise reader.error(f"header has levels = {levels}, outside [1, {MAX_LEVELS}]")
        if flags & ~_KNOWN_FLAGS:
            raise reader.error(f"header has unknown flag bits {flags:#04x}")
        fixed_step = bool(flags & _FLAG_FIXED_STEP)
        if flags & _FLAG_RESCALE and fixed_step:
            raise reader.error("header combines rescale with a fixed step, which the codec never emits")
        if seed and not flags & _FLAG_SUBTRACTIVE:
            raise reader.error("header carries a dither seed without the subtractive flag")
        (scale,) = reader.take_struct("f", "scale")
        if not (math.isfinite(scale) and (scale > 0 if fixed_step else scale >= 0)):
            raise reader.error(f"scale {scale!r} is not a finite {'positive' if fixed_step else 'non-negative'} float")
        cap = STEP_MAX_LEVEL if fixed_step else levels
        try:
            positions, values, _ = decode_sparse_levels(
                reader.take(reader.remaining, "coded levels"), header.numel, 2 * cap
            )
        except CodecError as exc:
            raise reader.error(str(exc)) from exc
        if scale == 0 and values.size:
            raise reader.error("scale is 0 but the coded levels are not all zero")
        if _largest_output(values, scale, levels, fixed_step, bool(flags & _FLAG_SUBTRACTIVE)) > _F32_MAX:
            raise reader.error("scale and levels give values beyond the float32 range")
        return positions, values, scale, flags

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        positions, values, scale, flags = self._read_levels(reader, header)
        levels, _, seed = header.params
        options = {
            "levels": levels,
            "fixed_step": bool(flags & _FLAG_FIXED_STEP),
            "rescale": bool(flags & _FLAG_RESCALE),
            "numel": header.numel,
        }
        index = torch.from_numpy(positions).to(device)
        if flags & _FLAG_SUBTRACTIVE:  # dense: every element carries -u
            z = torch.zeros(header.numel, dtype=torch.int64, device=device)
            z[index] = torch.from_numpy(values).to(device)
            uniform = dither_uniform(seed, header.numel, device)
            out = dequantize(z, scale, subtractive=True, uniform=uniform, **options).to(torch.float32)
            return _saturate(out, header.dtype)
        out = torch.zeros(header.numel, dtype=torch.float32, device=device)
        out[index] = dequantize(torch.from_numpy(values), scale, **options).to(device=device, dtype=torch.float32)
        return _saturate(out, header.dtype)
