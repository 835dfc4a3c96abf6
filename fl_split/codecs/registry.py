"""Name -> codec class registry (``register_codec`` / ``list_codecs`` / ``create_codec``)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar

from fl_split.plugins import import_plugins

if TYPE_CHECKING:
    from fl_split.codecs.base import Codec

_BY_NAME: dict[str, type[Codec]] = {}
_BY_ID: dict[int, type[Codec]] = {}

C = TypeVar("C", bound="type[Codec]")


def register_codec(cls: C) -> C:
    """Class decorator: make ``cls`` creatable by its ``name`` and decodable by its ``codec_id``."""
    name, cid = cls.name, cls.codec_id
    if name in _BY_NAME and _BY_NAME[name] is not cls:
        raise ValueError(f"codec name {name!r} is already registered by {_BY_NAME[name].__qualname__}")
    if cid in _BY_ID and _BY_ID[cid] is not cls:
        raise ValueError(f"codec id {cid} is already registered by {_BY_ID[cid].__qualname__}")
    if not 0 <= cid <= 255:
        raise ValueError(f"codec id must fit in one byte, got {cid}")
    _BY_NAME[name] = cls
    _BY_ID[cid] = cls
    return cls


def list_codecs() -> list[str]:
    """Names of all registered codecs, sorted."""
    import_plugins()
    return sorted(_BY_NAME)


def codec_parameters(name: str) -> list[str]:
    """Keyword parameters accepted by codec ``name``."""
    cls = codec_class(name)
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind is inspect.Parameter.KEYWORD_ONLY]


def codec_class(name: str) -> type[Codec]:
    """The class registered under ``name``; ``ValueError`` naming the known codecs otherwise."""
    import_plugins()
    try:
        return _BY_NAME[name]
    except KeyError:
        from fl_split.suggest import did_you_mean

        raise ValueError(
            f"unknown codec {name!r}{did_you_mean(name, list_codecs())}; registered codecs: {', '.join(list_codecs())}"
        ) from None


def codec_class_by_id(codec_id: int) -> type[Codec]:
    """The class registered under wire id ``codec_id``."""
    from fl_split.codecs.errors import CodecError

    import_plugins()
    try:
        return _BY_ID[codec_id]
    except KeyError:
        raise CodecError(f"payload names codec id {codec_id}, which no registered codec has") from None


def create_codec(name: str, **params: Any) -> Codec:
    """Create codec ``name`` with keyword ``params`` (every codec has defaults for all of them).

    Raises
    ------
    ValueError
        For an unknown codec name, an unknown parameter name, or a parameter out of range.
    """
    cls = codec_class(name)
    allowed = codec_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"codec {name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters: {', '.join(allowed)}"
        )
    return cls(**params)
