"""The ServerApp ``flwr run .`` loads (``pyproject.toml``: ``[tool.flwr.app.components]``).

Its run config holds the keys of both tasks; ``mode`` picks one (``fl``: federated learning, any
other mode: split learning) and empty values take that task's defaults
(:func:`simulations.apps.task_config`). ``fl-split sl|fl`` and the benchmarks build their ServerApps
with the same :func:`simulations.apps.build_server_app`.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_split.config import ConfigError
from fl_split.fl.config import FLConfig
from simulations.apps import build_server_app, task_config
from simulations.fl import run_fl_on_grid
from simulations.sl import run_on_grid
from strategies.split_learning import SplitLearningStrategy


def run_from_context(grid: Grid, context: Context) -> dict[str, Any]:
    """``flwr run .``: resolve the task's config from the run config, run it, write its outputs."""
    _, config = task_config(context.run_config)
    if config.flower.ray_address:
        raise ConfigError(
            f"flower.ray-address={config.flower.ray_address!r} is for `fl-split sl` and `fl-split fl`; under "
            "`flwr run` Flower's own runtime runs the clients (a deployment's SuperNodes, or its simulation's Ray): "
            "drop the key"
        )
    if isinstance(config, FLConfig):
        return run_fl_on_grid(config, grid)
    return run_on_grid(config, grid)


def make_server_app(strategy: SplitLearningStrategy) -> ServerApp:
    """A ServerApp (simulation) that runs an already-built split-learning strategy over its grid."""
    return build_server_app(lambda grid, _context: strategy.start(grid, local=True))


app = build_server_app(run_from_context)
