"""``fl-split bench sl-payoff``: measured payload sizes, the epoch curves and the crossovers they imply."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fl_split.codecs import codec_from_spec
from fl_split.models import create_split_model
from fl_split.sl.wire import encode_labels
from simulations import bench_sl_payoff as bench
from simulations.cli import BENCHMARKS

B = 4


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """One run on resnet18's shallow cut at batch 4: (result, output directory, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("payoff")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench.main(["--models", "resnet18", "--cuts", "shallow", "--batch-size", str(B), "--out", str(out)])
    assert rc == 0
    return json.loads((out / "sl_payoff.json").read_text()), out, buf.getvalue()


def _header(spec: str, ndim: int) -> int:
    """A codec's header for an ``ndim``-D tensor: the size of an empty tensor's payload (``ndim >= 1``);
    for a scalar, the ``none`` payload of one element less its 4 bytes of float32."""
    if ndim == 0:
        assert spec == "none"
        return len(codec_from_spec(spec).encode(torch.zeros(()))) - 4
    return len(codec_from_spec(spec).encode(torch.zeros((0,) * ndim)))


def test_outputs_written_and_printed(small: tuple[dict[str, Any], Path, str]) -> None:
    result, out, stdout = small
    assert json.loads(stdout) == result
    assert (out / "sl_payoff.png").stat().st_size > 10_000
    md = (out / "sl_payoff.md").read_text()
    assert "| resnet18 | shallow | 4×64×32×32 |" in md
    assert "sl-payoff" in BENCHMARKS
    (entry,) = result["results"]
    assert (entry["model"], entry["cut"], entry["activation_shape"]) == ("resnet18", "shallow", [B, 64, 32, 32])


def test_sl_payload_sizes(small: tuple[dict[str, Any], Path, str]) -> None:
    (entry,) = small[0]["results"]
    sl = entry["sl"]
    numel = math.prod(entry["activation_shape"])
    labels = len(encode_labels(torch.zeros(0, dtype=torch.int64), 10)) + B  # one byte per label
    assert entry["labels_bytes"] == labels
    assert sl["none"]["uplink_activation"] == 4 * numel + _header("none", 4)
    assert sl["none"]["uplink"] == sl["none"]["uplink_activation"] + labels
    assert sl["none"]["downlink"] == 4 * numel + _header("none", 4)  # the dense float32 gradient
    assert sl["dense-grad"]["downlink"] == sl["none"]["downlink"]
    assert sl["local"]["downlink"] == 0
    # mask: the float32 gradient at MS's kept positions only (1 %, a 1-D payload), far below the others
    assert sl["mask"]["downlink"] == 4 * (numel // 100) + _header("none", 1)
    assert sl["mask"]["downlink"] < sl["ms-grad"]["downlink"] < sl["dense-grad"]["downlink"]
    assert sl["quant"]["uplink_activation"] < sl["dense-grad"]["uplink_activation"] < 4 * numel / 8
    for v in sl.values():
        assert v["per_batch"] == v["uplink"] + v["downlink"]
        assert v["per_round"] == v["weights_down"] + v["weights_up"]


def test_weights_and_head(small: tuple[dict[str, Any], Path, str]) -> None:
    (entry,) = small[0]["results"]
    client, server = create_split_model("resnet18", "shallow", num_classes=10, in_channels=3, seed=0)
    channels = entry["activation_shape"][1]
    assert entry["head_params"] == 4 * channels * 10 + 10
    assert entry["client_params"] == sum(p.numel() for p in client.parameters())
    assert entry["server_params"] == sum(p.numel() for p in server.parameters())
    client_weights = sum(4 * t.numel() + _header("none", t.ndim) for t in client.state_dict().values())
    assert entry["sl"]["none"]["weights_down"] == client_weights
    head = (4 * channels * 10) * 4 + _header("none", 2) + 10 * 4 + _header("none", 1)
    assert entry["sl"]["local"]["weights_up"] == client_weights + head


def test_fl_round_bytes(small: tuple[dict[str, Any], Path, str]) -> None:
    (entry,) = small[0]["results"]
    client, server = create_split_model("resnet18", "shallow", num_classes=10, in_channels=3, seed=0)
    state = {**client.state_dict(), **{f"s{k}": v for k, v in server.state_dict().items()}}
    floats = [t for t in state.values() if t.is_floating_point()]  # FL's update: floating-point tensors
    fl = entry["fl"]
    assert fl["none"]["up"] == sum(4 * t.numel() + _header("none", t.ndim) for t in floats)
    assert fl["none"]["down"] == sum(4 * t.numel() + _header("none", t.ndim) for t in state.values())
    assert fl["ms+ef"]["down"] == fl["none"]["down"]
    assert fl["ms+ef"]["up"] < fl["none"]["up"] / 8  # 2-bit codes + 1 % values on the large tensors
    assert entry["curves"]["fl"] == {k: v["per_round"] for k, v in fl.items()}


def test_sl_curve_is_linear_in_batches(small: tuple[dict[str, Any], Path, str]) -> None:
    result = small[0]
    (entry,) = result["results"]
    samples = result["setting"]["samples"]
    assert samples[0] == 10 and samples[-1] == 100_000
    for name, v in entry["sl"].items():
        curve = dict(zip(samples, entry["curves"]["sl"][name], strict=True))
        assert curve[10] == math.ceil(10 / B) * v["per_batch"] + v["per_round"]  # a partial batch counts in full
        steps = [bench.sl_epoch_bytes(k * B, B, v["per_batch"], v["per_round"]) for k in range(1, 6)]
        assert {b - a for a, b in itertools.pairwise(steps)} == {v["per_batch"]}
        assert curve[100_000] == 25_000 * v["per_batch"] + v["per_round"]
        for n, value in curve.items():  # every grid point: whole batches times the measured per-batch bytes
            assert (value - v["per_round"]) == math.ceil(n / B) * v["per_batch"]


def test_crossovers_are_where_the_curves_cross(small: tuple[dict[str, Any], Path, str]) -> None:
    (entry,) = small[0]["results"]
    seen = 0
    for name, per_fl in entry["crossovers"].items():
        v = entry["sl"][name]

        def sl(n: int, v: dict[str, int] = v) -> int:
            return bench.sl_epoch_bytes(n, B, v["per_batch"], v["per_round"])

        for fl_name, c in per_fl.items():
            fl = entry["fl"][fl_name]["per_round"]
            n = c["samples"]
            if n is None:
                assert sl(1) >= fl
                continue
            seen += 1
            assert sl(n - 1) < fl <= sl(n)
            assert sl(n - B) < fl
            assert c["batches"] == math.ceil(n / B) and c["in_range"] == (10 <= n <= 100_000)
    assert seen == 12  # the shallow cut's client half is tiny: every variant crosses both FL lines


def test_crossover_formula() -> None:
    # 10 B per batch, 5 B of weights, FL 100 B, batch 4: 10 batches (105 B) reach FL, 9 (95 B) do not
    assert bench.crossover_samples(10, 5, 100, 4) == 37
    assert bench.sl_epoch_bytes(36, 4, 10, 5) == 95 and bench.sl_epoch_bytes(37, 4, 10, 5) == 105
    assert bench.crossover_samples(10, 90, 100, 4) is None  # one batch and the weights already cost 100
    with pytest.raises(ValueError):
        bench.crossover_samples(0, 5, 100, 4)


def test_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--models", "nosuch"])
    with pytest.raises(SystemExit):
        bench.main(["--batch-size", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--models", "resnet18", "--stem", "resnet34=cifar"])  # a model not being run


def test_stem_changes_the_cut_layer() -> None:
    default = bench.measure("resnet34", "shallow", 2, 0)
    cifar = bench.measure("resnet34", "shallow", 2, 0, stem="cifar")
    assert default["activation_shape"] == [2, 64, 8, 8]  # the ImageNet stem: 32x32 -> 8x8
    assert cifar["activation_shape"] == [2, 64, 32, 32]
    assert cifar["sl"]["none"]["uplink_activation"] - default["sl"]["none"]["uplink_activation"] == 4 * 2 * 64 * (
        32 * 32 - 8 * 8
    )
