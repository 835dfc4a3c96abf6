"""scikit-learn's handwritten digits (1797 images, 8×8) as upsampled, normalised tensors."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SPLITS = ("train", "test")
TEST_FRACTION = 0.2


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is ``"train"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@lru_cache(maxsize=8)
def _split_indices(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw images (N, 8, 8) float32, labels, and the stratified train/test index arrays."""
    bunch = load_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=seed, shuffle=True
    )
    return images, labels, np.sort(train_idx), np.sort(test_idx)


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
