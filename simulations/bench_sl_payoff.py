"""Where split learning pays off: bytes per client per epoch of each SL variant and of FL, from measured payloads.

``fl-split bench sl-payoff`` (or ``python -m simulations.bench_sl_payoff``) builds each model of the
MS paper (``vgg19``, ``resnet18``, ``resnet34``) at its ``shallow``, ``medium`` and ``deep`` cuts
(with the registry's default stems: ``resnet18``'s CIFAR stem, ``resnet34``'s ImageNet stem, which
turns a 32x32 input into 8x8 maps before the first cut; ``--stem resnet34=cifar`` changes it), runs
one batch of ``--batch-size`` CIFAR-10-sized inputs through the client half in train mode, and backpropagates a
cross-entropy with random labels through the server half to get the real gradient of the cut-layer
activation. The inputs are ``torch.rand`` images normalised with CIFAR-10's per-channel mean and
standard deviation (no dataset is downloaded): the pixels are not CIFAR's, the shapes are, and every
size below depends only on the shapes (MS, quant, none and the mask downlink have fixed-size
payloads for a given number of elements).

Every size is the ``len()`` of a real payload: activations and gradients through
:func:`fl_split.codecs.codec_from_spec`, labels through :func:`fl_split.sl.wire.encode_labels`, the
``mask`` downlink through :func:`fl_split.sl.wire.encode_masked` at the uplink's support, weights
through :func:`fl_split.codecs.tensors.encode_tensors` (one float32 payload per ``state_dict``
tensor, as ``sl_begin`` sends them), FL updates through :func:`fl_split.fl.update.encode_update`
(per tensor, tensors under ``dense_below`` = 1024 elements dense, as ``fl-split fl`` does by default)
of a random update ``randn_like(p) * 1e-3`` of every floating-point ``state_dict`` tensor.

Per client and epoch (one local epoch per round), for ``n`` samples per client and batch size ``B``:

* SL: ``ceil(n / B)`` batches, each uplink activations + labels and downlink the activation
  gradient, plus the client half's weights down and up once (as ``splitfed1``/``splitfed2`` do).
  The last batch of an epoch is partial when ``B`` does not divide ``n``; it is counted as a full
  batch (``ceil``), so SL's bytes are an upper bound by less than one batch.
* FL: the update up and the dense float32 model down, independent of ``n``.

The crossover ``n*`` is the smallest ``n`` at which SL moves at least as many bytes as FL: SL moves
fewer bytes for every ``n < n*``. It is computed exactly from the formula (not read off the grid);
``null`` where SL moves at least as many bytes already at ``n = 1`` (the client half's weights alone
cost as much as FL), ``in_range`` says whether it lies on the plotted grid.

Output (``--out DIR``, default ``docs/results``): ``sl_payoff.json`` (also printed), ``sl_payoff.md``
(tables) and ``sl_payoff.png`` (one panel per model and cut, log-log bytes per epoch against samples
per client, crossovers marked with dots). JSON fields:

* ``setting``: ``batch_size``, ``num_classes``, ``seed``, ``input`` (how the images were made),
  ``samples`` (the grid of ``n``), ``sl_variants`` (name -> ``uplink`` spec, ``downlink`` spec,
  ``"mask"`` or ``null``, ``head``: whether the client trains an auxiliary head), ``fl_variants``
  (name -> ``uplink`` spec, ``error_feedback``, ``dense_below``), ``torch`` (version).
* ``results``: one entry per model and cut: ``model``, ``cut``, ``stem``, ``activation_shape``,
  ``activation_zero_fraction``, ``client_params``/``server_params``/``head_params`` (trainable
  parameters), ``labels_bytes``, ``sl`` (per variant, bytes: ``uplink_activation``,
  ``uplink_labels``, ``uplink`` and ``downlink`` per batch, ``per_batch``, ``weights_down`` and
  ``weights_up`` per round, ``per_round``), ``fl`` (per variant, bytes per round: ``up``, ``down``,
  ``per_round``), ``curves`` (``sl``: per variant, bytes per epoch at each ``samples`` value; ``fl``:
  per variant, the constant), ``crossovers`` (per SL variant, per FL variant: ``samples`` = ``n*``
  or ``null``, ``batches`` = ``ceil(n*/B)``, ``in_range``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_split.codecs import codec_from_spec
from fl_split.codecs.tensors import encode_tensors
from fl_split.fl.config import FLConfig
from fl_split.fl.update import encode_update
from fl_split.models import create_split_model
from fl_split.sl.wire import encode_labels, encode_masked

MODELS = ("vgg19", "resnet18", "resnet34")
#: The input stems (the registry's defaults, named so that a change there shows here): ResNet34's
#: ImageNet stem (conv 7x7 stride 2 + max-pool) turns a 32x32 input into 8x8 maps before the first cut.
STEMS: dict[str, str | None] = {"vgg19": None, "resnet18": "cifar", "resnet34": "imagenet"}
CUTS = ("shallow", "medium", "deep")
NUM_CLASSES = 10
#: CIFAR-10's per-channel mean and standard deviation (as :mod:`fl_split.data.registry` normalises it).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: The MS paper's uplink: top 1 % values and a 2-bit mask.
MS_UP = "ms:keep=0.01,bits=2"
#: Split-learning variants: name -> (uplink spec, downlink spec / ``"mask"`` / ``None``, auxiliary head).
SL_VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "dense-grad": (MS_UP, "none", False),
    "mask": (MS_UP, "mask", False),
    "ms-grad": (MS_UP, "ms:keep=0.01,bits=2,signed=true", False),
    "quant": ("quant:bits=2", "quant:bits=2", False),
    "local": (MS_UP, None, True),
    "none": ("none", "none", False),
}
#: Federated-learning variants: name -> (update codec spec, error feedback).
FL_VARIANTS: dict[str, tuple[str, bool]] = {
    "none": ("none", False),
    "ms+ef": ("ms:keep=0.01,bits=2,signed=true", True),
}
#: ``fl-split fl``'s default: tensors with fewer elements go dense (biases, BatchNorm).
DENSE_BELOW: int = FLConfig().dense_below


def cifar_like_batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: uniform random 3x32x32 images normalised with CIFAR-10's channel statistics, random labels.

    Parameters
    ----------
    batch_size:
        Number of images.
    seed:
        Seed of the generator that draws the images and labels.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, 32, 32, generator=g)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x - mean) / std, y


def pool_head(channels: int) -> nn.Module:
    """The local-loss auxiliary head: average-pool to 2x2, one linear layer (``4*C*10 + 10`` weights)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * channels, NUM_CLASSES))


def weight_bytes(module: nn.Module) -> int:
    """Measured bytes of ``module``'s weights as SL sends them: one float32 payload per ``state_dict`` tensor."""
    return sum(len(p) for p in encode_tensors(list(module.state_dict().values())))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def activation_and_gradient(
    client: nn.Module, server: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, g)``: the cut-layer activation of ``x`` (client half in train mode) and the gradient of a
    cross-entropy through the server half with respect to it."""
    client.train()
    server.train()
    with torch.no_grad():
        a = client(x)
    a.requires_grad_()
    nn.functional.cross_entropy(server(a), y).backward()
    assert a.grad is not None
    return a.detach(), a.grad.detach()


def sl_payloads(a: torch.Tensor, g: torch.Tensor, uplink: str, downlink: str | None) -> tuple[int, int]:
    """``(uplink activation bytes, downlink gradient bytes)`` of one batch, from real payloads.

    ``downlink`` is a codec spec, ``"mask"`` (the gradient's float32 values at the uplink's kept
    positions, :func:`fl_split.sl.wire.encode_masked`) or ``None`` (no gradient sent: 0 bytes).
    """
    codec = codec_from_spec(uplink)
    payload = codec.encode(a)
    if downlink is None:
        down = 0
    elif downlink == "mask":
        down = len(encode_masked(g, codec.support(payload)))
    else:
        down = len(codec_from_spec(downlink).encode(g))
    return len(payload), down


def fl_round_bytes(model: nn.Module, seed: int) -> dict[str, dict[str, int]]:
    """Bytes per client and round of each FL variant: the encoded random update up, dense weights down."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    deltas = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float32) * 1e-3
        for k, v in state.items()
        if v.is_floating_point()
    }
    down = weight_bytes(model)
    out: dict[str, dict[str, int]] = {}
    for name, (spec, ef) in FL_VARIANTS.items():
        _, payloads, _ = encode_update(deltas, spec, dense_below=DENSE_BELOW, residuals={} if ef else None)
        up = sum(len(p) for p in payloads)
        out[name] = {"up": up, "down": down, "per_round": up + down}
    return out


def sl_epoch_bytes(samples: int, batch_size: int, per_batch: int, per_round: int) -> int:
    """SL bytes per client per epoch: ``ceil(samples / batch_size)`` full batches plus the round's weights."""
    return math.ceil(samples / batch_size) * per_batch + per_round


def crossover_samples(per_batch: int, per_round: int, fl_bytes: int, batch_size: int) -> int | None:
    """The smallest ``n`` with ``sl_epoch_bytes(n) >= fl_bytes``; ``None`` if that holds already at ``n = 1``.

    SL moves fewer bytes than FL for every ``n`` below the returned value. ``per_batch`` must be positive.
    """
    if per_batch <= 0:
        raise ValueError(f"per_batch must be positive, got {per_batch}")
    if sl_epoch_bytes(1, batch_size, per_batch, per_round) >= fl_bytes:
        return None
    batches = math.ceil((fl_bytes - per_round) / per_batch)  # the first batch count reaching FL (>= 2)
    return (batches - 1) * batch_size + 1


def samples_grid(low: int, high: int, per_decade: int) -> list[int]:
    """Integers from ``low`` to ``high``, log-spaced with ``per_decade`` points per decade (deduplicated)."""
    steps = max(1, round(per_decade * math.log10(high / low)))
    return sorted({round(low * (high / low) ** (i / steps)) for i in range(steps + 1)})


def measure(model: str, cut: str, batch_size: int, seed: int, stem: str | None = None) -> dict[str, Any]:
    """Payload sizes of one model and cut: per-batch SL bytes per variant, per-round weights, FL per round.

    ``stem`` is the model's input stem (``None``: the registry's default for the model).
    """
    client, server = create_split_model(model, cut, num_classes=NUM_CLASSES, in_channels=3, stem=stem, seed=seed)
    x, y = cifar_like_batch(batch_size, seed)
    a, g = activation_and_gradient(client, server, x, y)
    head = pool_head(a.shape[1])
    labels = len(encode_labels(y, NUM_CLASSES))
    client_weights = weight_bytes(client)
    head_weights = weight_bytes(head)
    sl: dict[str, dict[str, int]] = {}
    for name, (up_spec, down_spec, with_head) in SL_VARIANTS.items():
        act, down = sl_payloads(a, g, up_spec, down_spec)
        weights = client_weights + (head_weights if with_head else 0)
        sl[name] = {
            "uplink_activation": act,
            "uplink_labels": labels,
            "uplink": act + labels,
            "downlink": down,
            "per_batch": act + labels + down,
            "weights_down": weights,
            "weights_up": weights,
            "per_round": 2 * weights,
        }
    return {
        "model": model,
        "cut": cut,
        "stem": stem,
        "activation_shape": list(a.shape),
        "activation_zero_fraction": round(float((a == 0).float().mean()), 4),
        "client_params": _params(client),
        "server_params": _params(server),
        "head_params": _params(head),
        "labels_bytes": labels,
        "sl": sl,
        "fl": fl_round_bytes(nn.Sequential(*client, *server), seed),
    }


def add_curves(entry: dict[str, Any], samples: Sequence[int], batch_size: int) -> None:
    """Add ``curves`` and ``crossovers`` to one :func:`measure` entry."""
    low, high = min(samples), max(samples)
    entry["curves"] = {
        "sl": {
            name: [sl_epoch_bytes(n, batch_size, v["per_batch"], v["per_round"]) for n in samples]
            for name, v in entry["sl"].items()
        },
        "fl": {name: v["per_round"] for name, v in entry["fl"].items()},
    }
    crossovers: dict[str, dict[str, dict[str, Any]]] = {}
    for name, v in entry["sl"].items():
        crossovers[name] = {}
        for fl_name, f in entry["fl"].items():
            n = crossover_samples(v["per_batch"], v["per_round"], f["per_round"], batch_size)
            crossovers[name][fl_name] = {
                "samples": n,
                "batches": None if n is None else math.ceil(n / batch_size),
                "in_range": n is not None and low <= n <= high,
            }
    entry["crossovers"] = crossovers


def run(
    models: Sequence[str] = MODELS,
    cuts: Sequence[str] = CUTS,
    batch_size: int = 32,
    samples: Sequence[int] | None = None,
    seed: int = 0,
    stems: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict (see the module docstring for its fields).

    ``stems`` maps a model to its input stem (default :data:`STEMS`; a model not in it: the registry's default).
    """
    grid = list(samples) if samples is not None else samples_grid(10, 100_000, 10)
    stems = STEMS if stems is None else stems
    results = []
    for model in models:
        for cut in cuts:
            entry = measure(model, cut, batch_size, seed, stems.get(model))
            add_curves(entry, grid, batch_size)
            results.append(entry)
    return {
        "setting": {
            "batch_size": batch_size,
            "num_classes": NUM_CLASSES,
            "seed": seed,
            "input": "torch.rand 3x32x32 images normalised with CIFAR-10's channel mean and std; random labels",
            "samples": grid,
            "sl_variants": {
                name: {"uplink": up, "downlink": down, "head": head} for name, (up, down, head) in SL_VARIANTS.items()
            },
            "fl_variants": {
                name: {"uplink": spec, "error_feedback": ef, "dense_below": DENSE_BELOW}
                for name, (spec, ef) in FL_VARIANTS.items()
            },
            "torch": torch.__version__,
        },
        "results": results,
    }


def _n(value: int | None) -> str:
    return "never" if value is None else f"{value:,}"


def markdown(result: dict[str, Any]) -> str:
    """The report: sizes and parameters, per-batch bytes per SL variant, crossovers."""
    s = result["setting"]
    sl_names, fl_names = list(s["sl_variants"]), list(s["fl_variants"])
    lines = [
        "# Where split learning pays off (`fl-split bench sl-payoff`)",
        "",
        f"Batch size {s['batch_size']}, {s['num_classes']} classes, CIFAR-10-sized inputs ({s['input']}). "
        "Every byte count is the `len()` of a real payload. Per client and epoch (one local epoch per round): "
        "SL sends `ceil(n/B)` batches (the last, partial batch counted as a full one) plus the client half's "
        "weights down and up once; FL sends its update up and the dense model down.",
        "",
        "SL variants (uplink / downlink): "
        + "; ".join(
            f"`{k}`: {v['uplink']} / {v['downlink'] if v['downlink'] is not None else 'no gradient'}"
            + (" + auxiliary pool head" if v["head"] else "")
            for k, v in s["sl_variants"].items()
        )
        + ". FL variants (update up, dense float32 model down): "
        + "; ".join(
            f"`{k}`: {v['uplink']}{' + EF' if v['error_feedback'] else ''} (dense below {v['dense_below']} elements)"
            for k, v in s["fl_variants"].items()
        )
        + ".",
        "",
        "Input stems: "
        + (", ".join(sorted({f"{e['model']} {e['stem']}" for e in result["results"] if e["stem"]})) or "none")
        + " (the ImageNet stem's stride-2 conv and max-pool turn a 32×32 input into 8×8 maps before the first cut).",
        "",
        "## Models, cuts and per-round bytes",
        "",
        "| model | cut | activation | client params | server params | SL weights per round (down + up) "
        "| local SL, with head | FL none per round | FL ms+ef per round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result["results"]:
        shape = "×".join(map(str, e["activation_shape"]))
        lines.append(
            f"| {e['model']} | {e['cut']} | {shape} | {e['client_params']:,} | {e['server_params']:,} "
            f"| {e['sl']['none']['per_round']:,} | {e['sl']['local']['per_round']:,} "
            f"| {e['fl']['none']['per_round']:,} | {e['fl']['ms+ef']['per_round']:,} |"
        )
    lines += [
        "",
        "## Bytes per batch (uplink: activations + labels / downlink: gradient)",
        "",
        "| model | cut | " + " | ".join(f"sl {n}" for n in sl_names) + " |",
        "|---|---|" + "---:|" * len(sl_names),
    ]
    for e in result["results"]:
        cells = [f"{e['sl'][n]['uplink']:,} / {e['sl'][n]['downlink']:,}" for n in sl_names]
        lines.append(f"| {e['model']} | {e['cut']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Crossover: samples per client n* from which SL moves at least as many bytes as FL",
        "",
        "SL moves fewer bytes than FL for every n below n*; *never*: SL moves at least as many already at one "
        "sample (one batch plus the client half's weights down and up). n* is exact (from the formula), also where it "
        f"lies beyond the plotted {min(s['samples']):,} to {max(s['samples']):,} samples. "
        f"Cells: vs {' / vs '.join('FL ' + n for n in fl_names)}.",
        "",
        "| model | cut | " + " | ".join(f"sl {n}" for n in sl_names) + " |",
        "|---|---|" + "---:|" * len(sl_names),
    ]
    for e in result["results"]:
        cells = [" / ".join(_n(e["crossovers"][n][f]["samples"]) for f in fl_names) for n in sl_names]
        lines.append(f"| {e['model']} | {e['cut']} | " + " | ".join(cells) + " |")
    lines += ["", "![bytes per epoch against samples per client](sl_payoff.png)", ""]
    return "\n".join(lines)


#: Line styles of the SL variants and the FL lines in the plot.
_SL_STYLE = {
    "dense-grad": {"color": "tab:blue"},
    "mask": {"color": "tab:orange"},
    "ms-grad": {"color": "tab:green"},
    "quant": {"color": "tab:purple"},
    "local": {"color": "tab:brown"},
    "none": {"color": "tab:gray", "linestyle": "--"},
}
_FL_STYLE = {"none": {"color": "black", "linestyle": "-"}, "ms+ef": {"color": "tab:red", "linestyle": ":"}}


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bytes per epoch against samples per client, log-log: one panel per model (row) and cut (column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["results"]
    models = list(dict.fromkeys(e["model"] for e in entries))
    cuts = list(dict.fromkeys(e["cut"] for e in entries))
    samples = result["setting"]["samples"]
    b = result["setting"]["batch_size"]
    fig, axes = plt.subplots(
        len(models), len(cuts), figsize=(4.0 * len(cuts), 3.1 * len(models)), dpi=110, squeeze=False, sharex=True
    )
    for e in entries:
        ax = axes[models.index(e["model"])][cuts.index(e["cut"])]
        for name, curve in e["curves"]["sl"].items():
            ax.plot(samples, [v / 1e6 for v in curve], label=f"SL {name}", linewidth=1.4, **_SL_STYLE.get(name, {}))
        for name, value in e["curves"]["fl"].items():
            ax.axhline(value / 1e6, label=f"FL {name}", linewidth=1.6, **_FL_STYLE.get(name, {}))
        for name, per_fl in e["crossovers"].items():
            for fl_name, c in per_fl.items():
                if c["in_range"]:
                    v = e["sl"][name]
                    y = sl_epoch_bytes(c["samples"], b, v["per_batch"], v["per_round"]) / 1e6
                    ax.plot([c["samples"]], [y], "o", markersize=4.5, zorder=5, **_dot(name, fl_name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="major")
        shape = "×".join(map(str, e["activation_shape"][1:]))
        ax.set_title(f"{e['model']}, {e['cut']} cut ({shape})", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("samples per client", fontsize=9)
    for row in axes:
        row[0].set_ylabel("MB per client per epoch", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", color="0.3", linestyle="", markersize=4.5))
    handles.append(plt.Line2D([], [], marker="o", markerfacecolor="white", color="0.3", linestyle="", markersize=4.5))
    labels += ["crossover with FL none", "crossover with FL ms+ef"]
    fig.legend(handles, labels, loc="lower center", ncol=(len(labels) + 1) // 2, fontsize=8, frameon=False)
    fig.suptitle(
        f"Bytes per client per epoch (measured payloads, batch {b}): SL grows with the data, FL does not", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.98))
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def _dot(sl_name: str, fl_name: str) -> dict[str, Any]:
    """A crossover dot: the SL line's colour, filled against FL none, hollow against FL ms+ef."""
    color = _SL_STYLE.get(sl_name, {}).get("color", "black")
    if fl_name == "none":
        return {"color": color}
    return {"markerfacecolor": "white", "markeredgecolor": color}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m simulations.bench_sl_payoff``)."""
    parser = argparse.ArgumentParser(prog="fl-split bench sl-payoff", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"models (default: {' '.join(MODELS)})")
    parser.add_argument("--cuts", nargs="+", default=list(CUTS), choices=CUTS, help="cuts (default: all three)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per SL batch (default 32)")
    parser.add_argument("--min-samples", type=int, default=10, help="smallest samples per client (default 10)")
    parser.add_argument("--max-samples", type=int, default=100_000, help="largest samples per client (default 1e5)")
    parser.add_argument("--per-decade", type=int, default=10, help="grid points per decade (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, inputs and updates (default 0)")
    parser.add_argument(
        "--stem",
        action="append",
        default=[],
        metavar="MODEL=STEM",
        help="input stem of a model (default: resnet18=cifar, resnet34=imagenet, the registry's defaults)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", default="docs/results", help="directory for sl_payoff.{json,md,png}")
    args = parser.parse_args(argv)
    from fl_split.models import list_models

    unknown = sorted(set(args.models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 1 <= args.min_samples < args.max_samples or args.per_decade < 1:
        parser.error("need 1 <= --min-samples < --max-samples and --per-decade >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    stems = dict(STEMS)
    for item in args.stem:
        model, sep, stem = item.partition("=")
        if not sep or model not in args.models:
            parser.error(f"--stem takes MODEL=STEM for one of the models {args.models}, got {item!r}")
        stems[model] = stem
    grid = samples_grid(args.min_samples, args.max_samples, args.per_decade)
    try:
        result = run(args.models, args.cuts, args.batch_size, grid, args.seed, stems)
    except ValueError as err:  # e.g. an unknown stem
        parser.error(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (out / "sl_payoff.json").write_text(text + "\n", encoding="utf-8")
    (out / "sl_payoff.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "sl_payoff.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
