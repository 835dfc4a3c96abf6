"""Split learning on a real local deployment: ``flower-superlink`` + two ``flower-supernode`` processes.

Select with ``pytest -k deploy``. Every process started here is stopped when the block exits,
also when a run fails (checked).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fl_split.metrics import read_metrics
from simulations.deploy import DeploymentError, LocalDeployment, run_config_arg

REPO = Path(__file__).resolve().parent.parent


def test_run_config_arg_is_toml() -> None:
    assert run_config_arg({"rounds": 1, "lr": 0.5, "out-dir": 'a "b"', "progress": False}) == (
        'rounds=1 lr=0.5 out-dir="a \\"b\\"" progress=false'
    )


def test_deploy_two_supernodes_train_and_every_process_is_stopped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started: list[subprocess.Popen[bytes]] = []
    with LocalDeployment(2, tmp_path / "deploy") as dep:
        started = [p for _, p in dep.procs]
        assert len(started) == 3 and all(p.poll() is None for p in started)
        with pytest.raises(DeploymentError, match="flwr run exited"):  # a run-config key the app does not have
            dep.run(REPO, {"no-such-key": 1}, timeout_s=120)
        dep.run(REPO, {"clients": 2, "rounds": 1, "max-steps-per-round": 2, "out-dir": str(out)}, timeout_s=300)
    assert all(p.poll() is not None for p in started)  # superlink and both supernodes are gone
    (row,) = read_metrics(out / "metrics.jsonl")
    # both SuperNodes trained their partition: 2 steps each, nobody failed, bytes measured
    assert (row["clients"], row["steps"], row["failed_clients"], row["dropped"]) == (2, 4, 0, 0)
    assert row["uplink_activation_bytes"] > 0 and row["downlink_gradient_bytes"] > 0


def test_a_deployment_that_fails_to_start_stops_what_it_started(tmp_path: Path) -> None:
    dep = LocalDeployment(1, tmp_path / "deploy", start_timeout_s=0.0)  # nothing can listen in 0 s
    with pytest.raises(DeploymentError, match="did not listen"):
        dep.__enter__()
    assert len(dep.procs) == 1 and dep.procs[0][1].poll() is not None  # the SuperLink it had started is gone
