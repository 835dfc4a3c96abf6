"""Emulated edge links (root only): a shaped veth link carries its set rate, a split-learning round runs
over a shaped stream between namespaces, and nothing made is left behind, also when a run fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fl_split.link import GOODPUT, LinkProfile
from fl_split.metrics import read_metrics
from simulations.netns import NetnsError, ShapedNetwork, check_can_create, measure_mbit, message_seconds, remove_stale

REPO = Path(__file__).resolve().parent.parent

try:
    check_can_create()
    _WHY_NOT = ""
except NetnsError as exc:
    _WHY_NOT = str(exc)
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=f"cannot create network namespaces here: {_WHY_NOT}")


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


@pytest.fixture
def ns_before() -> set[str]:
    """The namespaces that exist before a test, once those of dead processes are gone: a network's entry
    removes them (:func:`remove_stale`), so counting them would blame the test for an earlier run's leftovers
    (a CI run failed so: a killed run's three namespaces were there before the first test and not after)."""
    remove_stale()
    return _namespaces()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_namespaces_of_a_dead_run_are_removed_and_a_live_ones_kept() -> None:
    dead, live = f"fls{_dead_pid()}-n7", f"fls{os.getpid()}-n97"
    try:
        for name in (dead, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        removed = remove_stale()
        names = _namespaces()
        assert dead in removed and dead not in names
        assert live not in removed and live in names
    finally:
        for name in (dead, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def test_a_shaped_link_carries_its_rate_each_way_and_is_removed(ns_before: set[str]) -> None:
    links_before = _host_links()
    with ShapedNetwork([LinkProfile("t", up_mbit=4.0, down_mbit=12.0)]) as net:
        assert _host_links() == links_before  # every interface lives inside the namespaces made
        up = measure_mbit(net, 0, "up", 1_500_000)
        down = measure_mbit(net, 0, "down", 3_000_000)
    assert 0.8 * 4.0 <= up <= 1.05 * 4.0 and 0.8 * 12.0 <= down <= 1.05 * 12.0, (up, down)
    assert abs(up / 4.0 - GOODPUT) <= 0.03 and abs(down / 12.0 - GOODPUT) <= 0.03  # the model's goodput share
    assert net.leftovers() == [] and _namespaces() == ns_before and _host_links() == links_before


def test_the_network_is_removed_when_the_body_raises(ns_before: set[str]) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ShapedNetwork([LinkProfile("t", 8.0, 8.0)] * 2) as net:
            assert len(net.leftovers()) == 3
            raise RuntimeError("boom")
    assert net.leftovers() == [] and _namespaces() == ns_before


def test_a_split_learning_round_runs_over_a_shaped_stream(tmp_path: Path, ns_before: set[str]) -> None:
    """Two SuperNodes, each in its own namespace behind a 4/16 Mbit/s link: the round's stream moves its
    bytes no faster than the links allow (the shaping applies to the stream, not only to Flower)."""
    from simulations.deploy import LocalDeployment

    out = tmp_path / "sl"
    link = LinkProfile("t", up_mbit=4.0, down_mbit=16.0)
    with ShapedNetwork([link] * 2) as net, LocalDeployment(2, tmp_path / "deploy", network=net) as dep:
        procs = [p for _, p in dep.procs]
        values = {
            "clients": 2,
            "rounds": 1,
            "max-steps-per-round": 3,
            "transport": "stream",
            "stream.host": net.server_ip,
            "stream.bind": "0.0.0.0",
            "stream.insecure": True,
            "out-dir": str(out),
        }
        dep.run(REPO, values, timeout_s=300)
        superlink = " ".join(str(a) for a in procs[0].args)
        assert superlink.startswith(f"ip netns exec {net.server_netns} ")
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["steps"] == 6 and row["stream_broken"] == 0
    # a floor for the stream's time (the server's first frame to its last): each client's gradients at the
    # shaped downlink rate, less its last one (the server's clock stops when that frame is handed to the
    # socket, whose buffers can hold it); without shaping the stream takes a fraction of a second
    per_client = row["downlink_gradient_bytes"] / 2
    floor = link.transfer_s(0, per_client * 2 / 3)  # 3 gradients per client, 2 of them timed
    assert row["downlink_gradient_bytes"] > 6 * 1_000_000 and floor > 1.5
    assert row["stream_s"] >= 0.9 * floor, (row["stream_s"], floor)
    assert all(p.poll() is not None for p in procs) and _namespaces() == ns_before


def _tbf_drops(netns: str, dev: str) -> int:
    shown = subprocess.run(
        ["ip", "netns", "exec", netns, "tc", "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True
    )
    return int(shown.stdout.split("dropped ")[1].split(",")[0])


def test_a_message_after_an_idle_gap_takes_its_rate_s_time_each_way(ns_before: set[str]) -> None:
    """Split learning sends a message, then waits: a message after an idle gap must not travel ahead of the
    rate. With the 64 KiB burst of before 12-08 these messages took 0.37 (up) and 0.79 (down) of it."""
    with ShapedNetwork([LinkProfile("t", up_mbit=4.0, down_mbit=12.0)]) as net:
        up = message_seconds(net, 0, "up", 200_000, count=3, gap_s=0.5)
        down = message_seconds(net, 0, "down", 300_000, count=3, gap_s=0.5)
        drops = _tbf_drops(net.nodes[0].netns, "n0") + _tbf_drops(net.server_netns, "s0")
        with pytest.raises(ValueError, match="nbytes and count"):
            message_seconds(net, 0, "up", 0)
    model_up, model_down = 200_000 * 8 / (4e6 * GOODPUT), 300_000 * 8 / (12e6 * GOODPUT)  # 0.418, 0.209 s
    assert min(up) >= 0.92 * model_up and min(down) >= 0.92 * model_down, (up, down)  # no head start
    assert sorted(up)[1] <= 1.2 * model_up and sorted(down)[1] <= 1.2 * model_down, (up, down)  # medians
    assert drops == 0  # TCP saw a rate, not losses
    assert net.leftovers() == [] and _namespaces() == ns_before
