"""The ``fl-split`` command line: a table of commands (:data:`COMMANDS`), each with its own parser.

    fl-split COMMAND [options]          fl-split COMMAND --help          fl-split --version

The training commands (``sl``, ``fl``, ``ddp``, ``gossip``) share one shape: ``--config NAME|PATH``
(a config in ``conf/`` or a YAML file), ``--set KEY=VALUE`` (dotted keys, or the Flower run-config
spelling), ``--out DIR``, ``--resume``/``--overwrite``, ``--list-keys``, ``--list-configs``,
``--print-config`` and ``--import MODULE`` (a user's module that registers a model, dataset or
codec). ``compare``, ``certs`` and each ``bench NAME`` parse their own options. A wrong key, value,
codec, model, dataset or config name is one line naming what is wrong and the closest valid names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fl_split.ddp.config import DDPConfig
    from fl_split.gossip.config import GossipConfig


def _codecs(args: argparse.Namespace) -> int:
    """List the registered codecs: name, one-line summary, parameters with their defaults."""
    import inspect

    from fl_split.codecs import codec_class, codec_parameters, list_codecs

    rows: list[dict[str, Any]] = []
    for name in list_codecs():
        cls = codec_class(name)
        signature = inspect.signature(cls.__init__).parameters
        params = {p: signature[p].default for p in codec_parameters(name)}
        summary = _plain_text((cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        summary = summary.removeprefix(f"{name}: ")
        rows.append({"name": name, "summary": summary, "parameters": params})
    if args.json:
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['summary']}")
        defaults = "  ".join(f"{k}={v!r}" for k, v in row["parameters"].items())
        print(f"{'':<{width}}  {defaults}")
    print(
        "\nA codec spec is NAME or NAME:key=value,... (e.g. ms:keep=0.01,bits=2); unset parameters take these defaults."
    )
    return 0


def _plain_text(text: str) -> str:
    """Docstring markup as plain text: ``code`` and :role:`target` become their text."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _list_keys(schema: Any) -> int:
    """Print every key of a schema with its default, help and choices."""
    from fl_split.config import flat_fields

    for key, spec in flat_fields(schema).items():
        allowed = spec.allowed()
        extra = f" (one of: {', '.join(map(str, allowed))})" if allowed else ""
        print(f"{key:<28} default {spec.default!r:<24} {spec.help}{extra}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, plus ``out_dir`` from ``--out`` and ``existing_out`` from ``--resume``/``--overwrite``."""
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    existing = getattr(args, "existing_out", None)
    if existing:
        overrides.append(f"existing_out={existing}")
    return overrides


def _ddp_line(config: DDPConfig, last: dict[str, Any], summary: dict[str, Any]) -> str:
    ranks = os.environ.get("WORLD_SIZE", config.world_size)
    if last["cum_uplink_bytes"] is None:
        return f"{ranks} ranks, DDP's own all-reduce (hook=false: no payload bytes to measure)"
    return f"{last['cum_uplink_bytes'] / 1e6:.3f} MB of payloads sent by {ranks} ranks ({config.codec})"


def _gossip_line(config: GossipConfig, last: dict[str, Any], summary: dict[str, Any]) -> str:
    return (
        f"accuracy of the average model; {last['cum_uplink_bytes'] / 1e6:.3f} MB over all edges, consensus "
        f"distance {last['consensus_distance']:.4g}, sparsity {last['model_sparsity']:.3f} ({summary['codec']})"
    )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (``main`` called again with stderr
    redirected, as tests and notebooks do, must not write to a stream closed since)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr(names: tuple[str, ...]) -> None:
    """Show our warnings and errors on stderr (flwr and Ray keep their own handlers)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)


def _add_config_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options every training command shares: config, overrides, output, listings, plugins."""
    p.add_argument(
        "--config", metavar="NAME|PATH", help=f"a config in conf/ (`fl-split {command} --list-configs`), or a YAML file"
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        help="override config keys (dotted: optimizer.lr=0.1; the run-config spelling local-epochs=2 works too)",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (the config key out_dir)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        dest="existing_out",
        action="store_const",
        const="resume",
        help="continue the run in --out from its checkpoint.pt (same config; rounds or steps may be raised)",
    )
    group.add_argument(
        "--overwrite", dest="existing_out", action="store_const", const="overwrite", help="replace the run in --out"
    )
    p.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    p.add_argument("--list-configs", action="store_true", help="list the named configs in conf/ and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    _add_import(p)


def _add_import(p: argparse.ArgumentParser) -> None:
    from fl_split.plugins import add_import_option

    add_import_option(p)


def _parse_importing(argv: list[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse ``argv`` and import its ``--import`` modules (a failed import is a usage error)."""
    from fl_split.plugins import add_plugins

    args = parser.parse_args(argv)
    try:
        add_plugins(args.imports)
    except ImportError as err:
        parser.error(str(err))
    return args


def _config_command(command: str, runner: Callable[[Any, argparse.Namespace, argparse.ArgumentParser], int]) -> Run:
    """A training command: parse the shared options, resolve and check the config once, then run it."""

    def run(argv: list[str], parser: argparse.ArgumentParser) -> int:
        from fl_split.config import ConfigError, command_configs

        args = _parse_importing(argv, parser)
        config_cls = _CONFIG_CLASSES[command]()
        if args.list_keys:
            return _list_keys(config_cls.schema())
        if args.list_configs:
            for name, path in command_configs(command).items():
                print(f"{name:<20} {path}")
            return 0
        try:
            config = config_cls.load(args.config or _DEFAULT_CONFIG[command], _overrides(args))
        except (ConfigError, FileNotFoundError) as err:
            parser.error(str(err))
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        return runner(config, args, parser)

    return run


def _run_sl(config: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_split.errors import TrainingFailed

    _log_to_stderr(("fl_split", "strategies", "simulations"))
    try:
        from simulations import sl

        return sl.main(config)
    except TrainingFailed as err:
        print(f"fl-split sl: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:  # model/data mismatches found at start-up, before training
        parser.error(str(err))
    return 2  # pragma: no cover - parser.error exits


def _run_fl(config: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _log_to_stderr(("fl_split", "strategies", "simulations"))
    try:
        from simulations.fl import run_fl

        summary = run_fl(config, echo=True)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0 if summary.get("status") == "completed" else 1


def _spawned_runner(
    command: str, unit: str, last_line: Callable[[Any, dict[str, Any], dict[str, Any]], str]
) -> Callable[[Any, argparse.Namespace, argparse.ArgumentParser], int]:
    """``ddp`` and ``gossip``: run (local ranks or one ``torchrun`` rank), print the results.

    A used ``--out`` and a checkpoint that cannot be resumed are usage errors (exit 2), raised before
    any rank starts. Under ``torchrun`` only rank 0 prints (it wrote the outputs).
    """

    def run(config: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from fl_split.config import ConfigError
        from fl_split.metrics import OutputExists, read_metrics
        from fl_split.report import results_table

        try:
            _SPAWNED_RUNNERS[command]()(config)
        except (ConfigError, FileNotFoundError, OutputExists) as err:
            parser.error(str(err))
        if os.environ.get("RANK", "0") != "0":
            return 0
        out = Path(config.out_dir)
        rows = read_metrics(out / "metrics.jsonl")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        print(results_table(summary, rows, out, unit))
        print(last_line(config, rows[-1], summary), flush=True)
        return 0

    return run


def _ddp_runner() -> Callable[[Any], Any]:
    from fl_split.ddp.train import run_ddp

    return run_ddp


def _gossip_runner() -> Callable[[Any], Any]:
    from fl_split.gossip.run import run_gossip

    return run_gossip


_SPAWNED_RUNNERS: dict[str, Callable[[], Callable[[Any], Any]]] = {"ddp": _ddp_runner, "gossip": _gossip_runner}


def _sl_config() -> Any:
    from fl_split.sl.config import SLConfig

    return SLConfig


def _fl_config() -> Any:
    from fl_split.fl.config import FLConfig

    return FLConfig


def _ddp_config() -> Any:
    from fl_split.ddp.config import DDPConfig

    return DDPConfig


def _gossip_config() -> Any:
    from fl_split.gossip.config import GossipConfig

    return GossipConfig


#: command → its config class (imported when the command runs) and the config it loads by default.
_CONFIG_CLASSES: dict[str, Callable[[], Any]] = {
    "sl": _sl_config,
    "fl": _fl_config,
    "ddp": _ddp_config,
    "gossip": _gossip_config,
}
_DEFAULT_CONFIG: dict[str, str | None] = {"sl": "sl", "fl": "fl", "ddp": None, "gossip": None}


def _codecs_command(argv: list[str], parser: argparse.ArgumentParser) -> int:
    return _codecs(_parse_importing(argv, parser))


def _delegate(module: str) -> Run:
    """A command with its own parser: ``module.main(argv)`` (``compare``, ``certs``, each benchmark)."""

    def run(argv: list[str], parser: argparse.ArgumentParser) -> int:
        import importlib

        main: Callable[[list[str]], int] = importlib.import_module(module).main
        return main(argv)

    return run


Run = Callable[[list[str], argparse.ArgumentParser], int]


@dataclass(frozen=True)
class Command:
    """One ``fl-split`` command: its one-line help, how its parser is set up, and what runs it.

    ``options`` adds the command's options to its parser; ``None`` means the command parses its own
    arguments (``run`` gets them unparsed, ``--help`` included).
    """

    help: str
    run: Run
    options: Callable[[argparse.ArgumentParser], None] | None = None


def _codecs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_import(p)


#: The benchmarks: ``fl-split bench NAME``, each with its own options (``--help``).
BENCHMARKS: dict[str, Command] = {
    "codecs": Command("codec throughput, payload sizes and errors", _delegate("simulations.bench_codecs")),
    "sl": Command("split-learning throughput (engines, clients, batching)", _delegate("simulations.bench_sl")),
    "sl-accuracy": Command("SL accuracy at equal measured budgets", _delegate("simulations.bench_sl_accuracy")),
    "sl-payoff": Command("SL vs FL bytes per epoch by samples per client", _delegate("simulations.bench_sl_payoff")),
    "deploy": Command("SL on local SuperLink + SuperNodes: messages vs stream", _delegate("simulations.bench_deploy")),
    "edge": Command(
        "time to accuracy on shaped edge links (root: network namespaces)", _delegate("simulations.bench_edge")
    ),
    "fl": Command("FL at scale and its accuracy table", _delegate("simulations.bench_fl")),
    "ddp": Command("DDP hook step time (BIRD vs top-k + EF)", _delegate("simulations.bench_ddp")),
    "gossip": Command("gossip: bits to a target accuracy", _delegate("simulations.bench_gossip")),
}


def _bench(argv: list[str], parser: argparse.ArgumentParser) -> int:
    if not argv:
        parser.print_help()
        return 2
    if argv[0].startswith("-"):
        parser.parse_args(argv[:1])  # --help exits 0; anything else is a usage error
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        from fl_split.suggest import did_you_mean

        parser.error(
            f"unknown benchmark {name!r}{did_you_mean(name, BENCHMARKS)}; choose one of {', '.join(BENCHMARKS)}"
        )
    return BENCHMARKS[name].run(rest, parser)


def _bench_help() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {cmd.help}" for name, cmd in BENCHMARKS.items()]
    return "benchmarks (`fl-split bench NAME --help` for each one's options):\n" + "\n".join(lines) + "\n"


#: Every ``fl-split`` command, in the order ``fl-split --help`` lists them.
COMMANDS: dict[str, Command] = {
    "sl": Command(
        "split learning over Flower (or in process)",
        _config_command("sl", _run_sl),
        lambda p: _add_config_options(p, "sl"),
    ),
    "fl": Command(
        "federated learning with compressed updates over Flower",
        _config_command("fl", _run_fl),
        lambda p: _add_config_options(p, "fl"),
    ),
    "ddp": Command(
        "data-parallel training with the codec hook (gloo; torchrun or local ranks)",
        _config_command("ddp", _spawned_runner("ddp", "step", _ddp_line)),
        lambda p: _add_config_options(p, "ddp"),
    ),
    "gossip": Command(
        "decentralized learning: Malcom-PSGD or CHOCO-SGD over a graph",
        _config_command("gossip", _spawned_runner("gossip", "round", _gossip_line)),
        lambda p: _add_config_options(p, "gossip"),
    ),
    "compare": Command("SL vs FL grid at measured bytes", _delegate("simulations.compare")),
    "codecs": Command("list the registered codecs, their parameters and defaults", _codecs_command, _codecs_options),
    "bench": Command("benchmarks: " + ", ".join(BENCHMARKS), _bench),
    "certs": Command("TLS files for a deployment", _delegate("simulations.certs")),
    "gpu-check": Command(
        "one prepared check of every CUDA path (JSON; cuda: false without a GPU)", _delegate("simulations.gpu_check")
    ),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fl-split")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        from fl_split import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="fl-split",
        description="Communication-efficient split and federated learning on Flower.",
        usage="fl-split [--version] COMMAND [options]",
        epilog=f"commands:\n{listing}\n\n`fl-split COMMAND --help` shows a command's options.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fl-split {_version()}")
    parser.add_argument("command", metavar="COMMAND", help=argparse.SUPPRESS)
    return parser


def _command_parser(name: str, command: Command) -> argparse.ArgumentParser:
    extra: dict[str, Any] = {}
    if name == "bench":
        extra = {"usage": "fl-split bench NAME [options]", "epilog": _bench_help()}
    parser = argparse.ArgumentParser(
        prog=f"fl-split {name}",
        description=command.help[:1].upper() + command.help[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **extra,
    )
    if command.options is not None:
        command.options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fl-split`` console script: ``fl-split COMMAND [options]`` (see :data:`COMMANDS`).

    A closed pipe (``fl-split codecs --json | head``) ends the command quietly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv[:1])  # --help, --version, or the missing command's usage error
        return 2  # pragma: no cover - parse_args exits
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from fl_split.suggest import did_you_mean

        parser.error(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}; commands: {', '.join(COMMANDS)}")
    try:
        return COMMANDS[name].run(rest, _command_parser(name, COMMANDS[name]))
    except BrokenPipeError:
        # the reader went away (`| head`): stop writing, without a traceback at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command a closed pipe stopped


if __name__ == "__main__":
    sys.exit(main())
