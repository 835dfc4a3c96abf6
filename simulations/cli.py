"""``fl-split`` command line: one shape for every command.

    fl-split <command> [--config NAME|PATH] [--set key=value ...] [--out DIR]

Commands: ``sl`` (split learning), ``codecs`` (list codecs), ``bench codecs`` (codec benchmark),
``bench sl`` (split-learning throughput), ``bench sl-accuracy`` (accuracy at equal measured budgets),
``bench deploy`` (split learning on a local SuperLink + SuperNodes: messages vs stream),
``fl`` (federated learning), ``bench fl`` (FL at scale, accuracy table), ``ddp`` (data-parallel
training with the codec hook), ``bench ddp`` (hook step time, BIRD vs top-k + EF), ``gossip``
(decentralized learning: Malcom-PSGD, CHOCO-SGD), ``bench gossip`` (bits to a target accuracy),
``certs`` (TLS files for a deployment).
Configs live in ``conf/``; ``--set`` takes dotted keys (``--set optimizer.lr=0.1``); an unknown
key or a bad value is an error that lists the valid keys or choices.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fl_split.ddp.config import DDPConfig
    from fl_split.gossip.config import GossipConfig


def _codecs(args: argparse.Namespace) -> int:
    from fl_split.codecs import codec_class, codec_parameters, list_codecs

    rows = []
    for name in list_codecs():
        doc = (codec_class(name).__doc__ or "").strip().splitlines()[0]
        rows.append({"name": name, "parameters": codec_parameters(name), "summary": doc})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<10} {', '.join(row['parameters']):<48} {row['summary']}")
    return 0


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


def _sl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_split.config import ConfigError
    from fl_split.sl.config import SL_SCHEMA, load_sl_config

    if args.list_keys:
        return _list_keys(SL_SCHEMA)
    overrides = _overrides(args)
    from strategies.split_learning import TrainingFailed

    try:
        config = load_sl_config(args.config or "sl", overrides)
        from simulations import sl

        return sl.main(config)
    except TrainingFailed as err:
        print(f"fl-split sl: error: {err}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    except ValueError as err:  # model/data mismatches found at start-up, before training
        parser.error(str(err))
    return 2  # pragma: no cover - parser.error exits


def _fl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_split.config import ConfigError
    from fl_split.fl.config import FL_SCHEMA, load_fl_config

    if args.list_keys:
        return _list_keys(FL_SCHEMA)
    overrides = _overrides(args)
    try:
        config = load_fl_config(args.config or "fl", overrides)
        from simulations.fl import run_fl

        summary = run_fl(config, echo=True)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    return 0 if summary.get("status") == "completed" else 1


def _spawned(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    command: str,
    unit: str,
    last_line: Callable[[Any, dict[str, Any], dict[str, Any]], str],
) -> int:
    """``ddp`` and ``gossip``: resolve the config, run (local ranks or one ``torchrun`` rank), print the results.

    Config errors, a used ``--out`` and a checkpoint that cannot be resumed are usage errors (exit 2),
    raised before any rank starts. Under ``torchrun`` only rank 0 prints (it wrote the outputs).
    """
    from fl_split.config import ConfigError
    from fl_split.metrics import OutputExists, read_metrics
    from fl_split.report import results_table

    schema, load, run = _SPAWNED[command]()
    if args.list_keys:
        return _list_keys(schema)
    try:
        config = load(args.config, _overrides(args))
        run(config)
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


def _ddp_parts() -> tuple[Any, Any, Any]:
    from fl_split.ddp.config import DDP_SCHEMA, load_ddp_config
    from fl_split.ddp.train import run_ddp

    return DDP_SCHEMA, load_ddp_config, run_ddp


def _gossip_parts() -> tuple[Any, Any, Any]:
    from fl_split.gossip.config import GOSSIP_SCHEMA, load_gossip_config
    from fl_split.gossip.run import run_gossip

    return GOSSIP_SCHEMA, load_gossip_config, run_gossip


#: command → (schema, config loader, runner), imported when the command runs.
_SPAWNED: dict[str, Callable[[], tuple[Any, Any, Any]]] = {"ddp": _ddp_parts, "gossip": _gossip_parts}


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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME|PATH", help="a config in conf/ by name, or a YAML file")
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="extend", nargs="+", help="override config keys (dotted: optimizer.lr=0.1)"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (the config key out_dir)")


def _add_existing(p: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--overwrite``: what to do when ``--out`` already holds a run (default: refuse)."""
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fl-split`` console script."""
    parser = argparse.ArgumentParser(prog="fl-split", description="Communication-efficient split/federated learning")
    sub = parser.add_subparsers(dest="command", required=True)
    p_codecs = sub.add_parser("codecs", help="list the registered codecs and their parameters")
    p_codecs.add_argument("--json", action="store_true", help="print JSON")
    p_sl = sub.add_parser("sl", help="split learning over Flower (or in process)")
    _add_common(p_sl)
    _add_existing(p_sl)
    p_sl.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    p_fl = sub.add_parser("fl", help="federated learning with compressed updates over Flower")
    _add_common(p_fl)
    _add_existing(p_fl)
    p_fl.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    # no -h of its own: `fl-split compare --help` reaches the runner's parser
    sub.add_parser("compare", help="SL vs FL grid at measured bytes (`fl-split compare --help`)", add_help=False)
    p_gossip = sub.add_parser("gossip", help="decentralized learning: Malcom-PSGD or CHOCO-SGD over a graph")
    _add_common(p_gossip)
    _add_existing(p_gossip)
    p_gossip.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    p_ddp = sub.add_parser("ddp", help="data-parallel training with the codec hook (gloo; torchrun or local ranks)")
    _add_common(p_ddp)
    _add_existing(p_ddp)
    p_ddp.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    # no -h of its own: `fl-split bench sl --help` reaches the benchmark's parser
    p_bench = sub.add_parser("bench", help="benchmarks (`fl-split bench WHAT --help` for options)", add_help=False)
    benches = ["codecs", "sl", "sl-accuracy", "deploy", "fl", "ddp", "gossip"]
    p_bench.add_argument("what", choices=benches, help="what to benchmark")
    sub.add_parser(
        "certs", help="TLS files for a deployment (`fl-split certs --help`)", add_help=False
    )  # its own parser reads the rest
    args, rest = parser.parse_known_args(argv)
    if args.command == "certs":
        from simulations import certs

        return certs.main(rest)
    if args.command in ("codecs", "sl", "fl", "ddp", "gossip") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "codecs":
        return _codecs(args)
    if args.command == "sl":
        _log_to_stderr(("fl_split", "strategies", "simulations"))
        return _sl(args, p_sl)
    if args.command == "ddp":
        return _spawned(args, p_ddp, "ddp", "step", _ddp_line)
    if args.command == "gossip":
        return _spawned(args, p_gossip, "gossip", "round", _gossip_line)
    if args.command == "compare":
        from simulations import compare

        return compare.main(rest)
    if args.command == "fl":
        _log_to_stderr(("fl_split", "strategies", "simulations"))
        return _fl(args, p_fl)
    if args.what == "sl":
        from simulations import bench_sl

        return bench_sl.main(rest)
    if args.what == "fl":
        from simulations import bench_fl

        return bench_fl.main(rest)
    if args.what == "gossip":
        from simulations import bench_gossip

        return bench_gossip.main(rest)
    if args.what == "ddp":
        from simulations import bench_ddp

        return bench_ddp.main(rest)
    if args.what == "deploy":
        from simulations import bench_deploy

        return bench_deploy.main(rest)
    if args.what == "sl-accuracy":
        from simulations import bench_sl_accuracy

        return bench_sl_accuracy.main(rest)
    from simulations import bench_codecs

    return bench_codecs.main(rest)


if __name__ == "__main__":
    sys.exit(main())
