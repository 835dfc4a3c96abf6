"""Exceptions raised by the codec library."""

from __future__ import annotations


class CodecError(ValueError):
    """A payload cannot be decoded: truncated, corrupted, wrong magic/version/codec, or inconsistent.

    Subclasses :class:`ValueError` so callers that treat any bad input uniformly can catch either.
    """
