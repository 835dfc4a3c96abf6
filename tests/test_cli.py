"""The ``fl-split`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from fl_split.codecs import list_codecs
from simulations.cli import main


def test_codecs_lists_every_codec_with_its_parameters_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codecs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_codecs()
    ms = next(r for r in rows if r["name"] == "ms")
    assert ms["parameters"] == {"keep": 0.01, "bits": 2, "signed": False, "nonfinite": "raise"}
    assert ms["summary"].startswith("top-k values plus a bits-wide per-element mask")  # no ``markup``
    assert main(["codecs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ms_line = lines.index(next(line for line in lines if line.startswith("ms ")))
    assert lines[ms_line + 1].split() == ["keep=0.01", "bits=2", "signed=False", "nonfinite='raise'"]
    assert "``" not in "\n".join(lines) and ":class:" not in "\n".join(lines)
    width = max(len(r["name"]) for r in rows)  # every summary starts in one column, after the longest name
    assert all(line[width : width + 2] == "  " and line[width + 2] != " " for line in lines[: 2 * len(rows) : 2])


def test_unknown_command_is_a_usage_error_with_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bnch"])
    assert exc.value.code == 2
    assert "unknown command 'bnch' (did you mean 'bench'?); commands: sl, fl, ddp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "fll"])
    assert exc.value.code == 2 and "unknown benchmark 'fll' (did you mean 'fl'?)" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"fl-split {version('fl-split')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([c, "--help"] for c in ("sl", "fl", "ddp", "gossip", "compare", "codecs", "bench", "certs")),
        *(["bench", b, "--help"] for b in ("codecs", "sl", "sl-accuracy", "deploy", "fl", "ddp", "gossip")),
    ],
)
def test_every_command_has_help_under_its_own_name(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr().out
    name = " ".join(a for a in argv if a != "--help")
    assert exc.value.code == 0 and out.startswith(f"usage: fl-split {name}".rstrip()), out[:200]


def test_bench_alone_lists_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    out = capsys.readouterr().out
    assert "usage: fl-split bench NAME" in out and "sl-accuracy  SL accuracy at equal measured budgets" in out


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


def _resolved(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    import yaml

    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_resolved_config_and_string_keys_take_the_text_as_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--out 42`` is the folder "42" and ``stream.host=on`` the host "on" (YAML made them an int and a
    bool); ``null`` still clears a nullable key; the run-config spelling ``local-epochs`` is accepted."""
    from fl_split.sl.config import SLConfig

    cfg = _resolved(capsys, "sl", "--out", "42", "--set", "stream.host=on", "local-epochs=2", "data_dir=null")
    assert (cfg["out_dir"], cfg["stream"]["host"], cfg["local_epochs"], cfg["data_dir"]) == ("42", "on", 2, None)
    assert SLConfig.from_dict(cfg) == SLConfig.load("sl", ["out_dir=42", "stream.host=on", "local_epochs=2"])
    assert _resolved(capsys, "sl", "--set", "optimizer.lr=0.5", "rounds=3")["optimizer"]["lr"] == 0.5
    assert not Path("42").exists()  # printing runs nothing
    for command in ("fl", "ddp", "gossip"):
        assert _resolved(capsys, command, "--set", "seed=7")["seed"] == 7


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sl", "--set", "lr=0.1"], "unknown config key 'lr' (did you mean 'optimizer.lr'?) in --set"),
        (["fl", "--set", "rouds=3"], "unknown config key 'rouds' (did you mean 'rounds'?)"),
        (["sl", "--set", "uplink=topkk"], "unknown codec 'topkk' in spec 'topkk' (did you mean 'topk' or 'randtopk'?)"),
        (["gossip", "--set", "codec=qsdg"], "(did you mean 'qsgd'?)"),
        (["sl", "--set", "model=resnet19"], "got 'resnet19' (did you mean 'resnet18' or 'resnet34'?)"),
        (["ddp", "--set", "dataset=digit"], "got 'digit' (did you mean 'digits'?)"),
        (["sl", "--config", "mnist1"], "no sl config named 'mnist1' (did you mean 'mnist1d'?)"),
        (["sl", "--config", "fl"], "no sl config named 'fl'; sl configs in"),  # another command's config
    ],
)
def test_a_misspelt_name_gets_the_closest_valid_ones(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "Traceback" not in err
    assert "batch_size, batches_per_message" not in err  # no wall of every key; --list-keys has them


def test_list_configs_names_only_the_commands_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sl", "--list-configs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[0] == "sl" and "paper_cifar10" in names and "fl" not in names and "gossip" not in names


def test_a_closed_pipe_ends_the_listing_quietly() -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "codecs", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # what `| head -1` does, here before the listing is written (it takes an import)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and b"Traceback" not in err and b"BrokenPipe" not in err, err
