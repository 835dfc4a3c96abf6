"""Checks of what a client sends back, shared by split learning and FL.

A client runs on a device the server does not control, so every field of its reply is checked
before anything of it is used: a count must be a non-negative integer, a time a finite
non-negative number, a tensor finite. A check that fails raises :class:`BadReply`, whose
``reason`` is one of :data:`REASONS`; the server then drops that client for the round (it is
never merged) and counts the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fl_split.codecs.errors import CodecError

#: Why a client left a round (the keys of ``failure_reasons`` in metrics rows and ``summary.json``).
REASONS = (
    "raised",  #: its app raised, or the runtime reported an error for its message
    "timed_out",  #: no reply within the transport's limit
    "round_deadline",  #: the round's deadline (``round_timeout_s``) passed first
    "malformed",  #: a field is missing, of the wrong type, or a payload does not decode
    "non_finite",  #: NaN/Inf in activations, weights, momentum, a number, or the loss it caused
    "out_of_range",  #: a count or size outside what the protocol allows
)


class BadReply(CodecError):
    """A client's reply fails a check; ``reason`` is one of :data:`REASONS`.

    A :class:`~fl_split.codecs.CodecError` (so a :class:`ValueError`): callers that drop a payload
    that does not decode drop this one too.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:  # pragma: no cover - a programming error
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def field(fields: Mapping[str, Any], key: str) -> Any:
    """``fields[key]``, or ``BadReply('malformed')`` naming the missing field."""
    if key not in fields:
        raise BadReply("malformed", f"the reply has no {key!r} field")
    return fields[key]


def count(value: Any, what: str, *, low: int = 0, high: int | None = None) -> int:
    """An integer count in ``[low, high]`` (``bool`` and floats are refused, even ``2.0``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BadReply("non_finite", f"{what} is {value}, not a count")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadReply("malformed", f"{what} must be an integer, got {type(value).__name__} {value!r:.40}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise BadReply("out_of_range", f"{what} is {value}, outside {bound}")
    return value


def seconds(value: Any, what: str) -> float:
    """A duration: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReply("malformed", f"{what} must be a number of seconds, got {type(value).__name__} {value!r:.40}")
    if not math.isfinite(value):
        raise BadReply("non_finite", f"{what} is {value}")
    if value < 0:
        raise BadReply("out_of_range", f"{what} is {value} s, below 0")
    return float(value)


def number(value: Any, what: str) -> float:
    """A finite real number (a loss, a metric)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReply("malformed", f"{what} must be a number, got {type(value).__name__} {value!r:.40}")
    if not math.isfinite(value):
        raise BadReply("non_finite", f"{what} is {value}")
    return float(value)


def payloads(value: Any, what: str, *, low: int = 0, high: int | None = None) -> list[bytes]:
    """A list of ``bytes`` payloads, ``low <= len <= high``."""
    if not isinstance(value, list | tuple) or not all(isinstance(p, bytes | bytearray) for p in value):
        raise BadReply("malformed", f"{what} must be a list of byte strings, got {type(value).__name__}")
    count(len(value), f"the number of {what}", low=low, high=high)
    return [bytes(p) for p in value]


def finite(tensors: Iterable[torch.Tensor | None], what: str) -> None:
    """``BadReply('non_finite')`` unless every (present, floating-point) tensor is finite."""
    for i, t in enumerate(tensors):
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise BadReply("non_finite", f"{what}: tensor {i} holds {bad} NaN/Inf value(s)")


def bounded_change(delta: Iterable[torch.Tensor], reference: Iterable[torch.Tensor], bound: float, what: str) -> float:
    """The relative size ``‖delta‖ / (‖reference‖ + 1)`` of a client's change; ``BadReply`` above ``bound``.

    ``delta`` is the client's change (its weights minus those it started from, or its FL update),
    ``reference`` the model it started from; only floating-point tensors count, summed in float64
    (a change of ``1e20`` is measured, not overflowed). The ``+ 1`` lets a model whose weights are
    near zero still move. A finite but huge change would be merged and make every later round
    diverge; honest clients stay far below the default bound (see ``docs/reliability.md``).
    Above ``bound`` it raises ``BadReply('out_of_range')``; ``bound = 0`` turns the check
    off (the size is still returned).
    """
    change, base = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for d, r in zip(delta, reference, strict=True):
        if r.is_floating_point():
            change += d.double().square().sum()
            base += r.double().square().sum()
    size = float(change.sqrt() / (base.sqrt() + 1.0))
    if bound and not size <= bound:  # `not <=`: a NaN size is refused too
        raise BadReply(
            "out_of_range",
            f"{what} changed by {size:.3g} times the model's norm + 1, above max_update_norm = {bound:g} "
            "(raise it if honest clients hit it; 0 turns the check off)",
        )
    return size


def reason_of(exc: BaseException) -> str:
    """The :data:`REASONS` entry for an exception met while reading a reply."""
    if isinstance(exc, BadReply):
        return exc.reason
    if isinstance(exc, OverflowError):
        return "out_of_range"
    return "malformed"
