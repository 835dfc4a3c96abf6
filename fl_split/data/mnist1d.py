"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package (never downloaded)."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch

from fl_split.data.cache import Arrays, cached_arrays, package_version
from fl_split.data.digits import check_split

#: The version of :func:`_make`'s arrays, in the cache file's name: bump it when they change.
RECIPE = 1
#: The generated dataset's shape: 4000 training and 1000 test signals of length 40, 10 classes.
NUM_TRAIN, NUM_TEST, LENGTH, NUM_CLASSES = 4000, 1000, 40, 10


@lru_cache(maxsize=4)
def _generate(seed: int) -> Arrays:
    """The ``mnist1d`` package's dataset for ``seed``: read from the dataset cache
    (:mod:`fl_split.data.cache`) when an earlier process stored it, else generated (about 3 s)."""
    version = package_version("mnist1d")
    if version is None:
        return _make(seed)
    return cached_arrays(f"mnist1d-r{RECIPE}-{version}-seed{seed}", lambda: _make(seed), _check)


def _make(seed: int) -> Arrays:
    """Run ``mnist1d.data.make_dataset`` with ``seed``, restoring the global RNG states it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds numpy's and Python's *global* RNGs: save and restore them around it.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        dataset = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {k: np.asarray(dataset[k]) for k in ("x", "y", "x_test", "y_test")}


def _check(a: Arrays) -> None:
    """``ValueError`` unless ``a`` has the generated dataset's shapes, finite signals and labels in range."""
    for xs, ys, n in ((a["x"], a["y"], NUM_TRAIN), (a["x_test"], a["y_test"], NUM_TEST)):
        if xs.shape != (n, LENGTH) or not np.isfinite(xs).all():
            raise ValueError(f"signals are {xs.shape}, not finite ({n}, {LENGTH})")
        if ys.shape != (n,) or ys.dtype.kind not in "iu" or ys.min() < 0 or ys.max() >= NUM_CLASSES:
            raise ValueError(f"labels are {ys.dtype} {ys.shape}, not integers ({n},) in [0, {NUM_CLASSES})")


def load_mnist1d_tensors(split: str = "train", seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of MNIST-1D, generated locally (5000 samples, 80/20 split, length 40).

    Parameters
    ----------
    split:
        ``"train"`` (4000 samples) or ``"test"`` (1000 samples).
    seed:
        Generation seed (the package's default, 42, reproduces the published dataset's recipe).

    Returns
    -------
    signals, labels:
        ``float32 [N, 1, 40]`` and ``int64 [N]``.

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"test"``.
    """
    check_split(split)
    data = _generate(seed)
    xs, ys = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    x = torch.from_numpy(np.asarray(xs, dtype=np.float32)).unsqueeze(1).contiguous()
    return x, torch.from_numpy(np.asarray(ys, dtype=np.int64))
