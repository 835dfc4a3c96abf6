"""The ``fl-split`` command line."""

from __future__ import annotations

import json

import pytest

from fl_split.cli import main
from fl_split.codecs import list_codecs


def test_codecs_lists_every_codec_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codecs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_codecs()
    ms = next(r for r in rows if r["name"] == "ms")
    assert ms["parameters"] == ["keep", "bits", "signed", "nonfinite"]


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nosuch"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("what, option", [("sl", "--server-batching"), ("codecs", "--threads")])
def test_bench_help_is_the_benchmarks_own(what: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", what, "--help"])
    assert exc.value.code == 0
    assert option in capsys.readouterr().out
