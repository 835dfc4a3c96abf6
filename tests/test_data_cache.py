"""The dataset cache: a new process reads digits and MNIST-1D from disk, exactly as the libraries make them."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_split.data import digits, mnist1d, partition
from fl_split.data.cache import CACHE_ENV, cache_dir


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache folder for this test; the in-memory caches cleared before and after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    digits._split_indices.cache_clear()
    mnist1d._generate.cache_clear()
    partition._cache.clear()
    yield folder
    digits._split_indices.cache_clear()
    mnist1d._generate.cache_clear()
    partition._cache.clear()


def _sklearn_split(seed: int) -> tuple[np.ndarray, ...]:
    """The reference, straight from scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train, test = train_test_split(
        np.arange(1797), test_size=0.2, stratify=bunch.target, random_state=seed, shuffle=True
    )
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64), np.sort(train), np.sort(test)


def _equal(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> bool:
    return all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def _refuse_to_build(*_: object) -> None:
    raise AssertionError("the cache was not used")


def test_digits_are_stored_once_and_then_read_back_exactly(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = digits._split_indices(3)
    files = sorted(p.name for p in cache.iterdir())
    assert (
        len(files) == 1 and files[0].startswith(f"digits-r{digits.RECIPE}-sklearn") and files[0].endswith("-seed3.npz")
    )
    assert _equal(first, _sklearn_split(3))
    digits._split_indices.cache_clear()
    monkeypatch.setattr(digits, "_from_sklearn", _refuse_to_build)  # a second process: read, not rebuilt
    assert _equal(digits._split_indices(3), _sklearn_split(3))
    x, y = digits.load_digits_tensors("test", seed=3)
    assert x.shape == (360, 1, 16, 16) and np.array_equal(y.numpy(), _sklearn_split(3)[1][_sklearn_split(3)[3]])


def test_mnist1d_is_stored_once_and_then_read_back_exactly(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42
    want = make_dataset(args)
    mnist1d._generate(42)
    mnist1d._generate.cache_clear()
    monkeypatch.setattr(mnist1d, "_make", _refuse_to_build)
    got = mnist1d._generate(42)
    for k in ("x", "y", "x_test", "y_test"):
        assert got[k].dtype == np.asarray(want[k]).dtype and np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("damage", ["garbage", "labels_out_of_range", "missing_array"])
def test_a_damaged_file_is_rebuilt_with_a_warning(cache: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    digits._split_indices(0)
    (path,) = cache.iterdir()
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    else:
        images, labels, train, test = _sklearn_split(0)
        arrays = {"images": images, "labels": labels + 1, "train_idx": train, "test_idx": test}
        if damage == "missing_array":
            arrays = {"images": images, "labels": labels, "train_idx": train}
        np.savez(path, **arrays)
    digits._split_indices.cache_clear()
    with caplog.at_level(logging.WARNING, logger="fl_split.data.cache"):
        assert _equal(digits._split_indices(0), _sklearn_split(0))
    assert f"dataset cache {path} is unusable" in caplog.text
    digits._split_indices.cache_clear()
    caplog.clear()
    assert _equal(digits._split_indices(0), _sklearn_split(0)) and not caplog.text  # the rebuilt file is good


def test_off_or_an_unwritable_folder_means_no_cache_and_the_same_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None and _equal(digits._split_indices(1), _sklearn_split(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # its parent is a file: mkdir fails
    digits._split_indices.cache_clear()
    assert _equal(digits._split_indices(1), _sklearn_split(1)) and blocker.read_text() == "x"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fl-split"


def test_a_folder_this_user_cannot_read_means_no_cache(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``HOME`` of another user (root's, in a container run as someone else): read, computed, nothing written."""
    from fl_split.data import cache as cache_module

    def denied(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.np, "load", denied)  # as root, chmod cannot deny a read: say it here
    with caplog.at_level(logging.INFO, logger="fl_split.data.cache"):
        assert _equal(digits._split_indices(2), _sklearn_split(2))
    assert "not readable" in caplog.text and not cache.exists()


def test_a_new_process_with_a_warm_cache_imports_neither_sklearn_nor_mnist1d(cache: Path) -> None:
    """What the cache is for: every Ray actor, ClientApp process and rank skips 2-5 s of imports and generation."""
    digits._split_indices(0)
    mnist1d._generate(42)
    code = (
        "import sys; from fl_split.data import load_dataset; load_dataset('digits', 'train'); "
        "load_dataset('mnist1d', 'test'); print(sorted(m for m in ('sklearn', 'scipy', 'pandas', 'mnist1d') "
        "if m in sys.modules))"
    )
    assert _in_a_new_process(code, cache) == "[]"


def _in_a_new_process(code: str, cache: Path) -> str:
    """What ``code`` prints in a fresh interpreter that uses ``cache``."""
    env = {CACHE_ENV: str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def _labels() -> np.ndarray:
    return digits._split_indices(0)[1][digits._split_indices(0)[2]]  # digits' training labels


@pytest.mark.parametrize(("scheme", "params"), [("dirichlet", (0.5,)), ("shard", (2,))])
def test_a_non_iid_split_is_stored_once_and_read_back_exactly(
    cache: Path, monkeypatch: pytest.MonkeyPatch, scheme: str, params: tuple[float | int, ...]
) -> None:
    """The oracle is flwr-datasets' partitioner run directly (``_split_with_flwr_datasets``), 5 partitions."""
    y = _labels()
    want = partition._split_with_flwr_datasets(y, scheme, 5, params, 7)
    kw = {"alpha": params[0]} if scheme == "dirichlet" else {"shards_per_partition": params[0]}
    first = [partition.partition_indices(y, 5, i, scheme=scheme, seed=7, **kw) for i in range(5)]
    (path,) = [p for p in cache.iterdir() if p.name.startswith("partition-")]
    assert f"-{scheme}{params[0]}-5parts-seed7-labels" in path.name and "-flwrdatasets" in path.name
    partition._cache.clear()
    monkeypatch.setattr(partition, "_split_with_flwr_datasets", _refuse_to_build)  # a second process: read
    again = [partition.partition_indices(y, 5, i, scheme=scheme, seed=7, **kw) for i in range(5)]
    for got in (first, again):
        assert all(g.dtype == np.int64 and np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    partition.partition_indices(y, 5, 0, scheme="iid", seed=7)
    assert len(list(cache.glob("partition-*"))) == 1  # iid is a seeded shuffle: computed, never stored


def test_other_labels_seed_parameter_or_count_is_another_file_and_its_own_split(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each change is a new file holding flwr-datasets' split for it (a name missing one would hand back the
    first split); then, with the partitioner gone, every one is read back."""
    y = _labels()
    shuffled = y[np.random.default_rng(0).permutation(len(y))]
    cases = [(y, 4, 0, 1.0), (shuffled, 4, 0, 1.0), (y, 4, 1, 1.0), (y, 4, 0, 0.3), (y, 5, 0, 1.0)]
    want = [partition._split_with_flwr_datasets(labels, "dirichlet", k, (a,), seed) for labels, k, seed, a in cases]

    def split(labels: np.ndarray, k: int, seed: int, alpha: float) -> list[np.ndarray]:
        return [partition.partition_indices(labels, k, i, scheme="dirichlet", alpha=alpha, seed=seed) for i in range(k)]

    for case, w in zip(cases, want, strict=True):
        assert all(np.array_equal(g, p) for g, p in zip(split(*case), w, strict=True)), case[1:]
    assert len(list(cache.glob("partition-*"))) == len(cases)
    assert len({b"|".join(p.tobytes() for p in w) for w in want}) == len(cases)  # the five splits differ
    partition._cache.clear()
    monkeypatch.setattr(partition, "_split_with_flwr_datasets", _refuse_to_build)
    for case, w in zip(cases, want, strict=True):
        assert all(np.array_equal(g, p) for g, p in zip(split(*case), w, strict=True)), case[1:]


@pytest.mark.parametrize(
    ("scheme", "damage"),
    [
        ("dirichlet", "overlap"),
        ("dirichlet", "out_of_range"),
        ("dirichlet", "missing_part"),
        ("dirichlet", "not_covering"),
        ("dirichlet", "empty"),
        ("dirichlet", "unsorted"),
        ("dirichlet", "float"),
        ("shard", "short"),  # shards need not cover the dataset: the sizes must hold
        ("shard", "overlap"),
    ],
)
def test_a_wrong_stored_split_is_rebuilt(
    cache: Path, scheme: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    y = _labels()
    kw = {"alpha": 1.0} if scheme == "dirichlet" else {"shards_per_partition": 2}
    want = [partition.partition_indices(y, 3, i, scheme=scheme, seed=0, **kw) for i in range(3)]
    (path,) = [p for p in cache.iterdir() if p.name.startswith("partition-")]
    parts: dict[str, np.ndarray] = {f"p{i}": w.copy() for i, w in enumerate(want)}
    if damage == "overlap":  # p1 takes one of p0's samples in place of one of its own
        parts["p1"] = np.sort(np.concatenate([parts["p1"][1:], parts["p0"][:1]]))
    elif damage == "out_of_range":
        parts["p2"] = np.append(parts["p2"], len(y))
    elif damage == "missing_part":
        del parts["p2"]
    elif damage in ("not_covering", "short"):
        parts["p2"] = parts["p2"][1:]
    elif damage == "empty":
        parts["p0"] = np.sort(np.concatenate([parts["p0"], parts["p2"]]))
        parts["p2"] = parts["p2"][:0]
    elif damage == "unsorted":
        parts["p1"] = parts["p1"][::-1].copy()
    else:
        parts["p0"] = parts["p0"].astype(np.float64)
    np.savez(path, **parts)
    partition._cache.clear()
    with caplog.at_level(logging.WARNING, logger="fl_split.data.cache"):
        got = [partition.partition_indices(y, 3, i, scheme=scheme, seed=0, **kw) for i in range(3)]
    assert f"dataset cache {path} is unusable" in caplog.text
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_a_new_process_with_a_warm_cache_partitions_without_importing_datasets(cache: Path) -> None:
    """Every Ray actor, ClientApp process and rank of a non-iid run skips importing ``datasets`` and pyarrow
    and the split: 1.3 CPU-s in a process that has already imported the ClientApp, 4.2 in a bare one."""
    y = _labels()
    want = partition.partition_indices(y, 3, 1, scheme="dirichlet", alpha=1.0, seed=0)
    code = (
        "import sys; from fl_split.data import load_dataset, partition_indices; x, y = load_dataset('digits', "
        "'train'); p = partition_indices(y, 3, 1, scheme='dirichlet', alpha=1.0, seed=0); "
        "print(sorted(m for m in ('datasets', 'pyarrow', 'flwr_datasets', 'sklearn') if m in sys.modules)); "
        "print(','.join(map(str, p)))"
    )
    imported, indices = _in_a_new_process(code, cache).splitlines()
    assert imported == "[]" and indices == ",".join(map(str, want))
