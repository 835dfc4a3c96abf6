"""Starting Flower's simulation engine: the one place that knows how (``run_simulation`` is deprecated)."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

log = logging.getLogger(__name__)

#: Flower's simulation engine hands each virtual node at most one message per poll and then waits
#: this long (``f_stop.wait(0.1)`` in ``flwr/server/superlink/fleet/vce/vce_api.py``).
STOCK_ENGINE_WAIT_MS = 100.0
#: The flwr versions whose engine loop :func:`engine_wait` was checked against.
PATCHABLE_FLWR = ("1.42.0",)


@contextmanager
def engine_wait(wait_ms: float) -> Iterator[bool]:
    """Shorten the simulation engine's per-poll wait to ``wait_ms`` while the block runs.

    The one place fl-split changes Flower's behaviour. It replaces
    ``vce_api.add_messages_to_queue`` (the thread that moves each node's next message from the
    link state to the Ray actors' queue, then sleeps 0.1 s) with the same loop and a shorter
    sleep, only for flwr versions in :data:`PATCHABLE_FLWR` whose loop still reads
    ``f_stop.wait(0.1)``; otherwise it logs why and leaves Flower alone. ``wait_ms`` equal to
    :data:`STOCK_ENGINE_WAIT_MS` is the switch that turns it off. It acts in this process only:
    ``fl-split sl``, not ``flwr run`` (whose engine runs in the SuperLink's process).

    Yields
    ------
    patched:
        Whether the engine runs with the shorter wait.
    """
    if wait_ms == STOCK_ENGINE_WAIT_MS:
        yield False
        return
    from flwr.server.superlink.fleet.vce import vce_api

    version = metadata.version("flwr")
    original = vce_api.add_messages_to_queue
    if version not in PATCHABLE_FLWR or "f_stop.wait(0.1)" not in inspect.getsource(original):
        log.warning(
            "flower.engine_wait_ms=%s asks to patch Flower's engine, which is checked only for flwr %s (found %s): "
            "running with Flower's own %s ms wait",
            wait_ms,
            ", ".join(PATCHABLE_FLWR),
            version,
            STOCK_ENGINE_WAIT_MS,
        )
        yield False
        return
    wait_s = wait_ms / 1000.0

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):  # type: ignore[no-untyped-def]
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(wait_s)

    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original


def run_flower_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    engine_wait_ms: float = STOCK_ENGINE_WAIT_MS,
    ray_address: str = "",
) -> None:
    """Run ``server_app`` against ``num_clients`` virtual SuperNodes on Ray, in this process.

    Each virtual node gets ``partition-id`` / ``num-partitions`` in its node config. Ray runs
    ``floor(cpus / num_cpus)`` actors, each handling one message at a time. ``engine_wait_ms``
    below Flower's 100 ms shortens the engine's poll (see :func:`engine_wait`). With ``ray_address``
    (a running cluster's head, ``host:port``, or ``auto``) the actors run on that cluster, across its
    machines; this process connects to it and disconnects at the end, leaving the cluster running.

    Raises
    ------
    Exception
        Whatever the ServerApp raised (Flower re-raises it here).
    """
    from flwr.simulation import run_simulation

    init_args: dict[str, object] = {"logging_level": logging.ERROR}
    if ray_address:  # the cluster's resources are its own: only connect
        init_args["address"] = ray_address
    else:  # "local": a Ray of our own, even where `ray start` left a cluster that a bare ray.init() would join
        init_args |= {"address": "local", "num_cpus": os.cpu_count() or 1, "include_dashboard": False}
    backend_config = {"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus}, "init_args": init_args}
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_hide_run_simulation_deprecation)
    try:
        start_ray(init_args)
        with warnings.catch_warnings(), engine_wait(engine_wait_ms):
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    finally:
        flwr_logger.removeFilter(_hide_run_simulation_deprecation)
        import ray

        if ray.is_initialized():  # Flower shuts Ray down when its backend ends; not when it failed before that
            ray.shutdown()


#: How often :func:`start_ray` tries, and the pause between tries.
RAY_START_ATTEMPTS, RAY_START_PAUSE_S = 3, 3.0


def start_ray(init_args: dict[str, object], attempts: int = RAY_START_ATTEMPTS) -> None:
    """Start Ray as Flower's ``RayBackend.init_ray`` would, retrying a start that times out.

    On a loaded machine Ray's GCS server can miss Ray's own start-up deadline ("Timed out waiting
    for file .../gcs_server_port_..."), which Flower reports only as "Simulation Runtime crashed".
    Flower skips its own ``ray.init`` when Ray is already up and shuts it down when the run ends.

    Raises
    ------
    RuntimeError
        Ray did not start in ``attempts`` tries (the last error is chained).
    """
    import sys
    import time

    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)  # what Flower's backend passes its actors
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    address = str(init_args.get("address", "local"))
    if address not in ("local", "auto") and not _answers(address):  # ray.init would wait minutes on it
        raise RuntimeError(_unreachable(address, "nothing answers there"))
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # Ray's tip that a future version will stop hiding GPUs from
                # actors without a GPU share: this version hides them, which client_device=auto relies on
                warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
                ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)  # type: ignore[arg-type]
            return
        except (RuntimeError, ConnectionError, TimeoutError) as exc:
            ray.shutdown()
            if attempt == attempts and address != "local":
                raise RuntimeError(_unreachable(address, f"{attempts} tries failed: {exc}")) from exc
            if attempt == attempts:
                raise RuntimeError(
                    f"Ray (Flower's simulation engine) did not start in {attempts} tries: {exc}. "
                    "Is the machine out of memory or /tmp full (Ray writes /tmp/ray)?"
                ) from exc
            log.warning("Ray did not start (%s); trying again in %.0f s", exc, RAY_START_PAUSE_S)
            time.sleep(RAY_START_PAUSE_S)


def _unreachable(address: str, why: str) -> str:
    return (
        f"could not connect to the Ray cluster at flower.ray_address={address!r}: {why}. Is `ray start --head` "
        "running there, is the address its host:port (6379 unless --port was given), and is it reachable from "
        "this machine?"
    )


def _answers(address: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the cluster address ``[ray://]host:port`` opens within ``timeout_s``."""
    import socket

    from fl_split.config_blocks import ray_host_port

    target = ray_host_port(address)
    if target is None:
        return False
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return True
    except OSError:
        return False


def _hide_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """Drop flwr's "run_simulation is deprecated" banner: this module is the one place that calls it."""
    return "`run_simulation` function is deprecated" not in record.getMessage()
