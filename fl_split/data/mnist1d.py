"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package (never downloaded)."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch

from fl_split.data.digits import check_split


@lru_cache(maxsize=4)
def _generate(seed: int) -> dict[str, np.ndarray]:
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
    return {k: dataset[k] for k in ("x", "y", "x_test", "y_test")}


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
