"""Errors every command shares."""

from __future__ import annotations


class TrainingFailed(RuntimeError):
    """The run cannot go on: the weights went non-finite, a whole round had no valid client, no
    update was ever aggregated, or too few nodes connected. ``summary.json`` says ``status: failed``."""
