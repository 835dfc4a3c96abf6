"""Offline datasets and real activations for tests and benchmarks.

Nothing in this package downloads: ``digits`` ships with scikit-learn, ``mnist1d`` is generated
locally, and torchvision datasets must already be on disk. :func:`load_dataset` loads any registered
dataset as in-memory tensors and :func:`partition_indices` gives a federated client its share of it.
"""

from __future__ import annotations

from fl_split.data.digits import load_digits_tensors
from fl_split.data.feature_maps import real_feature_maps
from fl_split.data.mnist1d import load_mnist1d_tensors
from fl_split.data.partition import PARTITIONERS, label_histogram, partition_indices
from fl_split.data.registry import DatasetInfo, dataset_info, list_datasets, load_dataset, register_dataset
from fl_split.data.torchvision_folder import KNOWN_DATASETS, load_torchvision_dataset

__all__ = [
    "KNOWN_DATASETS",
    "PARTITIONERS",
    "DatasetInfo",
    "dataset_info",
    "label_histogram",
    "list_datasets",
    "load_dataset",
    "load_digits_tensors",
    "load_mnist1d_tensors",
    "load_torchvision_dataset",
    "partition_indices",
    "real_feature_maps",
    "register_dataset",
]
