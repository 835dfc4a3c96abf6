"""Codec spec strings: ``NAME`` or ``NAME:key=value,key=value`` (one parser for configs and the CLI).

>>> parse_codec_spec("ms:keep=0.01,bits=2")
('ms', {'keep': 0.01, 'bits': 2})
>>> codec_from_spec("topk:keep=0.04125")
TopKCodec(keep=0.04125, nonfinite='raise')
"""

from __future__ import annotations

from typing import Any

from fl_split.codecs.base import Codec
from fl_split.codecs.registry import codec_parameters, create_codec, list_codecs


def _parse_value(text: str) -> Any:
    """``"2"`` → 2, ``"0.01"`` → 0.01, ``"true"``/``"false"`` → bool, ``"none"`` → None, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_codec_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a codec spec into ``(name, params)`` and check both against the registry.

    Parameters
    ----------
    spec:
        ``"NAME"`` or ``"NAME:key=value,key=value"``. Values are parsed as int, float, bool
        (``true``/``false``), ``none``, or left as strings.

    Raises
    ------
    ValueError
        For an empty or malformed spec, an unknown codec (the message lists the registered ones),
        an unknown parameter (the message lists the codec's parameters) or a repeated key.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"a codec spec is a string 'NAME' or 'NAME:key=value,...', got {spec!r}; codecs: {', '.join(list_codecs())}"
        )
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in list_codecs():
        from fl_split.suggest import did_you_mean

        raise ValueError(
            f"unknown codec {name!r} in spec {spec!r}{did_you_mean(name, list_codecs())}; "
            f"registered codecs: {', '.join(list_codecs())}"
        )
    params: dict[str, Any] = {}
    allowed = codec_parameters(name)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ValueError(f"codec spec {spec!r}: expected key=value, got {item!r}")
        if key not in allowed:
            raise ValueError(
                f"codec {name!r} has no parameter {key!r} (spec {spec!r}); its parameters: {', '.join(allowed)}"
            )
        if key in params:
            raise ValueError(f"codec spec {spec!r} sets {key!r} twice")
        params[key] = _parse_value(value.strip())
    return name, params


def codec_from_spec(spec: str) -> Codec:
    """Create the codec a spec string describes; parameter errors come from the codec itself."""
    name, params = parse_codec_spec(spec)
    try:
        return create_codec(name, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"codec spec {spec!r}: {exc}") from exc


def seeded_codec_from_spec(spec: str, seed: int, index: int) -> Codec:
    """The codec of participant ``index`` (a node, a rank) in a run seeded with ``seed``.

    A codec that draws at random and whose spec sets no ``seed`` gets ``seed * 1000003 + index``
    (mod 2**62), so every participant draws differently and a rerun draws the same; a spec that
    sets a seed keeps it.
    """
    name, params = parse_codec_spec(spec)
    if "seed" in codec_parameters(name) and "seed" not in params:
        spec = f"{spec}{',' if ':' in spec else ':'}seed={(seed * 1_000_003 + index) % 2**62}"
    return codec_from_spec(spec)
