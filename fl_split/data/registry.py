"""A registry of the offline datasets: their shapes and one in-memory ``(inputs, labels)`` loader.

Every dataset comes back fully in memory as ``float32 [N, *input_shape]`` inputs and ``int64 [N]``
labels, which is what split-learning clients partition (see :mod:`fl_split.data.partition`) and
batch from. Nothing here downloads: ``digits`` ships with scikit-learn, ``mnist1d`` is generated
locally and the torchvision datasets must already be in ``data_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fl_split.data.digits import check_split, load_digits_tensors
from fl_split.data.mnist1d import load_mnist1d_tensors
from fl_split.data.torchvision_folder import KNOWN_DATASETS, load_torchvision_dataset
from fl_split.plugins import import_plugins


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a registered dataset.

    Attributes
    ----------
    name:
        Registry name (as listed by :func:`list_datasets`).
    num_classes:
        Number of label classes; labels are ``0 .. num_classes - 1``.
    input_shape:
        Shape of one sample (channels first), e.g. ``(3, 32, 32)``.
    on_disk:
        Read from a torchvision folder (``data_dir``); the others are made or shipped offline.
    default_model:
        The model ``model: auto`` picks for it (``None``: the built-in choice).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    on_disk: bool = False
    default_model: str | None = None


#: ``loader(split, seed) -> (inputs, labels)`` of a dataset registered with :func:`register_dataset`.
Loader = Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]


_INFOS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", 10, (1, 16, 16)),
        DatasetInfo("mnist1d", 10, (1, 40)),
        DatasetInfo("cifar10", 10, (3, 32, 32), on_disk=True),
        DatasetInfo("cifar100", 100, (3, 32, 32), on_disk=True),
        DatasetInfo("mnist", 10, (1, 28, 28), on_disk=True),
        DatasetInfo("fashion_mnist", 10, (1, 28, 28), on_disk=True),
        DatasetInfo("synthetic_cifar10", 10, (3, 32, 32)),
    )
}

#: Loaders of the datasets registered with :func:`register_dataset` (users' datasets).
_LOADERS: dict[str, Loader] = {}


def register_dataset(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], default_model: str | None = None
) -> Callable[[Loader], Loader]:
    """Decorator that registers a dataset loader under ``name`` (a user's dataset; ``--import`` its module).

    The loader is called as ``loader(split, seed)`` with ``split`` ``"train"`` or ``"test"`` and must
    return the whole split in memory: ``float32 [N, *input_shape]`` inputs and ``int64 [N]`` labels in
    ``0 .. num_classes - 1``. Results are cached like the built-in datasets' (do not modify them).

    Parameters
    ----------
    name:
        Registry name; must not be taken.
    num_classes, input_shape:
        As :class:`DatasetInfo` (channels first).
    default_model:
        The model ``model: auto`` picks (default: the built-in choice, ``resnet18``).

    Raises
    ------
    ValueError
        If ``name`` is taken or the shape or class count is not positive.
    """
    if name in _INFOS or name in _ALIASES:
        raise ValueError(f"dataset {name!r} is already registered; pick another name")
    if num_classes < 2 or not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(
            f"dataset {name!r}: num_classes must be >= 2 and input_shape positive, got {num_classes} and {input_shape}"
        )

    def decorator(loader: Loader) -> Loader:
        _INFOS[name] = DatasetInfo(name, int(num_classes), tuple(int(d) for d in input_shape), False, default_model)
        _LOADERS[name] = loader
        return loader

    return decorator


#: Registry name -> key of :data:`fl_split.data.torchvision_folder.KNOWN_DATASETS`.
_TORCHVISION_KEYS: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "mnist": "mnist",
    "fashion_mnist": "fashion-mnist",
}

#: Accepted alternative spellings -> registry name (the torchvision loader's own key).
_ALIASES: dict[str, str] = {"fashion-mnist": "fashion_mnist"}

#: Per-channel mean and standard deviation of the training split's pixels in [0, 1].
_CHANNEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

#: How many loaded ``(name, split, data_dir, seed)`` results are kept in memory (CIFAR train is ~600 MB).
CACHE_SIZE = 4


def list_datasets() -> list[str]:
    """Names of the registered datasets, in a fixed order.

    Returns
    -------
    list[str]
        ``["digits", "mnist1d", "cifar10", "cifar100", "mnist", "fashion_mnist"]``.
    """
    import_plugins()
    return list(_INFOS)


def _canonical(name: str) -> str:
    import_plugins()
    name = _ALIASES.get(name, name)
    if name not in _INFOS:
        from fl_split.suggest import did_you_mean

        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, _INFOS)}; choose one of: {', '.join(_INFOS)}")
    return name


def dataset_info(name: str) -> DatasetInfo:
    """Number of classes and per-sample shape of a registered dataset.

    Parameters
    ----------
    name:
        One of :func:`list_datasets` (``"fashion-mnist"`` is accepted for ``"fashion_mnist"``).

    Returns
    -------
    DatasetInfo
        Its ``name`` is the registry name.

    Raises
    ------
    ValueError
        If ``name`` is unknown; the message lists the choices.
    """
    return _INFOS[_canonical(name)]


def load_dataset(
    name: str, split: str, *, data_dir: str | Path | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a registered dataset fully into memory.

    * ``digits``: :func:`~fl_split.data.digits.load_digits_tensors` (16×16, standardised with the
      training split's scalar mean/std); ``seed`` selects its stratified train/test split.
    * ``mnist1d``: :func:`~fl_split.data.mnist1d.load_mnist1d_tensors` with its own generation
      seed (42); ``seed`` is ignored.
    * ``synthetic_cifar10``: CIFAR-shaped standard-normal noise with random labels (5000 train,
      1000 test), generated from ``seed``: for throughput benchmarks, which do not depend on the
      pixels. Nothing can be learned from it.
    * ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``: read from ``data_dir`` by
      :func:`~fl_split.data.torchvision_folder.load_torchvision_dataset` (never downloaded); pixels
      are scaled to [0, 1] and then standardised per channel with the usual fixed training-set
      mean/std constants; ``seed`` is ignored.

    Results are kept in a small in-process LRU cache (:data:`CACHE_SIZE` entries keyed by
    ``(name, split, data_dir, seed)``, ignoring the arguments a dataset does not use), so repeated
    calls return **the same tensor objects**: callers must not modify them in place (``.clone()``
    first if needed).

    Parameters
    ----------
    name:
        One of :func:`list_datasets` (``"fashion-mnist"`` is accepted for ``"fashion_mnist"``).
    split:
        ``"train"`` or ``"test"``.
    data_dir:
        Folder that holds the torchvision dataset folders (e.g. ``cifar-10-batches-py``,
        ``MNIST``). Required for the torchvision datasets, unused otherwise.
    seed:
        Seed of the digits train/test split. Default 0.

    Returns
    -------
    inputs, labels:
        ``float32 [N, *dataset_info(name).input_shape]`` (standardised, unitless) and
        ``int64 [N]`` in ``0 .. num_classes - 1``.

    Raises
    ------
    ValueError
        If ``name`` or ``split`` is unknown, or a torchvision dataset is asked for without
        ``data_dir``.
    FileNotFoundError
        If a torchvision dataset is not in ``data_dir``.
    """
    canonical = _canonical(name)
    check_split(split)
    if canonical in _TORCHVISION_KEYS:
        if data_dir is None:
            sub = KNOWN_DATASETS[_TORCHVISION_KEYS[canonical]][1]
            raise ValueError(
                f"dataset {canonical!r} is read from disk: set `data_dir` to the folder that holds {sub!r} "
                f"(e.g. the folder holding cifar-10-batches-py); nothing is downloaded"
            )
        key_dir: str | None = str(Path(data_dir).expanduser().resolve())
        key_seed = 0
    else:
        key_dir = None
        key_seed = seed if canonical in ("digits", "synthetic_cifar10") or canonical in _LOADERS else 0
    return _load_cached(canonical, split, key_dir, key_seed)


@lru_cache(maxsize=CACHE_SIZE)
def _load_cached(name: str, split: str, data_dir: str | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        return load_digits_tensors(split, seed=seed)
    if name == "mnist1d":
        return load_mnist1d_tensors(split)
    if name in _LOADERS:
        return _checked_user_split(name, split, _LOADERS[name](split, seed))
    if name == "synthetic_cifar10":
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        n = 5000 if split == "train" else 1000
        return torch.randn((n, *_INFOS[name].input_shape), generator=g), torch.randint(0, 10, (n,), generator=g)
    assert data_dir is not None
    return _load_torchvision_tensors(name, split, data_dir)


def _checked_user_split(name: str, split: str, loaded: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A registered loader's result, checked against its registration (a clear error, not one deep in torch)."""
    info = _INFOS[name]
    expected = f"(float32 [N, {', '.join(map(str, info.input_shape))}] inputs, int64 [N] labels)"
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and all(isinstance(t, torch.Tensor) for t in loaded)):
        raise ValueError(f"dataset {name!r}: its loader returned {type(loaded).__name__}; it must return {expected}")
    x, y = loaded
    if x.dtype != torch.float32 or tuple(x.shape[1:]) != info.input_shape or y.dtype != torch.int64:
        raise ValueError(
            f"dataset {name!r} ({split}): got {x.dtype} {tuple(x.shape)} inputs and {y.dtype} {tuple(y.shape)} labels; "
            f"expected {expected}"
        )
    if y.shape != (len(x),) or len(x) == 0 or int(y.min()) < 0 or int(y.max()) >= info.num_classes:
        raise ValueError(
            f"dataset {name!r} ({split}): {len(x)} inputs need as many labels, each in 0..{info.num_classes - 1}; "
            f"got {tuple(y.shape)} labels" + (f" in {int(y.min())}..{int(y.max())}" if y.numel() else "")
        )
    return x, y


def _load_torchvision_tensors(name: str, split: str, data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a torchvision dataset's raw ``.data``/``.targets`` arrays without per-sample transforms."""
    ds = load_torchvision_dataset(_TORCHVISION_KEYS[name], data_dir, split)
    data = ds.data  # type: ignore[attr-defined]
    raw = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else torch.as_tensor(data)
    if raw.ndim == 3:  # MNIST-style [N, H, W]
        raw = raw.unsqueeze(1)
    elif raw.ndim == 4:  # CIFAR-style [N, H, W, C]
        raw = raw.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"dataset {name!r}: unexpected data shape {tuple(raw.shape)}")
    mean, std = _CHANNEL_STATS[name]
    x = raw.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    x = x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    y = torch.as_tensor(ds.targets, dtype=torch.int64).reshape(-1)  # type: ignore[attr-defined]
    expected = _INFOS[name].input_shape
    if tuple(x.shape[1:]) != expected or len(y) != len(x):
        raise ValueError(
            f"dataset {name!r}: got inputs {tuple(x.shape)} and {len(y)} labels, expected [N, {expected}] and N labels"
        )
    return x, y
