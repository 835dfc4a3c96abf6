"""``fl-split sl``: run split learning on the configured engine and write the run's outputs.

>>> from fl_split.sl.config import load_sl_config
>>> summary = run_sl(load_sl_config(overrides=["rounds=2", "engine=inprocess"]))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.serverapp import Grid

from fl_split.checkpoint import load_checkpoint, save_model
from fl_split.metrics import failure_summary
from fl_split.report import RunReporter
from fl_split.sl.config import SLConfig
from fl_split.sl.transport import InProcessTransport
from simulations.apps import build_client_app, build_server_app, flower_log
from strategies.split_learning import SplitLearningStrategy, TrainingFailed, describe

log = logging.getLogger(__name__)


def _build(config: SLConfig, lines: Callable[[str], None] | None = None) -> tuple[SplitLearningStrategy, RunReporter]:
    """The strategy (resumed from ``out_dir``'s checkpoint with ``existing_out=resume``) and its reporter
    (``lines``: where its per-round lines go, see :class:`~fl_split.report.RunReporter`)."""
    strategy = SplitLearningStrategy(config)  # validates model/data/codecs before anything starts
    resume_round = 0
    if config.existing_out == "resume":
        resume_round, state = load_checkpoint(config.out_dir, "sl", config)
        strategy.load_state_dict(state)
        log.info("resuming %s after round %d", config.out_dir, resume_round)
    reporter = RunReporter(
        config.out_dir,
        config.existing_out,
        resume_round,
        total=config.rounds,
        desc=f"SL {config.mode} ({config.engine})",
        progress=config.progress,
        lines=lines,
    )
    strategy.writer = reporter
    return strategy, reporter


def _finish(
    config: SLConfig,
    writer: RunReporter,
    echo: bool,
    error: BaseException | None = None,
    strategy: SplitLearningStrategy | None = None,
) -> dict[str, Any]:
    """Close the bar and write ``summary.json`` (also after a failure: ``status`` says what happened).

    The summary counts the clients that left a round, by reason (``failure_reasons``), and lists
    them (``failures``: round, client, reason, error).
    """
    writer.close()
    status = {"status": "completed" if error is None else "failed", "error": None if error is None else str(error)}
    faults = failure_summary(strategy.failures if strategy is not None else [])
    if error is None and strategy is not None:
        halves = {"client_half": strategy.client_half.state_dict(), "server_half": strategy.server_half.state_dict()}
        save_model(writer.out_dir, halves)
    summary = writer.write_summary(config, {"title": describe(config), **status, **faults})
    if error is not None:
        raise error
    if not writer.rows:
        raise TrainingFailed(f"the run completed no round; see the log above (outputs in {writer.out_dir})")
    if echo:
        print(writer.table(summary), flush=True)
    return summary


def _run(
    config: SLConfig,
    start: Callable[[SplitLearningStrategy], object],
    echo: bool,
    lines: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    strategy, writer = _build(config, lines)
    try:
        start(strategy)
    except TrainingFailed as exc:
        return _finish(config, writer, echo, exc, strategy)
    return _finish(config, writer, echo, strategy=strategy)


def run_on_grid(config: SLConfig, grid: Grid) -> dict[str, Any]:
    """Run the strategy over a ServerApp's grid (``flwr run``): a line per round in Flower's log, the table
    at the end; return the summary."""
    return _run(config, lambda strategy: strategy.start(grid), echo=True, lines=flower_log)


def run_sl(config: SLConfig, *, echo: bool = False) -> dict[str, Any]:
    """Run split learning as ``config`` says (engine ``flower`` or ``inprocess``); return ``summary.json``'s content.

    With ``echo``, print the results table and the paths written.

    Raises
    ------
    TrainingFailed
        If training diverged or every client of a round failed (``summary.json`` is still written,
        with ``status: failed`` and the error).
    """
    return _run(config, lambda strategy: _start(strategy, config), echo)


def _start(strategy: SplitLearningStrategy, config: SLConfig) -> None:
    """Run the strategy on the configured engine."""
    if config.engine == "inprocess":
        strategy.start(InProcessTransport(config.clients))
    else:
        from simulations.engine import run_flower_simulation

        flower = config.flower
        run_flower_simulation(
            build_server_app(lambda grid, _context: strategy.start(grid, local=True)),
            build_client_app(),
            config.clients,
            num_cpus=flower["num_cpus"],
            num_gpus=flower["num_gpus"],
            engine_wait_ms=flower["engine_wait_ms"],
            ray_address=flower["ray_address"],
        )


def main(config: SLConfig) -> int:
    """Run and print the results table (the CLI's ``sl`` command)."""
    run_sl(config, echo=True)
    return 0
