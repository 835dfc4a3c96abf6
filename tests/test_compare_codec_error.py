"""Plot 2 of the comparison: compression error against measured bits per element on real feature maps."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from fl_split.codecs import codec_from_spec
from fl_split.compare import codec_error_curves, ordering_at, plot_codec_error
from fl_split.data.feature_maps import real_feature_maps


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return codec_error_curves(real_feature_maps(8))


def test_bits_are_the_payloads_and_errors_fall_with_bits(rows: list[dict]) -> None:
    x = real_feature_maps(8)
    for r in rows:
        assert r["bits_per_element"] == 8 * len(codec_from_spec(r["spec"]).encode(x)) / x.numel()
    for codec in ("topk", "quant", "randtopk"):
        pts = sorted((r["bits_per_element"], r["relative_error"]) for r in rows if r["codec"] == codec)
        assert all(b[1] < a[1] for a, b in itertools.pairwise(pts)), (codec, pts)
    assert next(r for r in rows if r["spec"] == "fp16")["relative_error"] < 1e-3


def test_at_about_three_bits_ms_beats_uniform_quant_beats_topk_beats_randomized_topk(rows: list[dict]) -> None:
    """The MS paper's Fig. 2 ordering, as measured on these post-ReLU maps (3.5 bits per element)."""
    order = ordering_at(rows, 3.5, ["randtopk", "topk", "quant", "ms"])
    assert [c for c, _ in order] == ["ms", "quant", "topk", "randtopk"], order
    errs = dict(order)
    assert errs["ms"] is not None and errs["quant"] is not None and errs["ms"] < 0.75 * errs["quant"]


def test_plot_and_bad_input(rows: list[dict], tmp_path: Path) -> None:
    assert plot_codec_error(rows, tmp_path / "err.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="nonzero tensor"):
        codec_error_curves(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="no parameter 'levels'"):
        codec_error_curves(torch.ones(4, 4), {"topk": ["topk:levels=3"]})
