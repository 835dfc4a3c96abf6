"""scikit-learn's handwritten digits (1797 images, 8×8) as upsampled, normalised tensors."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from fl_split.data.cache import Arrays, cached_arrays, package_version

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
#: The version of :func:`_from_sklearn`'s arrays, in the cache file's name: bump it when they change.
RECIPE = 1
#: The dataset's size: 1797 images of 10 classes.
NUM_IMAGES, NUM_CLASSES = 1797, 10


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is ``"train"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@lru_cache(maxsize=8)
def _split_indices(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw images (N, 8, 8) float32, labels, and the stratified train/test index arrays: scikit-learn's,
    read from the dataset cache (:mod:`fl_split.data.cache`) when an earlier process stored them."""
    version = package_version("scikit-learn")
    name = f"digits-r{RECIPE}-sklearn{version}-seed{seed}"
    a = cached_arrays(name, lambda: _from_sklearn(seed), _check) if version else _from_sklearn(seed)
    return a["images"], a["labels"], a["train_idx"], a["test_idx"]


def _from_sklearn(seed: int) -> Arrays:
    from sklearn.datasets import load_digits  # SciPy and pandas come with it: 2 s, only on a cache miss
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=seed, shuffle=True
    )
    return {"images": images, "labels": labels, "train_idx": np.sort(train_idx), "test_idx": np.sort(test_idx)}


def _check(a: Arrays) -> None:
    """``ValueError`` unless ``a`` is a digits split as :func:`_from_sklearn` makes one."""
    images, labels, train, test = a["images"], a["labels"], a["train_idx"], a["test_idx"]
    if images.shape != (NUM_IMAGES, 8, 8) or images.dtype != np.float32 or not np.isfinite(images).all():
        raise ValueError(f"images are {images.dtype} {images.shape}, not finite float32 ({NUM_IMAGES}, 8, 8)")
    if labels.shape != (NUM_IMAGES,) or labels.dtype != np.int64 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels are {labels.dtype} {labels.shape}, not int64 ({NUM_IMAGES},) in [0, {NUM_CLASSES})")
    both = np.concatenate([train, test])
    if train.dtype != np.int64 or test.dtype != np.int64 or not np.array_equal(np.sort(both), np.arange(NUM_IMAGES)):
        raise ValueError("the train and test indices do not split the images")
    if len(test) != math.ceil(TEST_FRACTION * NUM_IMAGES) or np.any(np.diff(train) <= 0) or np.any(np.diff(test) <= 0):
        raise ValueError(f"the split is not sorted indices with {len(test)} test images")


def _upsample(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images).unsqueeze(1)
    if size == x.shape[-1]:
        return x.clone()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_digits_tensors(split: str = "train", upscale: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of the digits dataset as tensors.

    The 8×8 images are bilinearly upsampled to ``upscale × upscale`` and normalised with the mean
    and standard deviation of the *training* split (one scalar each), so the training images have
    mean 0 and standard deviation 1.

    Parameters
    ----------
    split:
        ``"train"`` (80 %, 1437 images) or ``"test"`` (20 %, 360 images). The split is stratified by
        label and depends only on ``seed``.
    upscale:
        Output side length in pixels (>= 1). Default 16.
    seed:
        Seed of the train/test split. Default 0.

    Returns
    -------
    images, labels:
        ``float32 [N, 1, upscale, upscale]`` and ``int64 [N]``.

    Raises
    ------
    ValueError
        If ``split`` or ``upscale`` is invalid.
    """
    check_split(split)
    if not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive int, got {upscale!r}")
    images, labels, train_idx, test_idx = _split_indices(seed)
    train = _upsample(images[train_idx], upscale)
    mean, std = train.mean(), train.std()
    idx = train_idx if split == "train" else test_idx
    x = train if split == "train" else _upsample(images[idx], upscale)
    x = ((x - mean) / std).to(torch.float32).contiguous()
    return x, torch.from_numpy(labels[idx]).clone()
