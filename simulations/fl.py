"""``fl-split fl``: federated learning with compressed updates over Flower's simulation engine.

>>> from fl_split.fl.config import load_fl_config
>>> summary = run_fl(load_fl_config("fl", values={"rounds": 2}))
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fl_split.fl.client import accuracy, build_model
from fl_split.metrics import RunWriter
from fl_split.sl.setup import check_model_fits_data, load_split
from strategies.compressed_fedavg import CompressedFedAvg

log = logging.getLogger(__name__)


class FLRun:
    """The server side of one run: the strategy, the centralized evaluation and the metrics rows."""

    def __init__(self, config: dict[str, Any], writer: RunWriter | None = None) -> None:
        check_model_fits_data({**config, "cut": "shallow"})
        self.config = config
        self.strategy = CompressedFedAvg(config)
        self.model = build_model(config, seed=int(config["seed"]))
        self.x_test, self.y_test = load_split(config, "test")
        self.writer = writer
        self.rows: list[dict[str, Any]] = []
        self._cum = [0, 0]
        self._t0 = time.perf_counter()
        self._bar = None
        if config["progress"]:
            from tqdm import tqdm

            self._bar = tqdm(total=int(config["rounds"]), desc="FL", unit="round", file=sys.stderr, dynamic_ncols=True)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's ``evaluate_fn``: test accuracy of the global model; after round >= 1, write the row."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        acc = accuracy(self.model, self.x_test, self.y_test, int(self.config["eval_batch_size"]) or 512)
        if server_round >= 1:
            self._write(server_round, acc)
        return MetricRecord({"test-accuracy": acc})

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
            "steps": r["clients"] - r["failed_clients"] - r["dropped"],
            "wall_s": round(time.perf_counter() - self._t0, 3),
            **r,
        }
        self.rows.append(row)
        if self.writer is not None:
            self.writer.write_round(row)
        if self._bar is not None:
            self._bar.set_postfix(acc=f"{acc:.4f}", MB=f"{sum(self._cum) / 1e6:.1f}")
            self._bar.update(1)

    def start(self, grid: Grid) -> None:
        """Run every round on ``grid`` (Flower's ``FedAvg.start`` loop)."""
        initial = ArrayRecord(torch_state_dict=self.model.state_dict())
        self.strategy.start(
            grid,
            initial,
            num_rounds=int(self.config["rounds"]),
            timeout=float(self.config["flower"]["timeout_s"]),
            evaluate_fn=self.evaluate,
        )
        if self._bar is not None:
            self._bar.close()


def make_fl_server_app(run: FLRun) -> ServerApp:
    """A ServerApp running ``run`` over the grid Flower gives it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run.start(grid)

    return app


def run_fl(config: dict[str, Any], *, echo: bool = False, mods: tuple = ()) -> dict[str, Any]:
    """Run federated learning as ``config`` says (Flower's simulation engine); return ``summary.json``'s content."""
    from simulations.engine import run_flower_simulation
    from simulations.fl_client_app import make_fl_client_app

    writer = RunWriter(config["out_dir"])
    run = FLRun(config, writer)
    flower = config["flower"]
    run_flower_simulation(
        make_fl_server_app(run),
        make_fl_client_app(mods),
        int(config["clients"]),
        num_cpus=flower["num_cpus"],
        num_gpus=flower["num_gpus"],
    )
    return _finish(config, run, writer, echo)


def run_fl_on_grid(config: dict[str, Any], grid: Grid) -> dict[str, Any]:
    """Run federated learning on an existing grid (the ServerApp of ``flwr run .`` with ``mode = "fl"``)."""
    writer = RunWriter(config["out_dir"])
    run = FLRun(config, writer)
    run.start(grid)
    return _finish(config, run, writer, echo=True)


def _finish(config: dict[str, Any], run: FLRun, writer: RunWriter, echo: bool) -> dict[str, Any]:
    """Write ``summary.json`` (with ``s_per_round``, ``start_s``) and the plot; print the table when ``echo``."""
    title = json.dumps({k: config[k] for k in ("clients", "fraction", "uplink", "error_feedback", "partition")})
    status = "completed" if len(run.rows) == int(config["rounds"]) else "failed"
    walls = [r["wall_s"] for r in run.rows]
    per_round = (walls[-1] - walls[0]) / (len(walls) - 1) if len(walls) > 1 else None
    timing = {
        # rounds after the first (the first also starts Ray, its actors and their imports)
        "s_per_round": None if per_round is None else round(per_round, 3),
        # start-up: round 1's wall time less one steady round (Ray, actors, node registration, imports)
        "start_s": None if per_round is None else round(walls[0] - per_round, 3),
    }
    summary = writer.write_summary(config, {"title": title, "status": status, "mode": "fl", **timing})
    if echo:
        from simulations.sl import format_summary

        print(format_summary(summary, writer), flush=True)
    return summary
