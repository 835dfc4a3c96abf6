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
from typing import Any


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


def _ddp(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_split.config import ConfigError
    from fl_split.ddp.config import DDP_SCHEMA, load_ddp_config

    if args.list_keys:
        return _list_keys(DDP_SCHEMA)
    try:
        config = load_ddp_config(args.config, _overrides(args))
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    from fl_split.ddp.train import run_ddp
    from fl_split.metrics import OutputExists, read_metrics

    try:
        run_ddp(config)
    except (ConfigError, OutputExists) as err:  # a used --out, a checkpoint that cannot be resumed: before any rank
        parser.error(str(err))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes the metrics
        return 0
    rows = read_metrics(f"{config['out_dir']}/metrics.jsonl")
    last = rows[-1]
    ranks = os.environ.get("WORLD_SIZE", config["world_size"])
    sent = (
        f"{last['cum_uplink_bytes'] / 1e6:.3f} MB of payloads sent by {ranks} ranks"
        if last["cum_uplink_bytes"] is not None
        else f"{ranks} ranks, DDP's own all-reduce (hook=false: no payload bytes to measure)"
    )
    print(f"step {last['steps']}: test accuracy {last['test_accuracy']:.4f}, {sent}; wrote {config['out_dir']}")
    return 0


def _gossip(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_split.config import ConfigError
    from fl_split.gossip.config import GOSSIP_SCHEMA, load_gossip_config

    if args.list_keys:
        return _list_keys(GOSSIP_SCHEMA)
    try:
        config = load_gossip_config(args.config, _overrides(args))
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    from fl_split.gossip.run import run_gossip
    from fl_split.metrics import OutputExists, read_metrics

    try:
        summary = run_gossip(config)
    except (ConfigError, OutputExists) as err:  # a used --out, a checkpoint that cannot be resumed: before training
        parser.error(str(err))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes the metrics
        return 0
    last = read_metrics(f"{config['out_dir']}/metrics.jsonl")[-1]
    print(
        f"round {last['round']}: test accuracy of the average model {last['test_accuracy']:.4f}, "
        f"{last['cum_uplink_bytes'] / 1e6:.3f} MB over all edges, consensus distance "
        f"{last['consensus_distance']:.4g}, sparsity {last['model_sparsity']:.3f} ({summary['codec']}); "
        f"wrote {config['out_dir']}"
    )
    return 0


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
        return _ddp(args, p_ddp)
    if args.command == "gossip":
        return _gossip(args, p_gossip)
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
