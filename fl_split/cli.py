"""``fl-split`` command line: ``fl-split codecs`` and ``fl-split bench codecs``.

The SL/FL/gossip/compare subcommands arrive with their issues; this module only dispatches.
"""

from __future__ import annotations

import argparse
import json
import sys


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fl-split`` console script."""
    parser = argparse.ArgumentParser(prog="fl-split", description="Communication-efficient split/federated learning")
    sub = parser.add_subparsers(dest="command", required=True)
    p_codecs = sub.add_parser("codecs", help="list the registered codecs and their parameters")
    p_codecs.add_argument("--json", action="store_true", help="print JSON")
    p_bench = sub.add_parser("bench", help="benchmarks")
    p_bench.add_argument("what", choices=["codecs"], help="what to benchmark")
    args, rest = parser.parse_known_args(argv)
    if args.command == "codecs":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _codecs(args)
    from simulations import bench_codecs

    return bench_codecs.main(rest)


if __name__ == "__main__":
    sys.exit(main())
