"""The random state of a codec, for checkpoints: a resumed run draws what an uninterrupted one would.

Codecs that draw at random (dithering, random-k, BIRD, PowerSGD's initial factors, ...) keep seeded
``torch.Generator`` s as attributes; these functions find every one of them (also inside a codec a
codec wraps) by walking the attributes, so a new codec needs no code here.
"""

from __future__ import annotations

from typing import Any

import torch

from fl_split.codecs.quantizers import SeededGenerators


def _generators(obj: Any, path: str, seen: set[int]) -> list[tuple[str, Any]]:
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return []
    seen.add(id(obj))
    found: list[tuple[str, Any]] = []
    for name, value in sorted(vars(obj).items()):
        where = f"{path}.{name}" if path else name
        if isinstance(value, torch.Generator | SeededGenerators):
            found.append((where, value))
        elif type(value).__module__.startswith("fl_split.codecs"):
            found += _generators(value, where, seen)
    return found


def codec_rng_state(codec: Any) -> dict[str, Any]:
    """``{attribute path: state}`` of every random generator ``codec`` holds (``{}`` if it draws none)."""
    out: dict[str, Any] = {}
    for where, g in _generators(codec, "", set()):
        out[where] = g.get_state()
    return out


def load_codec_rng_state(codec: Any, state: dict[str, Any]) -> None:
    """Restore :func:`codec_rng_state` output into a codec built from the same spec.

    Raises
    ------
    ValueError
        If ``state`` names other generators than ``codec`` holds (a checkpoint of another codec).
    """
    gens = dict(_generators(codec, "", set()))
    if set(gens) != set(state):
        raise ValueError(
            f"the checkpoint's codec random state holds {sorted(state)}, this codec {sorted(gens)}: "
            "resume with the codec the run was started with"
        )
    for where, g in gens.items():
        g.set_state(state[where])
