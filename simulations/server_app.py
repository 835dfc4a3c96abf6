"""The split-learning ServerApp: reads the run config and hands the grid to the strategy.

``flwr run .`` loads :data:`app` (``pyproject.toml``: ``[tool.flwr.app.components]``), whose run
config holds every key of the split-learning config (``out-dir``, ``rounds``, ``optimizer.lr``...).
``fl-split sl`` builds the strategy itself and uses :func:`make_server_app`.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_split.config import flat_fields, from_run_config
from fl_split.fl.config import FL_SCHEMA, validate_fl
from fl_split.sl.config import SL_SCHEMA, validate_sl
from strategies.split_learning import SplitLearningStrategy


def make_server_app(strategy: SplitLearningStrategy, done: Callable[[], None] | None = None) -> ServerApp:
    """A ServerApp (simulation) that runs an already-built strategy over the grid Flower gives it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid, local=True)
        if done is not None:
            done()

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: resolve the config from the run config, run, write the outputs.

    ``mode = "fl"`` runs federated learning (:mod:`simulations.fl`) with the run config's keys that
    the FL schema knows (``rounds``, ``uplink``, ``error-feedback``, ``optimizer.lr``...; note the
    shared keys' defaults in ``pyproject.toml`` are the split-learning run's); any other mode runs
    split learning.
    """
    from simulations.sl import run_on_grid

    sl_keys, fl_keys = set(flat_fields(SL_SCHEMA)), set(flat_fields(FL_SCHEMA))
    if context.run_config.get("mode") == "fl":  # federated learning: the FL schema's keys, SL's are skipped
        from simulations.fl import run_fl_on_grid

        fl_config = from_run_config(FL_SCHEMA, context.run_config, ignore=sl_keys, validate=validate_fl)
        run_fl_on_grid(fl_config, grid)
        return
    run_on_grid(from_run_config(SL_SCHEMA, context.run_config, ignore=fl_keys, validate=validate_sl), grid)
