"""Codec benchmark: speed, bandwidth and measured bytes on real post-ReLU feature maps.

Run ``python -m simulations.bench_codecs`` (or ``fl-split bench codecs``). Prints one JSON object:

* ``tensor``: shape, dtype, device, bytes of the benchmarked tensor (a 256x64x16x16 post-ReLU
  activation of a conv net trained on the offline digits data) and the two reference timings
  measured in the same run: ``clone_ms`` (``tensor.clone()``, the physical floor) and
  ``torch_topk_ms`` (``torch.topk`` with k = 1 % of the elements).
* ``codecs``: per codec, median encode/decode times (ms), throughput (GB/s of float32 input),
  the measured ``len(payload)``, bits per element, relative L2 error, and ratios measured in the
  same run: time / ``torch.topk`` of the same k on the same tensor, time / ``clone``.
* ``per_call``: every codec's encode and decode time on one digits batch (the first 32 maps,
  32x64x16x16, what split learning sends per step), beside ``clone()`` of the same batch, so the
  fixed per-call overhead shows next to the bandwidth floor.
* ``ms_target``: MS encode+decode over ``torch.topk`` of the same k on the full tensor, against
  the 0.25 target.
* ``bitpack``: per width 1..8, pack and unpack time, and bandwidth relative to ``clone`` over the
  same number of elements (``clone_ms / pack_ms``; the target is >= 1/3).
* ``ms_exact``: whether MS kept exactly the ``torch.topk`` values (same k-th value, same kept set
  up to ties).

Speed targets live here, never in unit tests: machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fl_split.codecs import Codec, create_codec, list_codecs
from fl_split.codecs.bitpack import pack_bits, unpack_bits
from fl_split.config import CONF_DIR

#: Default configuration: per-codec parameters (codecs not listed run with their defaults).
DEFAULT_CONFIG = CONF_DIR / "bench_codecs.yaml"


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``{codecs: {name: {param: value}}}`` and check every name and parameter.

    Raises
    ------
    ValueError
        For a missing file, an unknown top-level key, codec name or parameter, with the valid ones.
    """
    import yaml

    from fl_split.codecs import codec_parameters

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"benchmark config {path} does not exist (default: {DEFAULT_CONFIG})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - {"codecs"}:
        raise ValueError(f"{path}: expected a mapping with the single key 'codecs', got {sorted(data)}")
    params = data.get("codecs") or {}
    for name, kwargs in params.items():
        if name not in list_codecs():
            raise ValueError(f"{path}: unknown codec {name!r}; registered: {', '.join(list_codecs())}")
        bad = sorted(set(kwargs or {}) - set(codec_parameters(name)))
        if bad:
            raise ValueError(f"{path}: codec {name!r} has no parameter {bad}; valid: {codec_parameters(name)}")
    return {name: dict(kwargs or {}) for name, kwargs in params.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds (device-synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_codec(codec: Codec, x: torch.Tensor, ref: dict[str, float], repeats: int) -> dict[str, Any]:
    """Time one codec's encode and decode of ``x`` and measure its payload."""
    device = x.device
    payload = codec.encode(x)
    y = codec.decode(payload, device=device)
    enc = median_ms(lambda: codec.encode(x), repeats, device)
    dec = median_ms(lambda: codec.decode(payload, device=device), repeats, device)
    k = max(1, math.floor(float(getattr(codec, "keep", 0.01) or 0.01) * x.numel()))
    topk_ms = ref["topk_ms"] if k == ref["k"] else median_ms(lambda: torch.topk(x.reshape(-1), k), repeats, device)
    gb = x.numel() * 4 / 1e9
    return {
        "params": {k_: v for k_, v in codec.config().items() if k_ != "nonfinite"},
        "bytes": len(payload),
        "bits_per_element": round(8 * len(payload) / x.numel(), 4),
        "rel_l2_error": round(float((y.float() - x.float()).norm() / x.float().norm()), 5),
        "encode_ms": round(enc, 3),
        "decode_ms": round(dec, 3),
        "encode_gbps": round(gb / (enc / 1e3), 2),
        "decode_gbps": round(gb / (dec / 1e3), 2),
        "topk_k": k,
        "encode_decode_over_topk": round((enc + dec) / topk_ms, 3),
        "encode_over_topk": round(enc / topk_ms, 3),
        "encode_decode_over_clone": round((enc + dec) / ref["clone_ms"], 2),
    }


#: Maps per split-learning step on digits (the default batch size): the per-call section's batch.
PER_CALL_BATCH = 32
#: Target of ``(MS encode + decode) / torch.topk`` at the paper's operating point (keep 1 %, 2 bits).
MS_TARGET = 0.25


def bench_per_call(codecs: dict[str, Codec], x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Encode and decode time of each codec on one batch ``x``, with ``clone()`` of it as the floor."""
    device = x.device
    clone_ms = median_ms(lambda: x.clone(), repeats, device)
    out: dict[str, Any] = {"shape": list(x.shape), "clone_ms": round(clone_ms, 4), "codecs": {}}
    for name, codec in codecs.items():
        try:
            payload = codec.encode(x)
        except ValueError as err:
            out["codecs"][name] = {"error": str(err)}
            continue
        enc = median_ms(partial(codec.encode, x), repeats, device)
        dec = median_ms(partial(codec.decode, payload, device=device), repeats, device)
        out["codecs"][name] = {
            "encode_ms": round(enc, 4),
            "decode_ms": round(dec, 4),
            "encode_decode_over_clone": round((enc + dec) / clone_ms, 2),
        }
    return out


def bench_bitpack(n: int, device: torch.device, clone_ms: float, repeats: int) -> dict[str, Any]:
    """Pack/unpack ``n`` codes of every width; bandwidth relative to clone of n float32."""
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(0)
    for width in range(1, 9):
        codes = torch.randint(0, 2**width, (n,), dtype=torch.uint8, generator=g).to(device)
        packed = pack_bits(codes, width)
        p_ms = median_ms(partial(pack_bits, codes, width), repeats, device)
        u_ms = median_ms(partial(unpack_bits, packed, width, n), repeats, device)
        out[str(width)] = {
            "pack_ms": round(p_ms, 3),
            "unpack_ms": round(u_ms, 3),
            "pack_bandwidth_vs_clone": round(clone_ms / p_ms, 3),
            "unpack_bandwidth_vs_clone": round(clone_ms / u_ms, 3),
        }
    return out


def ms_exactness(x: torch.Tensor) -> dict[str, Any]:
    """Check that MS keeps exactly the ``torch.topk`` values (its fast selection must be exact)."""
    import numpy as np

    codec = create_codec("ms", keep=0.01, bits=2)
    payload = codec.encode(x)
    flat = x.reshape(-1)
    k = math.floor(0.01 * flat.numel())
    top = torch.topk(flat, k)
    off = codec.header_nbytes(x.ndim)
    sent = np.frombuffer(payload, dtype="<f4", count=k, offset=off)  # the kept values, in position order
    y = codec.decode(payload, device=x.device).reshape(-1)
    above = flat > top.values.min()
    return {
        "k": k,
        "kth_value_torch_topk": float(top.values.min()),
        "kth_value_ms": float(sent.min()),
        "same_kept_multiset": bool(np.array_equal(np.sort(sent), np.sort(top.values.cpu().numpy()))),
        "all_above_kth_exact": bool(torch.equal(y[above], flat[above])),
    }


def run(
    device: str = "cpu",
    repeats: int = 9,
    codecs: list[str] | None = None,
    n: int = 256,
    config: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result."""
    from fl_split.data.feature_maps import real_feature_maps

    dev = torch.device(device)
    x = real_feature_maps(n).to(dev)
    flat = x.reshape(-1)
    k = math.floor(0.01 * flat.numel())
    clone_ms = median_ms(lambda: x.clone(), repeats, dev)
    topk_ms = median_ms(lambda: torch.topk(flat, k), repeats, dev)
    ref = {"clone_ms": clone_ms, "topk_ms": topk_ms, "k": k}
    result: dict[str, Any] = {
        "tensor": {
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "device": str(dev),
            "bytes": x.numel() * x.element_size(),
            "zero_fraction": round(float((x == 0).float().mean()), 4),
            "clone_ms": round(clone_ms, 3),
            "torch_topk_ms": round(topk_ms, 3),
            "torch_topk_k": k,
            "topk_over_clone": round(topk_ms / clone_ms, 1),
        },
        "torch_threads": torch.get_num_threads(),
        "codecs": {},
    }
    instances = {name: create_codec(name, **(config or {}).get(name, {})) for name in codecs or list_codecs()}
    for name, codec in instances.items():
        try:
            result["codecs"][name] = bench_codec(codec, x, ref, repeats)
        except ValueError as err:  # e.g. a codec that cannot take this tensor: report, do not hide
            result["codecs"][name] = {"error": str(err)}
    result["per_call"] = bench_per_call(instances, x[:PER_CALL_BATCH], repeats)
    ms = result["codecs"].get("ms", {})
    if "encode_decode_over_topk" in ms:
        ratio = ms["encode_decode_over_topk"]
        result["ms_target"] = {"encode_decode_over_topk": ratio, "target": MS_TARGET, "met": ratio <= MS_TARGET}
    result["bitpack"] = bench_bitpack(flat.numel(), dev, clone_ms, repeats)
    result["ms_exact"] = ms_exactness(x)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m simulations.bench_codecs``)."""
    parser = argparse.ArgumentParser(prog="fl-split bench codecs", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per measurement (median)")
    parser.add_argument("--codecs", nargs="*", help="subset of codecs (default: all registered)")
    parser.add_argument("--batch", type=int, default=256, help="feature-map batch size (default 256)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML with per-codec parameters")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False on this machine")
    unknown = sorted(set(args.codecs or []) - set(list_codecs()))
    if unknown:
        parser.error(f"unknown codec(s) {unknown}; registered: {', '.join(list_codecs())}")
    try:
        config = load_config(args.config)
    except ValueError as err:
        parser.error(str(err))
    result = run(args.device, args.repeats, args.codecs, args.batch, config)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
