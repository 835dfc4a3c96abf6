"""``fl-split fl``: federated learning with compressed updates over Flower's simulation engine.

>>> from fl_split.fl.config import load_fl_config
>>> summary = run_fl(load_fl_config("fl", values={"rounds": 2}))
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fl_split.checkpoint import load_checkpoint, save_checkpoint, save_model
from fl_split.errors import TrainingFailed
from fl_split.fl.client import accuracy, build_model
from fl_split.fl.config import FLConfig
from fl_split.metrics import RunWriter, failure_summary
from fl_split.report import RunReporter
from fl_split.sl.setup import check_model_fits_data, load_split
from simulations.apps import build_client_app, build_server_app, flower_log
from strategies.compressed_fedavg import CompressedFedAvg

log = logging.getLogger(__name__)


class FLRun:
    """The server side of one run: the strategy, the centralized evaluation and the metrics rows."""

    def __init__(self, config: FLConfig, writer: RunWriter | None = None) -> None:
        check_model_fits_data({**config, "cut": "shallow"})
        self.config = config
        self.strategy = CompressedFedAvg(config)
        self.model = build_model(config, seed=config.seed)
        self.x_test, self.y_test = load_split(config, "test")
        self.writer = writer
        self.rows: list[dict[str, Any]] = []
        self._cum = [0, 0]
        self._created = self._t0 = time.perf_counter()
        self._resumed_wall = 0.0  #: wall seconds of the rounds a resumed run had done
        #: seconds from here to the end of the initial evaluation (Ray, actors, nodes; the rows' clock starts then)
        self.start_s: float | None = None
        self.done_rounds = 0  #: rounds a resumed run had done before

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's ``evaluate_fn``: test accuracy of the global model; after round >= 1, write the row
        and (every ``checkpoint_every`` rounds) the checkpoint."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        acc = accuracy(self.model, self.x_test, self.y_test, self.config.eval_batch_size or 512)
        if server_round == 0:  # the rows' clock starts with round 1, as split learning's does
            now = time.perf_counter()
            self.start_s = self.start_s if self.start_s is not None else now - self._created
            self._t0 = now - self._resumed_wall
        if server_round >= 1:
            rnd = server_round + self.done_rounds
            self._write(rnd, acc)
            every = self.config.checkpoint_every
            if self.writer is not None and every and (rnd % every == 0 or rnd == self.config.rounds):
                save_checkpoint(self.writer.out_dir, "fl", rnd, self.config, self.state_dict())
        return MetricRecord({"test-accuracy": acc})

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the global model, the strategy's state, byte totals, wall time and
        Python's ``random`` state (Flower samples nodes with it)."""
        return {
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "cum_bytes": list(self._cum),
            "wall_s": time.perf_counter() - self._t0,
            "random": list(random.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any], round_: int) -> None:
        """Continue after round ``round_`` (see :meth:`state_dict`)."""
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"], round_)
        self._cum = [int(n) for n in state["cum_bytes"]]
        self._resumed_wall = float(state["wall_s"])
        self._t0 = time.perf_counter() - self._resumed_wall
        version, internal, gauss = state["random"]
        random.setstate((version, tuple(internal), gauss))
        self.done_rounds = round_

    def _write(self, server_round: int, acc: float) -> None:
        r = self.strategy.round_row()
        self._cum[0] += r["uplink_bytes"]
        self._cum[1] += r["downlink_bytes"]
        row = {
            "round": server_round,
            "test_accuracy": acc,
            "test_accuracy_dense": acc,  # FL evaluates the global model itself: nothing is compressed
            "cum_uplink_bytes": self._cum[0],
            "cum_downlink_bytes": self._cum[1],
            "steps": r["aggregated"],
            "wall_s": round(time.perf_counter() - self._t0, 3),
            **r,
        }
        self.rows.append(row)
        if self.writer is not None:
            self.writer.write_round(row)  # a RunReporter also advances its bar

    def start(self, grid: Grid) -> None:
        """Wait (bounded) for the nodes, then run every round on ``grid`` (Flower's ``FedAvg.start`` loop).

        Raises
        ------
        TrainingFailed
            If fewer than ``clients`` nodes connect within ``flower.wait_for_nodes_s``.
        """
        wait_for_nodes(grid, self.config.clients, self.config.flower.wait_for_nodes_s)
        initial = ArrayRecord(torch_state_dict=self.model.state_dict())
        self.strategy.start(
            grid,
            initial,
            num_rounds=self.config.rounds - self.done_rounds,
            timeout=self.config.flower.timeout_s,
            evaluate_fn=self.evaluate,
        )


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float, poll_s: float = 0.5) -> list[int]:
    """The connected nodes once ``needed`` are; ``TrainingFailed`` saying how many came after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() >= deadline:
            raise TrainingFailed(
                f"only {len(nodes)} of the {needed} nodes the config asks for (clients={needed}) connected within "
                f"flower.wait_for_nodes_s={timeout_s:g} s: start more SuperNodes, or run with clients={len(nodes)} "
                f'(flwr run . -c "clients={max(len(nodes), 1)}"; fl-split fl --set clients={max(len(nodes), 1)})'
            )
        log.info("waiting for nodes: %d of %d connected", len(nodes), needed)
        time.sleep(poll_s)


def _build(config: FLConfig, lines: Callable[[str], None] | None = None) -> tuple[FLRun, RunReporter]:
    """The run (resumed from ``out_dir``'s checkpoint with ``existing_out=resume``) and its reporter
    (``lines``: where its per-round lines go, see :class:`~fl_split.report.RunReporter`)."""
    run = FLRun(config)
    done = 0
    if config.existing_out == "resume":
        done, state = load_checkpoint(config.out_dir, "fl", config)
        run.load_state_dict(state, done)
        log.info("resuming %s after round %d", config.out_dir, done)
    run.writer = RunReporter(
        config.out_dir,
        config.existing_out,
        done,
        total=config.rounds,
        desc="FL",
        progress=config.progress,
        lines=lines,
    )
    return run, run.writer


def run_fl(config: FLConfig, *, echo: bool = False, mods: tuple = ()) -> dict[str, Any]:
    """Run federated learning as ``config`` says (Flower's simulation engine); return ``summary.json``'s content."""
    from simulations.engine import run_flower_simulation

    run, writer = _build(config)
    flower = config.flower
    try:
        run_flower_simulation(
            build_server_app(lambda grid, _context: run.start(grid)),
            build_client_app(mods),
            config.clients,
            num_cpus=flower["num_cpus"],
            num_gpus=flower["num_gpus"],
            ray_address=flower["ray_address"],
        )
    except TrainingFailed as exc:
        return _finish(config, run, writer, echo, exc)
    return _finish(config, run, writer, echo)


def run_fl_on_grid(config: FLConfig, grid: Grid) -> dict[str, Any]:
    """Run federated learning on an existing grid (the ServerApp of ``flwr run .`` with ``mode = "fl"``):
    a line per round in Flower's log, the table at the end."""
    run, writer = _build(config, flower_log)
    try:
        run.start(grid)
    except TrainingFailed as exc:
        _finish(config, run, writer, True, exc)
        raise
    summary = _finish(config, run, writer, echo=True)
    if summary["status"] != "completed":
        raise TrainingFailed(summary["error"])
    return summary


def _finish(
    config: FLConfig, run: FLRun, writer: RunWriter, echo: bool, error: BaseException | None = None
) -> dict[str, Any]:
    """Write ``summary.json`` (status, failures by reason, ``s_per_round``, ``start_s``) and the plot;
    print the table when ``echo``.

    The run failed if it raised, completed fewer rounds than configured, or never aggregated an
    update (every round kept the initial model): ``status: failed`` and ``error`` say so.
    """
    sampled = f" ({config.fraction:g} per round)" if config.fraction < 1 else ""
    title = (
        f"FL, {config.dataset}, {config.clients} clients{sampled}, {config.partition}: "
        f"up {config.uplink}{' + EF' if config.error_feedback else ''}, down {config.downlink}"
    )
    if error is None and len(writer.rows) < config.rounds:
        error = TrainingFailed(f"completed {len(writer.rows)} of {config.rounds} rounds; see the log above")
    if error is None and not any(r["aggregated"] for r in writer.rows):
        first = run.strategy.failures[0]["error"] if run.strategy.failures else "no reply arrived"
        error = TrainingFailed(f"no round aggregated an update: the model never changed; first failure: {first}")
    status = "completed" if error is None else "failed"
    if error is None:
        save_model(writer.out_dir, {"model": run.model.state_dict()})
    faults = {
        **failure_summary(run.strategy.failures),
        "rounds_without_update": sum(1 for r in writer.rows if not r["aggregated"]),
    }
    walls = [r["wall_s"] for r in writer.rows]
    per_round = (walls[-1] - walls[0]) / (len(walls) - 1) if len(walls) > 1 else None
    timing = {
        # rounds after the first (the first also starts the actors' imports)
        "s_per_round": None if per_round is None else round(per_round, 3),
        # start-up before round 1 (Ray, waiting for the nodes, the initial evaluation); not in the rows' wall_s
        "start_s": None if run.start_s is None else round(run.start_s, 3),
    }
    summary = writer.write_summary(
        config,
        {
            "title": title,
            "status": status,
            "error": None if error is None else str(error),
            "mode": "fl",
            **faults,
            **timing,
        },
    )
    if echo and isinstance(writer, RunReporter):
        print(writer.table(summary), flush=True)
    return summary
