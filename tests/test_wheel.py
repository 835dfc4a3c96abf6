"""The package as a user installs it: a wheel built from this tree, installed into a fresh venv outside it.

The fresh venv gets the wheel's own files only (``pip install --no-deps``); its dependencies (torch,
flwr, ...) come from the test's environment through a ``.pth`` line, since downloading them again
would take gigabytes. Nothing of the source tree is importable there: the commands run from an
empty folder, and the test's editable install of ``fl_split`` is not seen (its finder lives in a
``.pth`` file of the test's site-packages, which a ``.pth`` line does not process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(venv, an empty working folder)``: the wheel built from this tree, installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels, env_dir, work = tmp / "wheels", tmp / "venv", tmp / "work"
    work.mkdir()
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
        cwd=tmp,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("fl_split-*.whl")
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp).stdout.strip())
    (site / "_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], tmp)
    assert installed.returncode == 0, installed.stderr
    return env_dir, work


def test_the_installed_package_is_the_wheels_not_the_source_tree(installed: tuple[Path, Path]) -> None:
    env_dir, work = installed
    where = _run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import fl_split, fl_split.config as c; print(fl_split.__file__); print(c.CONF_DIR)",
        ],
        work,
    )
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(env_dir) and not Path(module).is_relative_to(ROOT), where
    assert Path(conf) == env_dir / "share" / "fl-split" / "conf" and (Path(conf) / "sl" / "mnist1d.yaml").is_file()


def test_the_installed_cli_lists_codecs_and_trains_one_round_from_its_shipped_config(
    installed: tuple[Path, Path],
) -> None:
    env_dir, work = installed
    cli = str(env_dir / "bin" / "fl-split")
    codecs = _run([cli, "codecs", "--json"], work)
    assert codecs.returncode == 0 and {"ms", "topk", "none"} <= {c["name"] for c in json.loads(codecs.stdout)}
    out = work / "run"
    sl = _run([cli, "sl", "--set", "engine=inprocess", "rounds=1", "max_steps_per_round=5", "--out", str(out)], work)
    assert sl.returncode == 0, sl.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert summary["status"] == "completed" and len(rows) == 1 and json.loads(rows[0])["steps"] > 0
    named = _run([cli, "sl", "--config", "mnist1d", "--list-keys"], work)  # a config of conf/sl/, by name
    assert named.returncode == 0, named.stderr
