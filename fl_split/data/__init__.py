"""Offline datasets and real activations for tests and benchmarks.

Nothing in this package downloads: ``digits`` ships with scikit-learn, ``mnist1d`` is generated
locally, and torchvision datasets must already be on disk.
"""

from __future__ import annotations

from fl_split.data.digits import load_digits_tensors
from fl_split.data.feature_maps import real_feature_maps
from fl_split.data.mnist1d import load_mnist1d_tensors
from fl_split.data.torchvision_folder import KNOWN_DATASETS, load_torchvision_dataset

__all__ = [
    "KNOWN_DATASETS",
    "load_digits_tensors",
    "load_mnist1d_tensors",
    "load_torchvision_dataset",
    "real_feature_maps",
]
