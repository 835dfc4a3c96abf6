"""Splittable models: the model registry (``create_split_model``) and the small DigitsCNN.

Importing this package registers the built-in models: ``digits_cnn``, ``mnist1d_cnn``, ``vgg19``,
``resnet18`` and ``resnet34``.
"""

from __future__ import annotations

from fl_split.models import mnist1d_cnn, resnet, vgg  # noqa: F401  (register the models)
from fl_split.models.digits_cnn import DigitsCNN, build_digits_cnn, digits_layers, valid_cuts
from fl_split.models.registry import create_split_model, list_models, model_cuts, num_layers, register_model

__all__ = [
    "DigitsCNN",
    "build_digits_cnn",
    "create_split_model",
    "digits_layers",
    "list_models",
    "model_cuts",
    "num_layers",
    "register_model",
    "valid_cuts",
]
