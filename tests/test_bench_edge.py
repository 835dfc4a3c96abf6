"""``fl-split bench edge``'s report from stored runs (``--report-only``, no namespaces needed): each shaped
run is predicted from the mean of its configuration's unshaped runs over the seeds, checked against
times worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_split.link import GOODPUT
from simulations.bench_edge import THREADS_FILE, default_threads, main
from simulations.deploy import LocalDeployment

#: a custom link of 8/8 Mbit/s without RTT: a round's 1e6 * GOODPUT bytes each way per client take
#: 1.0 s up and 1.0 s down, so FL's round grows by 2.0 s
LINK = "up=8,down=8"
PER_CLIENT = round(1e6 * GOODPUT)


def _write(folder: Path, walls: list[float], accuracy: list[float]) -> None:
    """A stored FL run (``fl_none_k1``) of 4 clients: its rounds' seconds and test accuracies."""
    run = folder / "fl_none_k1"
    run.mkdir(parents=True)
    rows, t = [], 0.0
    for i, (wall, acc) in enumerate(zip(walls, accuracy, strict=True), start=1):
        t += wall
        rows.append(
            {
                "round": i,
                "wall_s": t,
                "test_accuracy": acc,
                "clients": 4,
                "messages": 0,
                "uplink_bytes": 4 * PER_CLIENT,
                "downlink_bytes": 4 * PER_CLIENT,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _report(out: Path, seeds: str) -> dict[tuple[str, int], dict]:
    args = ["--report-only", "--profiles", LINK, "--seeds", seeds, "--sl-codecs", "", "--fl-codecs", "none"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "edge.json").read_text())
    return {(r["profile"], r["seed"]): r for r in report["runs"]}


def test_shaped_runs_are_predicted_from_the_mean_of_the_seeds_unshaped_runs(tmp_path: Path) -> None:
    _write(tmp_path / "unshaped", [10.0] * 3, [0.5, 0.8, 0.96])  # seed 0: 10 s per round
    _write(tmp_path / "seed1" / "unshaped", [14.0] * 3, [0.5, 0.9, 0.97])  # seed 1: 14 s per round
    _write(tmp_path / "up8_down8", [13.0] * 3, [0.6, 0.9, 0.96])  # reaches 0.95 in round 3: 39 s
    _write(tmp_path / "seed1" / "up8_down8", [12.0] * 2, [0.6, 0.95])  # in round 2: 24 s
    runs = _report(tmp_path, "0,1")
    shaped0, shaped1 = runs[(LINK, 0)], runs[(LINK, 1)]
    # seed 0, to round 3: (3 * (10 + 2) + 3 * (14 + 2)) / 2 = 42 s against 39 measured
    assert (shaped0["time_to_target_s"], shaped0["predicted_s"], shaped0["predicted_from_runs"]) == (39.0, 42.0, 2)
    assert shaped0["prediction_error"] == pytest.approx(42 / 39 - 1, abs=1e-4)
    # seed 1, to round 2: (2 * 12 + 2 * 16) / 2 = 28 s against 24
    assert (shaped1["time_to_target_s"], shaped1["predicted_s"]) == (24.0, 28.0)
    assert shaped1["link_s"] == pytest.approx(4.0, abs=0.01)  # 2 rounds of 2.0 s
    assert runs[("unshaped", 1)]["predicted_s"] is None and runs[("unshaped", 1)]["time_to_target_s"] == 42.0
    report = json.loads((tmp_path / "edge.json").read_text())
    assert report["seeds"] == [0, 1] and report["prediction_abs_error_max"] == pytest.approx(28 / 24 - 1, abs=1e-4)
    table = (tmp_path / "edge.md").read_text()
    assert "| seed |" in table and f"| {LINK} | fl | none | 1 | 1 | 24.0 |" in table
    assert (tmp_path / "edge.png").stat().st_size > 10_000

    assert {r["threads"] for r in runs.values()} == {None}  # runs of a version that did not record them

    # one seed: seed 0's own unshaped run only, from the same folders
    single = _report(tmp_path, "0")
    assert (single[(LINK, 0)]["predicted_s"], single[(LINK, 0)]["predicted_from_runs"]) == (36.0, 1)
    assert (LINK, 1) not in single


@pytest.mark.parametrize("seeds", ["x", "", "-1", "0,a"])
def test_bad_seeds_are_refused_in_one_line(seeds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--report-only", "--seeds", seeds, "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_each_run_reports_the_threads_it_ran_with(tmp_path: Path) -> None:
    _write(tmp_path / "unshaped", [10.0] * 3, [0.5, 0.8, 0.96])
    _write(tmp_path / "up8_down8", [13.0] * 3, [0.6, 0.9, 0.96])
    (tmp_path / "up8_down8" / "fl_none_k1" / THREADS_FILE).write_text('{"threads": 3}\n')
    runs = _report(tmp_path, "0")
    assert (runs[(LINK, 0)]["threads"], runs[("unshaped", 0)]["threads"]) == (3, None)


def test_the_default_threads_share_the_cores_among_the_nodes_and_the_server() -> None:
    assert [default_threads(4, cpus) for cpus in (1, 2, 5, 16)] == [1, 1, 1, 3]
    assert default_threads(1, 16) == 8


def test_the_deployment_hands_its_thread_count_to_every_process(tmp_path: Path) -> None:
    env = LocalDeployment(2, tmp_path, threads=1).env
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("1", "1")
    assert "FLWR_HOME" in env  # the same environment every process it starts gets
    with pytest.raises(ValueError, match="threads must be >= 1"):
        LocalDeployment(2, tmp_path, threads=0)


def test_bad_threads_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--report-only", "--threads", "-1", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


def test_a_profile_whose_runs_all_finished_starts_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import simulations.netns
    from simulations.bench_edge import parse_args, run_profile

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network was made for runs that are all kept")

    monkeypatch.setattr(simulations.netns, "ShapedNetwork", refuse)
    _write(tmp_path, [10.0] * 2, [0.5, 0.96])
    (tmp_path / "fl_none_k1" / "summary.json").write_text("{}")
    args = parse_args(["--sl-codecs", "", "--fl-codecs", "none", "--out", str(tmp_path)])
    failures: list[dict[str, str]] = []
    rows = run_profile(args.links[0], args, tmp_path, failures)
    assert [r["wall_s"] for r in rows["fl_none_k1"]] == [10.0, 20.0] and failures == []
    assert f"kept from an earlier run; it ran with torch default threads, not {args.threads}" in capsys.readouterr().err
    (tmp_path / "fl_none_k1" / "summary.json").unlink()  # one run left to do: the network is made
    with pytest.raises(AssertionError, match="a network was made"):
        run_profile(args.links[0], args, tmp_path, failures)


def test_the_plot_legend_names_only_the_schemes_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from simulations.bench_edge import plot

    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))

    def run(scheme: str, profile: str) -> dict:
        up = 0.0 if profile == "unshaped" else 5.0
        return {
            "profile": profile,
            "scheme": scheme,
            "codec": "ms",
            "k": 1,
            "wall_s": 60.0,
            "time_to_target_s": 50.0,
            "compute_s": 40.0,
            "link_s": 10.0,
            "predicted_s": 55.0,
            "up_mbit": up,
            "down_mbit": up,
            "final_accuracy": 0.96,
        }

    def legend(runs: list[dict]) -> list[str]:
        plot(runs, 0.95, 4, tmp_path / "edge.png")
        return [t.get_text() for t in saved.pop().legends[0].get_texts()]

    sl_only = legend([run("sl", "unshaped"), run("sl", "lte")])
    assert sl_only == ["SL: the rest (compute, Flower)", "SL: link (model)", "predicted from the unshaped run(s)"]
    both = legend([run("sl", "lte"), run("fl", "lte")])
    assert [t for t in both if t.startswith("FL")] == ["FL: the rest (compute, Flower)", "FL: link (model)"]
    assert len(both) == 5
