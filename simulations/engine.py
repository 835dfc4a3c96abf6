"""Starting Flower's simulation engine: the one place that knows how (``run_simulation`` is deprecated)."""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def run_flower_simulation(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0
) -> None:
    """Run ``server_app`` against ``num_clients`` virtual SuperNodes on Ray, in this process.

    Each virtual node gets ``partition-id`` / ``num-partitions`` in its node config. Ray runs
    ``floor(cpus / num_cpus)`` actors, each handling one message at a time.

    Raises
    ------
    Exception
        Whatever the ServerApp raised (Flower re-raises it here).
    """
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning per actor

    backend_config = {
        "client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "logging_level": logging.ERROR},
    }
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_hide_run_simulation_deprecation)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    finally:
        flwr_logger.removeFilter(_hide_run_simulation_deprecation)


def _hide_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """Drop flwr's "run_simulation is deprecated" banner: this module is the one place that calls it."""
    return "`run_simulation` function is deprecated" not in record.getMessage()
