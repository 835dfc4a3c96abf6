"""Small models used by tests, benchmarks and examples."""

from __future__ import annotations

from fl_split.models.digits_cnn import DigitsCNN, build_digits_cnn, digits_layers, valid_cuts

__all__ = ["DigitsCNN", "build_digits_cnn", "digits_layers", "valid_cuts"]
