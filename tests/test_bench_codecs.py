"""The codec benchmark runs end to end and reports measured numbers (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations import bench_codecs


def test_bench_runs_small_and_reports_measured_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_codecs.main(["--codecs", "ms", "topk", "none", "--repeats", "1", "--batch", "16"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tensor"]["shape"] == [16, 64, 16, 16]
    numel = 16 * 64 * 16 * 16
    ms = result["codecs"]["ms"]
    assert ms["bytes"] == 30 + 4 * (numel // 100) + 2 * numel // 8  # header + values + 2-bit codes
    assert ms["bits_per_element"] == pytest.approx(2.32, abs=0.01)
    assert result["codecs"]["none"]["bytes"] == 24 + 4 * numel
    assert result["ms_exact"]["same_kept_multiset"] and result["ms_exact"]["all_above_kth_exact"]
    assert set(result["bitpack"]) == {str(w) for w in range(1, 9)}
    per_call = result["per_call"]
    assert per_call["shape"] == [16, 64, 16, 16]  # the first 32 maps of a 16-map tensor: all of it
    assert set(per_call["codecs"]) == {"ms", "topk", "none"}
    assert per_call["codecs"]["ms"]["encode_ms"] > 0 and per_call["clone_ms"] > 0
    target = result["ms_target"]
    assert target["target"] == 0.25 and target["met"] == (target["encode_decode_over_topk"] <= 0.25)
    for key in ("encode_decode_over_topk", "encode_decode_over_clone", "encode_gbps"):
        assert ms[key] > 0


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("codecs:\n  ms: {kep: 0.1}\n")
    with pytest.raises(ValueError, match="no parameter"):
        bench_codecs.load_config(bad)
    bad.write_text("codecs:\n  nosuch: {}\n")
    with pytest.raises(ValueError, match="unknown codec 'nosuch'"):
        bench_codecs.load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        bench_codecs.load_config(tmp_path / "missing.yaml")
    assert bench_codecs.load_config(bench_codecs.DEFAULT_CONFIG)["ms"] == {"keep": 0.01, "bits": 2}


def test_unknown_codec_on_the_command_line_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_codecs.main(["--codecs", "nosuch"])
    assert exc.value.code == 2
    assert "unknown codec" in capsys.readouterr().err


def test_threads_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_codecs.main(["--threads", "0"])
    assert exc.value.code == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
