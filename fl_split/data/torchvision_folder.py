"""torchvision image datasets read from a local folder, with ``download=False`` always."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from fl_split.data.digits import check_split

#: Known names -> (torchvision class name, sub-folder torchvision reads under ``root``).
KNOWN_DATASETS: dict[str, tuple[str, str]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", "MNIST"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST"),
}


def load_torchvision_dataset(name: str, root: str | Path, split: str = "train") -> Dataset:
    """Open a torchvision dataset that is already on disk (this function never downloads).

    Images come back as tensors (``transforms.ToTensor()``), labels as ints.

    Parameters
    ----------
    name:
        One of ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``.
    root:
        The folder passed to torchvision as ``root`` (the one that holds e.g. ``cifar-10-batches-py``).
    split:
        ``"train"`` or ``"test"``.

    Raises
    ------
    ValueError
        If ``name`` or ``split`` is unknown.
    FileNotFoundError
        If the dataset's folder is missing or incomplete; the message names the expected folder
        and how to obtain it.
    """
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(KNOWN_DATASETS))}")
    check_split(split)
    import torchvision
    from torchvision import transforms

    cls_name, sub = KNOWN_DATASETS[name]
    expected = Path(root).expanduser() / sub
    how = (
        f"obtain it on a machine with internet access with "
        f"`torchvision.datasets.{cls_name}(root='{root}', train={split == 'train'}, download=True)` "
        f"and copy the folder {sub!r} to {Path(root).expanduser()}"
    )
    if not expected.is_dir():
        raise FileNotFoundError(f"dataset {name!r} not found: expected the directory {expected}; {how}")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(root=str(root), train=split == "train", download=False, transform=transforms.ToTensor())
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"dataset {name!r} in {expected} is incomplete or corrupted ({exc}); {how}") from exc
