"""Dataset registry (:mod:`fl_split.data.registry`) and partitioning by id (:mod:`fl_split.data.partition`)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_split.data import (
    PARTITIONERS,
    DatasetInfo,
    dataset_info,
    label_histogram,
    list_datasets,
    load_dataset,
    load_digits_tensors,
    partition_indices,
)

NUM_PARTITIONS = 10
NUM_TRAIN = 1437  # digits train split (seed 0)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    _, y = load_dataset("digits", "train")
    return y


def all_partitions(labels: torch.Tensor, **kwargs: object) -> list[np.ndarray]:
    return [partition_indices(labels, NUM_PARTITIONS, pid, **kwargs) for pid in range(NUM_PARTITIONS)]  # type: ignore[arg-type]


def assert_disjoint_sorted(parts: list[np.ndarray]) -> np.ndarray:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    return joined


def mean_max_class_share(labels: torch.Tensor, parts: list[np.ndarray]) -> float:
    return float(np.mean([max(label_histogram(labels, p, 10)) / len(p) for p in parts]))


def classes_present(labels: torch.Tensor, parts: list[np.ndarray]) -> list[int]:
    return [sum(1 for c in label_histogram(labels, p, 10) if c > 0) for p in parts]


# --------------------------------------------------------------------------- partitioning


def test_partitioners_tuple() -> None:
    assert PARTITIONERS == ("iid", "dirichlet", "shard")


def test_iid_disjoint_covering_balanced(labels: torch.Tensor) -> None:
    parts = all_partitions(labels, scheme="iid")
    joined = assert_disjoint_sorted(parts)
    assert np.array_equal(np.sort(joined), np.arange(NUM_TRAIN))
    sizes = [len(p) for p in parts]
    assert sorted(sizes) == [143] * 3 + [144] * 7  # 1437 = 10 * 143 + 7
    assert max(sizes) - min(sizes) <= 1
    # Every partition sees every class; measured mean max-class share 0.132 (seeds 0-3: 0.132-0.150).
    assert all(n == 10 for n in classes_present(labels, parts))
    assert mean_max_class_share(labels, parts) < 0.17


@pytest.mark.parametrize("n,k,seed", [(1437, 10, 0), (1437, 7, 3), (10, 10, 1), (101, 4, 2), (5, 1, 0)])
def test_iid_equals_flwr_datasets_iid_partitioner(n: int, k: int, seed: int) -> None:
    """The iid split is computed without flwr-datasets (cheaper process start-up): it must equal
    ``IidPartitioner`` on the same shuffled indices, partition by partition."""
    from fl_split.data.partition import _split, _split_with_flwr_datasets

    y = np.arange(n, dtype=np.int64) % 10
    ours, reference = _split(y, "iid", k, (), seed), _split_with_flwr_datasets(y, "iid", k, (), seed)
    assert len(ours) == len(reference) == k
    assert all(np.array_equal(a, b) and not a.flags.writeable for a, b in zip(ours, reference, strict=True))


def test_dirichlet_disjoint_covering_and_skewed(labels: torch.Tensor) -> None:
    parts = all_partitions(labels, scheme="dirichlet", alpha=0.3)
    joined = assert_disjoint_sorted(parts)
    assert np.array_equal(np.sort(joined), np.arange(NUM_TRAIN))
    sizes = [len(p) for p in parts]
    # Measured (seed 0): sizes 72..190, mean max-class share 0.494 (seeds 0-3: 0.466-0.552) vs iid 0.132.
    assert min(sizes) >= 10  # the minimum partition size asked of flwr-datasets
    skew = mean_max_class_share(labels, parts)
    iid_skew = mean_max_class_share(labels, all_partitions(labels, scheme="iid"))
    assert skew > 0.4
    assert skew > 3 * iid_skew
    assert sum(classes_present(labels, parts)) < 10 * NUM_PARTITIONS  # some partitions miss classes


def test_shard_equal_sizes_few_classes_and_leftovers(labels: torch.Tensor) -> None:
    parts = all_partitions(labels, scheme="shard", shards_per_partition=2)
    joined = assert_disjoint_sorted(parts)
    # shard size floor(1437 / 20) = 71: every partition has 142 samples and 1437 - 1420 = 17 are left out.
    assert [len(p) for p in parts] == [142] * NUM_PARTITIONS
    assert len(joined) == 1420
    # Each 71-sample shard of the label-sorted data spans at most 2 classes (every class has > 71 samples),
    # so a partition has at most 4; measured 2-3 (mean 2.6) and a mean max-class share of 0.513.
    present = classes_present(labels, parts)
    assert max(present) <= 4
    assert np.mean(present) <= 3.0
    assert mean_max_class_share(labels, parts) > 0.4
    one = all_partitions(labels, scheme="shard", shards_per_partition=1)
    assert max(classes_present(labels, one)) <= 2  # 143-sample shards straddle at most one class boundary


@pytest.mark.parametrize(
    ("scheme", "kwargs"), [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("shard", {"shards_per_partition": 2})]
)
def test_deterministic_and_seed_dependent(labels: torch.Tensor, scheme: str, kwargs: dict[str, object]) -> None:
    first = all_partitions(labels, scheme=scheme, seed=0, **kwargs)
    again = all_partitions(labels, scheme=scheme, seed=0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    from_numpy = all_partitions(labels.numpy().astype(np.int32), scheme=scheme, seed=0, **kwargs)  # type: ignore[arg-type]
    assert all(np.array_equal(a, b) for a, b in zip(first, from_numpy, strict=True))
    other = all_partitions(labels, scheme=scheme, seed=1, **kwargs)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_returned_indices_are_fresh_copies(labels: torch.Tensor) -> None:
    part = partition_indices(labels, NUM_PARTITIONS, 3)
    expected = part.copy()
    part[:] = 0
    assert np.array_equal(partition_indices(labels, NUM_PARTITIONS, 3), expected)


def test_single_partition_and_one_sample_per_partition() -> None:
    y = np.repeat(np.arange(3), 4)
    assert np.array_equal(partition_indices(y, 1, 0), np.arange(12))
    assert sorted(int(partition_indices(y, 12, i)[0]) for i in range(12)) == list(range(12))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "pathological"}, "choose one of: iid, dirichlet, shard"),
        ({"num_partitions": 0}, "num_partitions must be between 1 and the number of samples"),
        ({"num_partitions": NUM_TRAIN + 1}, r"number of samples \(1437\)"),
        ({"partition_id": -1}, r"partition_id must be in \[0, num_partitions\)"),
        ({"partition_id": NUM_PARTITIONS}, r"\[0, 10\), got 10"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": -1.0, "scheme": "dirichlet"}, "alpha must be a finite number > 0"),
        ({"alpha": math.nan}, "alpha must be a finite number > 0"),
        ({"shards_per_partition": 0}, "shards_per_partition must be >= 1"),
        ({"scheme": "shard", "shards_per_partition": 200}, "exceeds the number of samples"),
        ({"num_partitions": 2.5}, "num_partitions must be an int"),
    ],
)
def test_validation_errors(labels: torch.Tensor, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"num_partitions": NUM_PARTITIONS, "partition_id": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, **args)  # type: ignore[arg-type]


def test_bad_labels_rejected() -> None:
    with pytest.raises(ValueError, match="labels must be 1-D"):
        partition_indices(np.zeros((4, 2), dtype=np.int64), 2, 0)
    with pytest.raises(ValueError, match="integer dtype"):
        partition_indices(np.zeros(4, dtype=np.float32), 2, 0)


def test_dirichlet_unsatisfiable_minimum_is_a_clear_error(labels: torch.Tensor) -> None:
    # 100 partitions of 1437 samples need >= 7 samples each; alpha 0.01 puts each class on ~1 partition.
    with pytest.raises(ValueError, match="raise alpha or lower num_partitions"):
        partition_indices(labels, 100, 0, scheme="dirichlet", alpha=0.01)


def test_label_histogram(labels: torch.Tensor) -> None:
    y = np.array([0, 1, 1, 2, 2, 2])
    assert label_histogram(y, np.array([1, 3, 4, 5]), 4) == [0, 1, 3, 0]
    assert label_histogram(y, np.array([], dtype=np.int64), 3) == [0, 0, 0]
    assert sum(label_histogram(labels, np.arange(NUM_TRAIN), 10)) == NUM_TRAIN
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        label_histogram(y, np.arange(6), 2)


# --------------------------------------------------------------------------- registry


def test_synthetic_cifar10_is_seeded_cifar_shaped_noise() -> None:
    x, y = load_dataset("synthetic_cifar10", "train", seed=3)
    xt, _ = load_dataset("synthetic_cifar10", "test", seed=3)
    assert x.shape == (5000, 3, 32, 32) and xt.shape == (1000, 3, 32, 32) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01 and set(y.tolist()) == set(range(10))
    assert not torch.equal(x[:1000], xt) and not torch.equal(x, load_dataset("synthetic_cifar10", "train", seed=4)[0])


def test_list_datasets_and_info() -> None:
    assert list_datasets() == [
        "digits",
        "mnist1d",
        "cifar10",
        "cifar100",
        "mnist",
        "fashion_mnist",
        "synthetic_cifar10",
    ]
    assert dataset_info("digits") == DatasetInfo("digits", 10, (1, 16, 16))
    assert dataset_info("mnist1d") == DatasetInfo("mnist1d", 10, (1, 40))
    assert dataset_info("cifar10").input_shape == (3, 32, 32)
    assert dataset_info("cifar100") == DatasetInfo("cifar100", 100, (3, 32, 32), on_disk=True)
    # read from a torchvision folder (data_dir) or made offline
    assert [n for n in list_datasets() if dataset_info(n).on_disk] == ["cifar10", "cifar100", "mnist", "fashion_mnist"]
    assert dataset_info("mnist").input_shape == (1, 28, 28)
    assert (
        dataset_info("fashion_mnist")
        == dataset_info("fashion-mnist")
        == DatasetInfo("fashion_mnist", 10, (1, 28, 28), on_disk=True)
    )
    with pytest.raises(ValueError, match="choose one of: digits, mnist1d, cifar10, cifar100, mnist, fashion_mnist"):
        dataset_info("imagenet")


def test_load_digits_and_mnist1d() -> None:
    x, y = load_dataset("digits", "train")
    assert x.shape == (NUM_TRAIN, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (NUM_TRAIN,) and y.dtype == torch.int64
    ref_x, ref_y = load_digits_tensors("train", seed=0)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    again = load_dataset("digits", "train")
    assert again[0] is x  # cached: the same tensors (callers must not modify them)
    x_te, y_te = load_dataset("digits", "test", seed=1)
    assert x_te.shape == (360, 1, 16, 16) and torch.equal(y_te, load_digits_tensors("test", seed=1)[1])
    x1, y1 = load_dataset("mnist1d", "test")
    assert x1.shape == (1000, 1, 40) and x1.dtype == torch.float32
    assert y1.shape == (1000,) and y1.dtype == torch.int64
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "fashion-mnist"])
def test_torchvision_needs_data_dir(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set `data_dir`"):
        load_dataset(name, "train")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(name, "train", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # nothing was downloaded or created


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision's MNIST reader expects."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_tensors_from_raw_arrays(tmp_path: Path) -> None:
    # A tiny fake Fashion-MNIST on disk (torchvision checks only that its four raw files exist).
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    targets = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", images)
    _write_idx(raw / "train-labels-idx1-ubyte", targets)
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:2])
    _write_idx(raw / "t10k-labels-idx1-ubyte", targets[:2])
    x, y = load_dataset("fashion_mnist", "train", data_dir=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [3, 1, 4, 1, 5]
    expected = (torch.from_numpy(images).float() / 255.0 - 0.2860) / 0.3530
    torch.testing.assert_close(x[:, 0], expected)
    assert load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))[0] is x  # alias, same cache entry


def test_cifar_tensors_channels_first_and_standardised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CIFAR's files are md5-checked, so stand in for the loader: it exposes uint8 [N, H, W, C] data and list targets.
    from fl_split.data import registry

    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)

    class FakeCifar:
        def __init__(self) -> None:
            self.data = data
            self.targets = [7, 0, 99, 42]

    seen: list[tuple[object, ...]] = []

    def fake_loader(name: str, root: str | Path, split: str = "train") -> FakeCifar:
        seen.append((name, root, split))
        return FakeCifar()

    monkeypatch.setattr(registry, "load_torchvision_dataset", fake_loader)
    x, y = load_dataset("cifar100", "test", data_dir=tmp_path)
    assert seen == [("cifar100", str(tmp_path.resolve()), "test")]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.tolist() == [7, 0, 99, 42] and y.dtype == torch.int64
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(1, 3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(data).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    torch.testing.assert_close(x, expected)
