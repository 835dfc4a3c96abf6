"""One bad client never stops a split-learning run: every reply field is checked, in process.

Each case alters one reply of client 1 (of 3, unequal partitions) in round 1 and checks that

- client 1 leaves round 1 with the expected reason, counted in the row and in ``summary.json``;
- nothing of it is merged: the client half after round 1 is exactly the samples-weighted average of
  the *other* clients' done replies (taken off the wire, an independent reference);
- round 2 runs with all three clients and the run completes.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sl_helpers import oracle_config

from fl_split.sl.loop import TrainingFailed
from fl_split.sl.transport import InProcessTransport, Reply
from fl_split.sl.wire import NONE_CODEC, decode_weights
from fl_split.validate import REASONS, BadReply, count, seconds
from strategies.split_learning import SplitLearningStrategy

NAN = struct.pack("<f", float("nan"))


def _nan_payload(payload: bytes) -> bytes:
    """A ``none``-codec payload whose last float32 is NaN (a codec would refuse to encode one)."""
    return payload[:-4] + NAN


Tamper = Callable[[dict[str, Any]], None]


def _t_client_string(f: dict[str, Any]) -> None:
    f["t_client"] = "fast"


def _samples_inf(f: dict[str, Any]) -> None:
    f["samples"] = float("inf")


def _samples_inflated(f: dict[str, Any]) -> None:
    f["samples"] = f["samples"] * 1000  # a client claiming a larger FedAvg weight


def _nan_activations(f: dict[str, Any]) -> None:
    f["acts"] = [_nan_payload(f["acts"][0])]


def _nan_weights(f: dict[str, Any]) -> None:
    f["weights"] = [_nan_payload(f["weights"][0]), *f["weights"][1:]]


def _nan_momentum(f: dict[str, Any]) -> None:
    f["momentum"] = [_nan_payload(f["momentum"][0]), *f["momentum"][1:]]


def _too_many_batches(f: dict[str, Any]) -> None:
    f["acts"], f["labels"] = f["acts"] * 2, f["labels"] * 2  # batches_per_message is 1


def _raw_labels(f: dict[str, Any]) -> None:
    f["labels"] = [b"\x01" * 64]


def _done_not_bool(f: dict[str, Any]) -> None:
    f["done"] = "yes"


def _negative_time(f: dict[str, Any]) -> None:
    f["t_codec"] = -1.0


def _missing_weights(f: dict[str, Any]) -> None:
    del f["weights"]


def _huge_weights(f: dict[str, Any]) -> None:
    """Finite, so the NaN check passes: merged, it would make every later round diverge."""
    f["weights"] = [NONE_CODEC.encode(NONE_CODEC.decode(p) + 1e15) for p in f["weights"]]


#: name → (which reply of client 1 in round 1 is altered, how, the reason expected, mode)
CASES: dict[str, tuple[str, Tamper, str, str]] = {
    "t_client is a string": ("step", _t_client_string, "malformed", "splitfed2"),
    "t_codec is negative": ("step", _negative_time, "out_of_range", "splitfed2"),
    "samples is inf": ("done", _samples_inf, "non_finite", "splitfed2"),
    "samples inflated": ("done", _samples_inflated, "out_of_range", "splitfed2"),
    "NaN activations": ("step", _nan_activations, "non_finite", "splitfed2"),
    "NaN client weights": ("done", _nan_weights, "non_finite", "splitfed2"),
    "NaN momentum": ("done", _nan_momentum, "non_finite", "sequential"),
    "two batches in a k=1 message": ("step", _too_many_batches, "out_of_range", "splitfed2"),
    "raw-bytes labels": ("step", _raw_labels, "malformed", "splitfed2"),
    "done is not a bool": ("step", _done_not_bool, "malformed", "splitfed2"),
    "weights missing": ("done", _missing_weights, "malformed", "splitfed2"),
    "huge client weights": ("done", _huge_weights, "out_of_range", "splitfed2"),
}


class _TamperTransport(InProcessTransport):
    """Alters client 1's second step reply (``step``) or its done reply (``done``) of round 1; records
    every done reply as it arrived (after the alteration)."""

    def __init__(self, n: int, which: str, tamper: Tamper) -> None:
        super().__init__(n)
        self.which, self.tamper = which, tamper
        self.steps_seen = 0
        self.done: dict[int, list[tuple[int, dict[str, Any]]]] = {}

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        replies = super().receive(timeout_s)
        for r in replies:
            if r.fields is None:
                continue
            is_done = r.fields.get("done") is True
            if r.node_id == 1 and r.round == 1:
                if not is_done:
                    self.steps_seen += 1
                second_step = not is_done and self.steps_seen == 2
                if (self.which == "done" and is_done) or (self.which == "step" and second_step):
                    self.tamper(r.fields)
            if r.fields.get("done") is True:
                self.done.setdefault(r.round, []).append((r.node_id, dict(r.fields)))
        return replies


def _average(strategy: SplitLearningStrategy, done: list[tuple[int, dict[str, Any]]]) -> list[torch.Tensor]:
    like = list(strategy.client_half.state_dict().values())
    states = [decode_weights(f["weights"], like, "w") for _, f in done]
    weights = [float(f["samples"]) for _, f in done]
    total = sum(weights)
    return [sum(s[i].double() * (w / total) for s, w in zip(states, weights, strict=True)) for i in range(len(like))]


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_reply_drops_that_client_for_the_round_and_is_never_merged(case: str) -> None:
    which, tamper, reason, mode = CASES[case]
    cfg = oracle_config(mode, max_steps_per_round=3)
    transport = _TamperTransport(3, which, tamper)
    strategy = SplitLearningStrategy(cfg, keep_history=True)
    strategy.start(transport)
    r1, r2 = strategy.rows
    assert (r1["failed_clients"], r1["failure_reasons"]) == (1, {reason: 1}), r1["failure_reasons"]
    assert (r2["failed_clients"], r2["failure_reasons"], r2["steps"]) == (0, {}, 9)
    assert strategy.failures[0]["client"] == 1 and strategy.failures[0]["reason"] == reason
    # never merged: round 1's client half is what the two healthy clients returned, and nothing else
    healthy = [(n, f) for n, f in transport.done[1] if n != 1]
    assert [n for n, _ in healthy] == ([0, 2] if mode == "splitfed2" else [n for n, _ in healthy])
    after_r1 = strategy.client_history[0]
    if mode == "splitfed2":
        ref = _average(strategy, healthy)
        assert max(float((a.double() - b).abs().max()) for a, b in zip(after_r1, ref, strict=True)) < 1e-6
    else:  # sequential: the half ends as the last healthy client returned it
        last = healthy[-1][1]
        ref = decode_weights(last["weights"], after_r1, "w")
        assert all(torch.equal(a, b) for a, b in zip(after_r1, ref, strict=True))
    assert all(bool(torch.isfinite(t).all()) for t in after_r1)


def test_reasons_and_the_failure_log_reach_summary_json(tmp_path: Path) -> None:
    cfg = oracle_config("splitfed2", max_steps_per_round=2, out_dir=str(tmp_path))
    transport = _TamperTransport(3, "done", _nan_weights)
    from simulations import sl

    strategy, writer = sl._build(cfg)
    strategy.start(transport)
    summary = sl._finish(cfg, writer, echo=False, strategy=strategy)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "completed" and summary["failure_reasons"] == {"non_finite": 1}
    assert on_disk["failures"] == [
        {"round": 1, "client": 1, "reason": "non_finite", "error": on_disk["failures"][0]["error"]}
    ]
    assert "NaN/Inf" in on_disk["failures"][0]["error"] and on_disk["failed_clients"] == 1


def test_a_round_with_no_valid_client_fails_the_run_with_status_and_reasons(tmp_path: Path) -> None:
    class _AllNan(InProcessTransport):
        def receive(self, timeout_s: float | None = None) -> list[Reply]:
            replies = super().receive(timeout_s)
            for r in replies:
                if r.fields and r.fields.get("done") is True:
                    _nan_weights(r.fields)
            return replies

    cfg = oracle_config("splitfed2", max_steps_per_round=2, out_dir=str(tmp_path))
    from simulations import sl

    strategy, writer = sl._build(cfg)
    with pytest.raises(TrainingFailed, match=r"round 1: no client finished \(3 failed: 3 non_finite\)"):
        try:
            strategy.start(_AllNan(3))
        except TrainingFailed as exc:
            sl._finish(cfg, writer, echo=False, error=exc, strategy=strategy)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure_reasons"] == {"non_finite": 3}
    assert "lower optimizer.lr" in summary["error"]


def test_the_cli_exits_non_zero_when_no_round_has_a_valid_client(tmp_path: Path) -> None:
    from simulations.cli import main

    out = tmp_path / "run"
    # the client half's activations blow past the codec's bound in round 1: every client raises
    rc = main(["sl", "--set", "engine=inprocess", "progress=false", "optimizer.lr=1000", "uplink=none",
               "max_steps_per_round=5", "rounds=2", "clients=2", f"out_dir={out}"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 1 and summary["status"] == "failed" and summary["failure_reasons"] == {"raised": 2}


def test_a_round_deadline_ends_the_round_and_counts_who_was_cut_off() -> None:
    class _Hangs(InProcessTransport):
        """Client 2 answers ``sl_begin`` and then never again: receive waits as a real transport would."""

        def __init__(self, n: int) -> None:
            super().__init__(n)
            self.waits: list[float | None] = []
            self.answered: set[int] = set()

        def receive(self, timeout_s: float | None = None) -> list[Reply]:
            self.waits.append(timeout_s)
            replies = [r for r in self._replies if r.node_id != 2 or 2 not in self.answered]
            self.answered |= {r.node_id for r in replies}
            self._replies.clear()
            if not replies:
                time.sleep(timeout_s or 0.0)
                raise TimeoutError(f"no reply within {timeout_s:.2f} s")
            return replies

    deadline = 3.0  # the two live clients take 3 steps each well within it, also on a loaded machine
    cfg = oracle_config("splitfed2", max_steps_per_round=3, round_timeout_s=deadline, rounds=2)
    strategy = SplitLearningStrategy(cfg)
    transport = _Hangs(3)
    t0 = time.monotonic()
    strategy.start(transport)
    r1, r2 = strategy.rows
    assert (r1["failure_reasons"], r1["steps"]) == ({"round_deadline": 1}, 3 + 3 + 1)
    assert [(f["round"], f["client"]) for f in strategy.failures] == [(1, 2), (2, 2)]
    assert r2["failure_reasons"] == {"round_deadline": 1} and time.monotonic() - t0 < 2 * deadline + 5
    # the loop handed the transport the time left in the round, never more than the deadline
    assert all(w is not None and w <= deadline for w in transport.waits)


def test_reply_checks_say_what_is_wrong() -> None:
    assert count(3, "steps") == 3 and seconds(2, "t") == 2.0
    for bad, reason in ((True, "malformed"), (2.0, "malformed"), (-1, "out_of_range"), (math.inf, "non_finite")):
        with pytest.raises(BadReply) as info:
            count(bad, "samples")
        assert info.value.reason == reason and "samples" in str(info.value)
    with pytest.raises(BadReply, match="t_client must be a number of seconds, got str"):
        seconds("fast", "t_client")
    assert set(REASONS) >= {"raised", "timed_out", "round_deadline", "malformed", "non_finite", "out_of_range"}


def test_a_none_payload_with_nan_decodes_so_the_server_must_check_it() -> None:
    """The NaN-activation case above is real: the ``none`` codec decodes NaN (the server checks)."""
    payload = _nan_payload(NONE_CODEC.encode(torch.zeros(4)))
    assert math.isnan(float(NONE_CODEC.decode(payload)[-1]))
