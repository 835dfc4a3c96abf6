"""The cells of a comparison grid and what is read back from a finished cell.

A grid config (``conf/compare/*.yaml``) names a ``base`` (keys shared by every cell: data, split,
seed, clients), an ``sl`` block (``codecs`` × ``cuts`` × ``modes``, plus any split-learning keys),
an ``fl`` block (``codecs`` × ``error_feedback``, plus any FL keys) and ``seeds``: every cell runs
once per seed (the ``seed`` key: data split, partition, initial model, batch order). Each run is
one fully resolved run config; its key is a hash of the keys that differ from their defaults (less
the output keys), so a rerun finds the runs already done, also after a release adds a key.

``sl.variants`` adds split-learning cells beyond the codec grid: each entry is a set of keys (say
``{downlink: mask}`` or ``{gradients: local}``) on top of the block, run with its own ``cuts`` and
``modes`` (the block's by default) and the block's first codec unless it names an ``uplink``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from fl_split.compare.plots import downlink_words
from fl_split.config import ConfigError, defaults, flatten, flatten_filled, plain
from fl_split.fl.config import FLConfig
from fl_split.link import LinkProfile, predict_time_to_round
from fl_split.sl.config import SLConfig

#: Keys of a cell's config that do not change its result.
_NOT_KEYED = ("out_dir", "progress", "existing_out", "checkpoint_every", "flower.ray_address")


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes
    ----------
    scheme:
        ``sl`` or ``fl``.
    label:
        Human-readable: ``"sl ms:keep=0.01,bits=2 shallow splitfed2"``.
    config:
        The resolved run config (``out_dir`` set by the runner); its ``seed`` is the run's seed.
        The runs of one cell share ``label`` and differ only in ``seed``.
    """

    scheme: str
    label: str
    config: SLConfig | FLConfig

    @property
    def seed(self) -> int:
        """The run's seed (``config.seed``)."""
        return int(self.config.seed)

    @property
    def key(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of the config's keys that differ from their
        defaults (output keys left out): a key added with a default does not change any cell's key."""
        default = flatten(defaults(type(self.config).schema()))
        keyed = {k: v for k, v in _result_keys(self.config).items() if k not in default or default[k] != v}
        text = json.dumps({"scheme": self.scheme, "config": keyed}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_config_differs(cell: Cell, stored: Mapping[str, Any]) -> list[str]:
    """The keys in which a stored run's config (its ``summary.json``'s ``config``) differs from ``cell``'s,
    output keys left out; a key the stored config lacks (added since) counts at its default."""
    mine = _result_keys(cell.config)
    theirs = flatten_filled(stored, type(cell.config).schema())
    return sorted(k for k in mine if theirs.get(k) != mine[k])


def _result_keys(config: SLConfig | FLConfig) -> dict[str, Any]:
    """The config as dotted keys, less those that do not change a run's result (:data:`_NOT_KEYED`)."""
    return {
        k: v for k, v in flatten(plain(config)).items() if k.split(".")[0] not in _NOT_KEYED and k not in _NOT_KEYED
    }


def stored_cell_key(stored: Mapping[str, Any]) -> str | None:
    """The key a stored run's config has now (:attr:`Cell.key`), or ``None`` if it no longer validates."""
    scheme, cls = ("fl", FLConfig) if "error_feedback" in stored else ("sl", SLConfig)
    try:
        config = cls.from_dict({k: v for k, v in stored.items() if k not in _NOT_KEYED})
    except (ConfigError, TypeError, ValueError):
        return None
    return Cell(scheme, "", config).key


def _list(block: Mapping[str, Any], key: str, default: Sequence[Any]) -> list[Any]:
    value = block.get(key, default)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"compare: {key} must be a non-empty list, got {value!r}")
    return value


def _seeds(grid: Mapping[str, Any]) -> list[int | None]:
    """The grid's ``seeds`` (distinct ints), or ``[None]``: one run with the configs' own seed."""
    if "seeds" not in grid:
        return [None]
    seeds = _list(grid, "seeds", [])
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds) or len(set(seeds)) < len(
        seeds
    ):
        raise ConfigError(f"compare: seeds must be distinct non-negative integers, got {seeds!r}")
    return list(seeds)


def expand_grid(grid: Mapping[str, Any], overrides: Sequence[str] = ()) -> list[Cell]:
    """Every run of a grid config, resolved and validated (SL first, then FL; each cell's seeds together).

    Parameters
    ----------
    grid:
        The grid config (``base``, ``sl``, ``fl``...).
    overrides:
        ``KEY=VALUE`` strings (``fl-split compare --set``) applied last to every cell whose command
        has the key (``cut`` only to SL cells, ``rounds`` to both, over the blocks' own values).

    Raises
    ------
    ConfigError
        An unknown top-level key, a list that is empty, an override no command has, or a cell whose
        config is invalid (the message names the cell).
    """
    from fl_split.config import flat_fields, parse_override
    from fl_split.fl.config import load_fl_config
    from fl_split.sl.config import load_sl_config
    from fl_split.suggest import did_you_mean

    over = dict(parse_override(o) for o in overrides)
    keys = {"sl": set(flat_fields(SLConfig.schema())), "fl": set(flat_fields(FLConfig.schema()))}
    for k in over:
        if k not in keys["sl"] | keys["fl"]:
            raise ConfigError(
                f"compare --set: no cell has a key {k!r}{did_you_mean(k, keys['sl'] | keys['fl'])} "
                "(`fl-split sl --list-keys` and `fl-split fl --list-keys` list them)"
            )
    sl_over = {k: v for k, v in over.items() if k in keys["sl"]}
    fl_over = {k: v for k, v in over.items() if k in keys["fl"]}
    allowed = {"base", "sl", "fl", "seeds", "target_accuracy", "title", "feature_maps"}
    unknown = set(grid) - allowed
    if unknown:
        raise ConfigError(f"compare: unknown keys {sorted(unknown)}; a grid has {', '.join(sorted(allowed))}")
    base = dict(grid.get("base") or {})
    seeds = _seeds(grid)
    if "seeds" in grid and "seed" in base:
        raise ConfigError("compare: give seeds or base.seed, not both")
    cells = []
    sl = dict(grid.get("sl") or {})
    if sl:
        codecs, cuts, modes = _list(sl, "codecs", []), _list(sl, "cuts", ["shallow"]), _list(sl, "modes", ["splitfed2"])
        extra = {k: v for k, v in sl.items() if k not in ("codecs", "cuts", "modes", "variants")}
        runs = [({"uplink": codec}, cut, mode) for codec, cut, mode in product(codecs, cuts, modes)]
        for variant in _variants(sl):
            own = {"uplink": codecs[0], **{k: v for k, v in variant.items() if k not in ("cuts", "modes")}}
            runs += [(own, cut, mode) for cut, mode in product(variant.get("cuts", cuts), variant.get("modes", modes))]
        for (own, cut, mode), seed in product(runs, seeds):
            values = {**base, **extra, **own, **_seed(seed), "cut": cut, "mode": mode, "progress": False}
            values |= sl_over
            try:
                config = load_sl_config(values=values)
            except ConfigError as exc:
                raise ConfigError(f"compare: cell 'sl {_variant_label(own, own)} {cut} {mode}': {exc}") from exc
            cells.append(Cell("sl", f"sl {_variant_label(own, config)} {config.cut} {config.mode}", config))
    fl = dict(grid.get("fl") or {})
    if fl:
        codecs, efs = _list(fl, "codecs", []), _list(fl, "error_feedback", [True])
        extra = {k: v for k, v in fl.items() if k not in ("codecs", "error_feedback")}
        for codec, ef, seed in product(codecs, efs, seeds):
            label = f"fl {codec}{' +EF' if ef else ''}"
            values = {**base, **_seed(seed), **extra, "uplink": codec, "error_feedback": ef, "progress": False}
            values |= fl_over
            try:
                cells.append(Cell("fl", label, load_fl_config(values=values)))
            except ConfigError as exc:
                raise ConfigError(f"compare: cell {label!r}: {exc}") from exc
    if not cells:
        raise ConfigError("compare: the grid has no cells (give an sl or an fl block with codecs)")
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.key in seen:
            raise ConfigError(
                f"compare: cells {seen[cell.key]!r} and {cell.label!r} (seed {cell.seed}) are the same run; "
                "drop one (a variant that repeats a grid cell, or two equal variants)"
            )
        seen[cell.key] = cell.label
    return cells


def _variants(sl: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``sl.variants``: a list of key mappings (each may hold its own ``cuts`` and ``modes`` lists)."""
    variants = sl.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) and v for v in variants):
        raise ConfigError(f"compare: sl.variants must be a list of non-empty key mappings, got {variants!r}")
    for v in variants:
        for name in ("cuts", "modes"):
            if name in v:
                _list(v, name, [])
        own = sorted(set(v) & {"cut", "mode", "seed"})
        if own:
            raise ConfigError(
                f"compare: sl.variants entry {dict(v)!r} sets {own}: a variant takes lists `cuts` and `modes`, and "
                "the grid's `seeds`"
            )
    return [dict(v) for v in variants]


def _downlink_label(config: Mapping[str, Any]) -> str:
    """What goes back to a client: the downlink codec, or ``local`` (every h-th) for local-loss SL."""
    if config.get("gradients") == "local":
        every = int(config.get("send_every", 1))
        return "local" + (f" every {every}" if every != 1 else "")
    return str(config.get("downlink", "none"))


def _variant_label(own: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """A split-learning cell's codec label, from its resolved ``config``: the uplink, then what goes back
    when it is not the dense gradient, then the variant's other keys (``own``)."""
    back = downlink_words(_downlink_label(config))
    label = str(config["uplink"]) + (f" {back}" if back else "")
    rest = {k: v for k, v in own.items() if k not in ("uplink", "downlink", "gradients", "send_every")}
    return label + "".join(f" {k}={v}" for k, v in sorted(rest.items()))


def _seed(seed: int | None) -> dict[str, int]:
    return {} if seed is None else {"seed": seed}


def cell_result(
    cell: Cell,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    target: float,
    link: LinkProfile | None = None,
) -> dict:
    """One line of ``summary.csv`` from a finished cell's ``summary.json`` and ``metrics.jsonl`` rows.

    ``s_to_target`` is the run's wall clock at the end of the first round at or above ``target`` (as
    measured here: split learning in process, FL over Flower's simulation); with a ``link``,
    ``s_to_target_link`` is the link model's time on it (:mod:`fl_split.link`): every client on its own
    link of that profile, in parallel (``sequential`` mode: in turn).
    """
    hit = next((r for r in rows if r["test_accuracy"] >= target), None)
    last = rows[-1] if rows else {}
    on_link = None
    if hit is not None and link is not None:
        clients = max(1, round(cell.config.fraction * cell.config.clients))
        sequential = cell.scheme == "sl" and cell.config.get("mode") == "sequential"
        on_link = round(predict_time_to_round(rows, link, int(hit["round"]), clients, sequential=sequential), 2)
    return {
        "cell": cell.label,
        "seed": cell.seed,
        "scheme": cell.scheme,
        "codec": cell.config.uplink,
        "downlink": _downlink_label(cell.config),
        "cut": cell.config.get("cut", "") if cell.scheme == "sl" else "",
        "mode": cell.config.get("mode", "") if cell.scheme == "sl" else "fedavg",
        "error_feedback": cell.config.get("error_feedback", "") if cell.scheme == "fl" else "",
        "status": summary.get("status", "completed" if rows else "failed"),
        "final_accuracy": summary.get("final_test_accuracy"),
        "best_accuracy": summary.get("best_test_accuracy"),
        "mb_up": round(last.get("cum_uplink_bytes", 0) / 1e6, 3),
        "mb_down": round(last.get("cum_downlink_bytes", 0) / 1e6, 3),
        "mb_to_target": None if hit is None else round((hit["cum_uplink_bytes"] + hit["cum_downlink_bytes"]) / 1e6, 3),
        "mb_up_to_target": None if hit is None else round(hit["cum_uplink_bytes"] / 1e6, 3),
        "mb_down_to_target": None if hit is None else round(hit["cum_downlink_bytes"] / 1e6, 3),
        "wall_s": summary.get("wall_s"),
        "s_to_target": None if hit is None else round(float(hit["wall_s"]), 2),
        "link": "" if link is None else link.name,
        "s_to_target_link": on_link,
        "uplink_bits_per_element": _uplink_bits_per_element(cell, rows),
        "test_images": _test_images(cell.config),
        "key": cell.key,
    }


def _uplink_bits_per_element(cell: Cell, rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Measured uplink bits per element the codec compressed, over the whole run.

    SL: activation payload bytes × 8 / (samples × elements of one sample's cut-layer activation).
    FL: update payload bytes × 8 / (aggregated replies × floating-point elements of the model).
    ``None`` for a run with no rows or a model that cannot be built here.
    """
    import math

    if not rows:
        return None
    try:
        if cell.scheme == "sl":
            from fl_split.sl.setup import check_model_fits_data

            elements = sum(r["samples"] for r in rows) * math.prod(check_model_fits_data(cell.config))
            sent = sum(r["uplink_activation_bytes"] for r in rows)
        else:
            from fl_split.training import build_model

            state = build_model(cell.config, seed=0).state_dict()
            params = sum(t.numel() for t in state.values() if t.is_floating_point())
            elements = sum(r["aggregated"] for r in rows) * params
            sent = sum(r["uplink_bytes"] for r in rows)
    except (KeyError, ValueError, FileNotFoundError, OSError):
        return None
    return round(8 * sent / elements, 3) if elements else None


def _test_images(config: SLConfig | FLConfig) -> int | None:
    """How many images the run's test split holds (one image is ``1 / n`` of accuracy); ``None`` if
    its dataset cannot be loaded here."""
    from fl_split.training import load_split

    try:
        return len(load_split(config, "test")[1])
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return None
