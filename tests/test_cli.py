"""The ``fl-split`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from fl_split.codecs import list_codecs
from simulations.cli import main


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


@pytest.mark.parametrize(
    "what, option", [("sl", "--server-batching"), ("codecs", "--threads"), ("deploy", "--stream-steps")]
)
def test_bench_help_is_the_benchmarks_own(what: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", what, "--help"])
    assert exc.value.code == 0
    assert option in capsys.readouterr().out


def test_certs_writes_a_ca_and_a_server_certificate_naming_the_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["certs", str(tmp_path / "c"), "--host", "server.example.org", "--host", "10.1.2.3", "--days", "7"]) == 0
    )
    assert capsys.readouterr().out.split() == [str(tmp_path / "c" / n) for n in ("ca.crt", "server.pem", "server.key")]
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["server.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert cert.issuer == ca.subject and (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7
    cert.verify_directly_issued_by(ca)


@pytest.mark.parametrize("command", ["ddp", "gossip"])
def test_a_used_out_or_a_checkpoint_of_another_config_is_a_one_line_usage_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any rank or node starts: exit 2 and a message that says what to do, no traceback."""
    (tmp_path / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main([command, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "already holds a run" in err and "--resume" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main([command, "--out", str(tmp_path), "--resume"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "checkpoint.pt does not exist" in err


@pytest.mark.parametrize(
    ("command", "key", "what"),
    [
        ("ddp", "codec", "a gradient"),
        ("gossip", "codec", "a model difference"),
        ("fl", "uplink", "an update"),
        ("fl", "downlink", "a model change"),
        ("sl", "downlink", "an activation gradient"),
    ],
)
def test_unsigned_ms_on_signed_values_is_refused_before_anything_starts(
    command: str, key: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One check for every command (it used to fail mid-run in ddp and gossip, with a traceback)."""
    with pytest.raises(SystemExit) as info:
        main([command, "--set", f"{key}=ms:keep=0.01", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"config key '{key}'" in err and f"every negative entry of {what}" in err
    assert "signed=true" in err and "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["sl", "fl", "ddp", "gossip"])
def test_a_dataset_on_disk_without_data_dir_is_refused_before_anything_starts(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check for every command (ddp used to fail inside its spawned ranks, with a traceback)."""
    with pytest.raises(SystemExit) as info:
        main([command, "--set", "dataset=cifar10", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "dataset 'cifar10' is read from disk: set data_dir" in err
    assert "digits, mnist1d" in err and "Traceback" not in err and not (tmp_path / "run").exists()
