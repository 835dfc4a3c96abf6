"""Client devices and the GPU check: what runs without a GPU, and the CUDA paths where one exists."""

from __future__ import annotations

import json
import time

import pytest
import torch
from sl_helpers import max_diff, small_config

from fl_split.config import ConfigError
from fl_split.errors import TrainingFailed
from fl_split.fl.config import load_fl_config
from fl_split.sl.transport import InProcessTransport
from fl_split.training import client_device, synchronize
from strategies.split_learning import SplitLearningStrategy

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")


def _run(config: dict) -> SplitLearningStrategy:
    strategy = SplitLearningStrategy(config, keep_history=True)
    strategy.start(InProcessTransport(int(config["clients"])))
    return strategy


def test_auto_is_cuda_only_where_this_process_sees_a_gpu() -> None:
    assert client_device("auto") == torch.device("cuda" if CUDA else "cpu")
    assert client_device("cpu") == torch.device("cpu")


def test_stream_is_refused_on_a_ray_cluster() -> None:
    with pytest.raises(ConfigError, match=r"use transport=messages with flower\.ray_address"):
        small_config(engine="flower", transport="stream", flower={"ray_address": "10.0.0.1:6379"})


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_a_cuda_client_without_a_gpu_fails_its_round_with_advice() -> None:
    with pytest.raises(ValueError, match=r"sees 0 CUDA device\(s\); in a simulation set flower.num_gpus > 0"):
        client_device("cuda")
    with pytest.raises(TrainingFailed, match="sees 0 CUDA device"):
        _run(small_config(client_device="cuda", max_steps_per_round=2))


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu"])
def test_a_bad_client_device_is_refused_up_front(value: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        small_config(client_device=value)
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        load_fl_config("fl", [f"device={value}"])


def test_synchronize_waits_on_cuda_devices_only(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    synchronize(torch.device("cpu"))
    synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]


def test_codec_timers_wait_for_the_device_right_before_reading_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client: a wait before each activation encode, and before and after each gradient decode; server: one
    per step before its gradient encodes; each wait followed at once by a clock read. 2 clients, 3 steps
    each, 1 round: 18 and 6 waits (12 without the wait before a decode). A wait moved just inside a timer
    also passes here: only a GPU shows the difference (``fl-split gpu-check``)."""
    import types

    import fl_split.sl.client as client
    import fl_split.sl.server as server

    events: dict[str, list[str]] = {"client": [], "server": []}
    for name, module in (("client", client), ("server", server)):
        log = events[name]
        monkeypatch.setattr(module, "synchronize", lambda d, log=log: log.append(f"wait:{d.type}"))
        clock = types.SimpleNamespace(perf_counter=lambda log=log: log.append("clock") or time.perf_counter())
        monkeypatch.setattr(module, "time", clock)
    _run(small_config(clients=2, mode="sequential", uplink="topk:keep=0.1", max_steps_per_round=3))
    for name, waits in (("client", 18), ("server", 6)):
        log = events[name]
        assert log.count("wait:cpu") == waits, name
        assert all(log[i + 1] == "clock" for i, e in enumerate(log) if e.startswith("wait")), name


@pytest.mark.skipif(CUDA, reason="checks the report of a machine without CUDA")
def test_gpu_check_without_cuda_reports_so_runs_nothing_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.gpu_check import CHECKS, main

    assert main([]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cuda"] is False and report["device"] is None and report["failed"] == []
    assert set(report["checks"]) == set(CHECKS) and "ddp_nccl" in CHECKS
    assert all(c["status"] == "skipped" and c["reason"] for c in report["checks"].values())


@needs_cuda
def test_cuda_clients_and_server_equal_the_cpu_run() -> None:
    """Codec ``none``, one client, 6 steps: both halves on CUDA equal the CPU run (float sums may differ
    in order: 1e-4)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on CUDA
    cfg = small_config(uplink="none", max_steps_per_round=6, client_device="cpu")
    cpu = _run(cfg)
    gpu = _run(cfg.replace(client_device="cuda", server_device="cuda"))
    assert max_diff(cpu.client_half, gpu.client_half) < 1e-4
    assert max_diff(cpu.server_half, gpu.server_half.cpu()) < 1e-4


@needs_cuda
def test_gpu_check_codecs_pass_on_cuda() -> None:
    from simulations.gpu_check import run_checks

    report = run_checks(["codecs"])
    assert report["checks"]["codecs"]["status"] == "passed", report


def _gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Pretend this machine has ``n`` CUDA devices (placement only asks how many)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize(
    ("gpus", "device", "backend", "world", "local_rank", "want"),
    [
        (0, "auto", "auto", 2, 1, ("cpu", "gloo")),
        (2, "auto", "auto", 2, 1, ("cuda:1", "nccl")),  # one process per GPU: rank 1 on GPU 1
        (1, "auto", "auto", 2, 0, ("cpu", "gloo")),  # too few GPUs for one each: the CPU, not two ranks on one GPU
        (2, "auto", "gloo", 2, 0, ("cpu", "gloo")),
        (2, "cpu", "auto", 2, 0, ("cpu", "gloo")),
        (4, "cuda", "auto", 4, 3, ("cuda:3", "nccl")),
        (2, "cuda", "gloo", 1, 0, ("cuda:0", "gloo")),
    ],
)
def test_ranks_take_one_gpu_each_and_nccl_where_every_rank_has_one(
    monkeypatch: pytest.MonkeyPatch, gpus: int, device: str, backend: str, world: int, local_rank: int, want: tuple
) -> None:
    from fl_split.launch import placement

    _gpus(monkeypatch, gpus)
    here, chosen = placement(device, backend, world, local_rank)
    assert (str(here), chosen) == want


@pytest.mark.parametrize(
    ("gpus", "device", "backend", "world", "message"),
    [
        (0, "cuda", "auto", 1, r"1 rank\(s\) on this machine, 0 CUDA device\(s\) visible"),
        (2, "cuda", "auto", 3, "start fewer ranks .* or set device=cpu"),
        (0, "auto", "nccl", 2, r"backend=nccl moves CUDA tensors only \(device=auto chose the CPU: 0 GPU"),
        (1, "auto", "nccl", 2, r"chose the CPU: 1 GPU\(s\) for 2 rank\(s\) on this machine"),
    ],
)
def test_a_placement_this_machine_cannot_give_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, gpus: int, device: str, backend: str, world: int, message: str
) -> None:
    from fl_split.launch import placement

    _gpus(monkeypatch, gpus)
    with pytest.raises(ValueError, match=message):
        placement(device, backend, world)


def test_ddp_refuses_nccl_on_the_cpu_and_a_cuda_it_lacks_before_any_rank_starts(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fl_split.ddp.config import load_ddp_config
    from simulations.cli import main

    with pytest.raises(ConfigError, match="backend=nccl moves CUDA tensors only"):
        load_ddp_config(overrides=["device=cpu", "backend=nccl"])
    with pytest.raises(ConfigError, match="backend"):
        load_ddp_config(overrides=["backend=mpi"])
    if CUDA:
        return
    with pytest.raises(SystemExit) as exit_:
        main(["ddp", "--set", "device=cuda", "steps=1", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "device=cuda needs one GPU per rank" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, "cuda:1"),  # spawned: rank 1 of 2, both here
        ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, "cuda:1"),  # inherited without torchrun's RANK: ignored
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, "cuda:1"),  # torchrun, 1 machine
        (
            {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
            "cpu",
        ),  # 2 machines: agree on CPU
    ],
)
def test_the_local_rank_comes_from_torchrun_only_and_auto_stays_on_the_cpu_across_machines(
    monkeypatch: pytest.MonkeyPatch, env: dict, want: str
) -> None:
    from fl_split.ddp.config import load_ddp_config
    from fl_split.launch import rank_placement

    _gpus(monkeypatch, 4)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    device, backend = rank_placement(load_ddp_config(), 2, 1)
    assert (str(device), backend) == (want, "nccl" if want != "cpu" else "gloo")
    if want == "cpu":  # asked for explicitly, the GPUs are used across machines too
        assert str(rank_placement(load_ddp_config(overrides=["device=cuda"]), 4, 3)[0]) == "cuda:1"
