"""The Flower apps: one builder for every ServerApp, one ClientApp for both tasks, and the task's config.

Every ServerApp of the project (``flwr run .``, ``fl-split sl``, ``fl-split fl``, the benchmarks)
is :func:`build_server_app` over a function of the grid; every ClientApp is :func:`build_client_app`,
which answers split learning (``train.sl_begin`` / ``train.sl_step``) and federated learning
(``train``) alike.

The run config of ``flwr run .`` serves two tasks, chosen by ``mode``: ``fl`` is federated
learning, any other mode split learning. Each task has its own defaults: a key the run config
leaves empty (``""``, as ``pyproject.toml`` does for ``rounds``, ``uplink``, ``optimizer.lr``,
``eval-batch-size`` and ``out-dir``) takes the task's default (``fl-split sl`` / ``fl-split fl``);
a key of the other task only is refused when set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from fl_split.config import ConfigError, flat_fields
from fl_split.fl.client import client_task, local_train
from fl_split.fl.config import FLConfig
from fl_split.fl.mods import compress_update
from fl_split.node_config import node_partition
from fl_split.sl.client import BEGIN, STEP, ClientState, client_handle
from fl_split.sl.config import SLConfig
from fl_split.sl.records import RECORD, from_record, to_record
from fl_split.sl.stream_client import StreamFault, stream_round
from fl_split.sl.stream_server import ADDRESS

#: ``mode`` value of the run config that selects federated learning.
FL_MODE = "fl"

#: task → its config class; ``sl`` is every ``mode`` but ``fl``.
TASKS: dict[str, type[SLConfig] | type[FLConfig]] = {"sl": SLConfig, "fl": FLConfig}


def task_of(run_config: Mapping[str, Any]) -> str:
    """``"fl"`` when the run config's ``mode`` is ``fl``, else ``"sl"``."""
    return "fl" if run_config.get("mode") == FL_MODE else "sl"


def task_config(run_config: Mapping[str, Any]) -> tuple[str, SLConfig | FLConfig]:
    """The task a run config selects and its resolved, validated config.

    Empty values (``""``) take the task's defaults. Keys of the other task only are skipped while
    they hold that task's default (the app's shared run config lists them) and refused otherwise.

    Raises
    ------
    ConfigError
        An unknown key, a bad value, or a key of the other task set (saying which ``mode`` it needs).
    """
    task = task_of(run_config)
    other = "fl" if task == "sl" else "sl"
    own = flat_fields(TASKS[task].schema())
    theirs = flat_fields(TASKS[other].schema())
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        dotted = key.replace("-", "_")
        if dotted == "mode" and task == "fl":
            continue
        if dotted not in own and dotted in theirs:
            if value != "" and value != theirs[dotted].default and value != _as_run_value(theirs[dotted].default):
                needs = "mode='fl'" if other == "fl" else "a split-learning mode (splitfed2, splitfed1, sequential)"
                raise ConfigError(
                    f"run-config key {key!r} = {value!r} belongs to {_TASK_NAMES[other]} ({needs}); this run is "
                    f"{_TASK_NAMES[task]} (mode={run_config.get('mode', 'splitfed2')!r}): drop the key or change mode"
                )
            continue
        if value == "":
            continue  # the task's default
        values[key] = value
    return task, TASKS[task].from_run_config(values)


_TASK_NAMES = {"sl": "split learning", "fl": "federated learning"}


def _as_run_value(value: Any) -> Any:
    return "" if value is None else value


def build_server_app(run: Callable[[Grid, Context], object]) -> ServerApp:
    """A ServerApp whose main calls ``run(grid, context)``: every ServerApp of the project is one.

    Parameters
    ----------
    run:
        The server side of a run: a strategy's ``start`` over the grid, a benchmark's cells, or
        :func:`simulations.server_app.run_from_context` (``flwr run .``).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, context)

    return app


def build_client_app(mods: Sequence[Mod] = (), stream_fault: StreamFault | None = None) -> ClientApp:
    """The ClientApp of both tasks: ``train`` (FL: an update per round) and ``train.sl_begin`` / ``train.sl_step``.

    Parameters
    ----------
    mods:
        Wrap every message (fault injection in tests); :func:`~fl_split.fl.mods.compress_update`,
        which encodes FL ``train`` replies only, is always the innermost.
    stream_fault:
        May break a split-learning stream mid-round (fault-injection tests).
    """
    app = ClientApp(mods=[*mods, compress_update])
    app.train()(fl_train)

    @app.train(BEGIN)
    def sl_begin(msg: Message, context: Context) -> Message:
        return sl_handle(BEGIN, msg, context, stream_fault)

    @app.train(STEP)
    def sl_step(msg: Message, context: Context) -> Message:
        return sl_handle(STEP, msg, context)

    return app


# ------------------------------------------------------------------ the ClientApp's handlers
def sl_handle(kind: str, msg: Message, context: Context, stream_fault: StreamFault | None = None) -> Message:
    """Run one split-learning message against this node's persisted state; reply with the fields.

    The node's whole state lives in ``context.state`` (one ConfigRecord), the logic in
    :func:`fl_split.sl.client.client_handle`. An ``sl_begin`` that announces a stream (the
    ``stream`` transport) runs the whole round over it and replies with the round's last fields.
    """
    stored = from_record(context.state)
    state = ClientState.from_fields(stored) if stored else None
    pid, num = node_partition(context.node_config)
    fields = from_record(msg.content)
    if kind == BEGIN and ADDRESS in fields:
        state, reply = stream_round(fields, state, pid, num, fault=stream_fault)
    else:
        state, reply = client_handle(kind, fields, state, pid, num)
    context.state[RECORD] = to_record(state.to_fields())[RECORD]
    return Message(content=to_record(reply), reply_to=msg)


def fl_train(msg: Message, context: Context) -> Message:
    """Federated learning: one round of local training from the global weights in ``msg``; reply with the
    update (model delta). Compression is not here: :func:`~fl_split.fl.mods.compress_update` (a mod)
    encodes the reply's ``ArrayRecord`` on its way out, with this node's error-feedback residual."""
    config = msg.content.config_records["config"]
    task = client_task(str(config["fl-config"]))
    weights = msg.content.array_records["arrays"].to_torch_state_dict()
    pid, num = node_partition(context.node_config)
    delta, examples, loss = local_train(task, weights, pid, num, int(str(config["server-round"])))
    metrics = MetricRecord({"num-examples": examples, "train-loss": loss, "partition-id": pid})
    return Message(
        content=RecordDict({"arrays": ArrayRecord(torch_state_dict=delta), "metrics": metrics}), reply_to=msg
    )


def flower_log(line: str) -> None:
    """Log ``line`` at INFO through Flower's logger: a ServerApp's per-round lines then reach
    ``flwr run --stream`` and ``flwr log`` as Flower's own strategies' do."""
    from flwr.common.logger import log

    log(logging.INFO, line)
