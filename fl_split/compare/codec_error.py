"""Compression error against measured bits per element on real cut-layer feature maps (the MS paper's Fig. 2).

For every codec setting of a sweep, encode the same activations once: ``bits_per_element`` is
``8 * len(payload) / numel`` (measured, header included) and ``relative_error`` is
``‖x - decode(payload)‖₂ / ‖x‖₂``. The paper expects, at equal bits, MS below uniform
quantization below top-k below randomized top-k; :func:`ordering_at` reads what was measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fl_split.codecs import codec_from_spec

#: Codec → the specs swept for it (the settings of the curve, from coarse to fine).
DEFAULT_SWEEPS: dict[str, list[str]] = {
    "ms": [f"ms:keep={k},bits={b}" for b in (1, 2, 3) for k in (0.005, 0.01, 0.02, 0.05)],
    "quant": [f"quant:bits={b}" for b in (1, 2, 3, 4, 6, 8)],
    "topk": [f"topk:keep={k}" for k in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)],
    "randtopk": [f"randtopk:keep={k},seed=0" for k in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)],
    "randk": [f"randk:keep={k},seed=0" for k in (0.01, 0.05, 0.1, 0.2, 0.3)],
    "qsgd": [f"qsgd:levels={s},seed=0" for s in (1, 3, 7, 15, 31)],
    "bird": [f"bird:keep={k},mode=values,seed=0" for k in (0.05, 0.1, 0.2, 0.3)],
    "fp16": ["fp16"],
    "sign": ["sign"],
}


def codec_error_curves(x: torch.Tensor, sweeps: Mapping[str, Sequence[str]] = DEFAULT_SWEEPS) -> list[dict[str, Any]]:
    """One row per spec: ``codec``, ``series`` (the plot's curve), ``spec``, ``bits_per_element``,
    ``relative_error``, ``payload_bytes``.

    Raises
    ------
    ValueError
        ``x`` is empty or all zeros (no relative error), or a spec does not parse.
    """
    norm = float(torch.linalg.vector_norm(x.double()))
    if x.numel() == 0 or norm == 0.0:
        raise ValueError("codec error curves need a non-empty, nonzero tensor (the error is relative to ‖x‖)")
    rows = []
    for codec_name, specs in sweeps.items():
        for spec in specs:
            codec = codec_from_spec(spec)
            payload = codec.encode(x)
            x_hat = codec.decode(payload, device=x.device).reshape(x.shape)
            err = float(torch.linalg.vector_norm((x - x_hat.to(x.dtype)).double())) / norm
            series = codec_name
            if codec_name == "ms":  # one curve per mask width (keep varies along it)
                series = f"ms {codec.config().get('bits')}-bit mask"
            rows.append(
                {
                    "codec": codec_name,
                    "series": series,
                    "spec": spec,
                    "bits_per_element": 8 * len(payload) / x.numel(),
                    "relative_error": err,
                    "payload_bytes": len(payload),
                }
            )
    return rows


def error_at(rows: Sequence[dict[str, Any]], codec: str, bits: float) -> float | None:
    """The codec's smallest measured error among its settings at or under ``bits`` per element (None: none)."""
    errs = [r["relative_error"] for r in rows if r["codec"] == codec and r["bits_per_element"] <= bits]
    return min(errs) if errs else None


def ordering_at(rows: Sequence[dict[str, Any]], bits: float, codecs: Sequence[str]) -> list[tuple[str, float | None]]:
    """``codecs`` sorted by :func:`error_at` at ``bits`` (codecs with no setting that small last)."""
    pairs = [(c, error_at(rows, c, bits)) for c in codecs]
    return sorted(pairs, key=lambda p: (p[1] is None, p[1] if p[1] is not None else 0.0))


def plot_codec_error(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Relative error against measured bits per element, one line per codec (log-scaled x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    cmap = plt.get_cmap("tab20")
    ax.set_prop_cycle(color=[cmap(i) for i in range(20)])
    for series in dict.fromkeys(r.get("series", r["codec"]) for r in rows):
        mine = [r for r in rows if r.get("series", r["codec"]) == series]
        pts = sorted((r["bits_per_element"], r["relative_error"]) for r in mine)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=series)
    ax.set_xscale("log")
    ax.set_yscale("log")  # unbiased sparsifiers (randk, qsgd, bird values) have errors above 1
    ax.set_xlabel("measured bits per element (payload, header included)")
    ax.set_ylabel("relative error ‖x − x̂‖₂ / ‖x‖₂")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
