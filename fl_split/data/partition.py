"""Split a labelled dataset across federated clients with flwr-datasets partitioners, by partition id.

Each Flower client knows its node's ``partition-id`` and ``num-partitions``; :func:`partition_indices`
turns those into the (sorted) indices of its samples in an in-memory dataset such as the one
:func:`fl_split.data.registry.load_dataset` returns. The split itself is done by flwr-datasets
(``IidPartitioner``, ``DirichletPartitioner``, ``ShardPartitioner``) on a ``datasets.Dataset`` built
in memory from the labels, so nothing is downloaded. The whole split is computed once per
configuration and labels and kept in a small in-process cache, so asking for each of the N
partitions in turn costs one split, not N. The ``dirichlet`` and ``shard`` splits are also stored in the
dataset cache (:mod:`fl_split.data.cache`): computing one imports ``datasets`` and pyarrow, 1.3 to 4
CPU-seconds in every process that partitions (each Ray actor, ``flwr-clientapp`` process, DDP or gossip
rank); a later process reads the indices instead.
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import torch

from fl_split.data.cache import Arrays, cached_arrays, package_version

#: The version of the stored non-iid splits (:func:`_split`), in the cache file's name: bump it whenever
#: they would change (the partitioners' arguments, :data:`DIRICHLET_MIN_PARTITION_SIZE`, ``_dirichlet_min_size``).
RECIPE = 1

#: Partitioning schemes understood by :func:`partition_indices`.
PARTITIONERS = ("iid", "dirichlet", "shard")

#: Most distinct (scheme, parameters, labels) splits kept in memory.
CACHE_SIZE = 32
#: Largest minimum partition size asked of the Dirichlet partitioner (samples).
DIRICHLET_MIN_PARTITION_SIZE = 10

_cache: OrderedDict[Hashable, tuple[np.ndarray, ...]] = OrderedDict()
_cache_lock = threading.Lock()


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _as_labels(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {y.dtype}")
    return np.ascontiguousarray(y, dtype=np.int64)


def _dirichlet_min_size(num_samples: int, num_partitions: int) -> int:
    """Minimum partition size (samples) required of a Dirichlet split: 10, less for tiny datasets, never 0."""
    return max(1, min(DIRICHLET_MIN_PARTITION_SIZE, num_samples // (2 * num_partitions)))


def partition_indices(
    labels: torch.Tensor | np.ndarray,
    num_partitions: int,
    partition_id: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    shards_per_partition: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Indices of the samples that belong to partition ``partition_id`` of ``num_partitions``.

    The partitions of all ids are disjoint. The schemes (all built on flwr-datasets partitioners):

    * ``"iid"``: the samples are shuffled with ``seed`` and cut into ``num_partitions`` contiguous
      blocks (``IidPartitioner``); all samples are used and sizes differ by at most 1.
    * ``"dirichlet"``: for each class, the class's samples are divided among the partitions in
      proportions drawn from ``Dirichlet(alpha)`` (``DirichletPartitioner`` with
      ``self_balancing=True``: a partition that already holds more than the average
      ``N / num_partitions`` samples gets no samples of the remaining classes). All samples are
      used. Smaller ``alpha`` means more label skew. Every partition must get at least
      ``max(1, min(10, N // (2 * num_partitions)))`` samples; the draw is retried (up to 10
      times) until it does.
    * ``"shard"``: the samples are sorted by label and cut into shards of
      ``floor(N / (num_partitions * shards_per_partition))`` consecutive samples; each partition
      gets ``shards_per_partition`` shards drawn at random (``ShardPartitioner``), so each
      partition holds the same number of samples and few classes. The leftover
      ``N - num_partitions * shards_per_partition * shard_size`` samples (fewer than
      ``num_partitions * shards_per_partition``: the incomplete last shard and, when more full
      shards exist than are needed, whole randomly chosen shards) belong to no partition.

    The split depends only on ``labels``, the scheme and its parameters and ``seed``; it is computed
    once and cached in-process (``dirichlet`` and ``shard`` also on disk, in the dataset cache), and each
    call returns a fresh copy.

    Parameters
    ----------
    labels:
        Integer class labels of the whole dataset, shape ``[N]``.
    num_partitions:
        Number of partitions (clients), ``1 <= num_partitions <= N``.
    partition_id:
        This partition's id, ``0 <= partition_id < num_partitions``.
    scheme:
        One of :data:`PARTITIONERS`. Default ``"iid"``.
    alpha:
        Dirichlet concentration (> 0, finite), used by ``"dirichlet"``; validated for every
        scheme. Default 0.5.
    shards_per_partition:
        Shards per partition (>= 1), used by ``"shard"``; validated for every scheme. Default 2.
    seed:
        Seed of the random split. Default 0.

    Returns
    -------
    np.ndarray
        Sorted ``int64`` indices into ``labels`` (and the matching inputs), without duplicates.

    Raises
    ------
    ValueError
        If the scheme is unknown, a parameter is out of range, ``labels`` is not a 1-D integer
        array, or the Dirichlet partitioner cannot give every partition its minimum size (raise
        ``alpha`` or lower ``num_partitions``).
    """
    if scheme not in PARTITIONERS:
        raise ValueError(f"unknown partitioning scheme {scheme!r}; choose one of: {', '.join(PARTITIONERS)}")
    y = _as_labels(labels)
    n = len(y)
    num_partitions = _as_int(num_partitions, "num_partitions")
    partition_id = _as_int(partition_id, "partition_id")
    shards_per_partition = _as_int(shards_per_partition, "shards_per_partition")
    seed = _as_int(seed, "seed")
    if not 1 <= num_partitions <= n:
        raise ValueError(f"num_partitions must be between 1 and the number of samples ({n}), got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, num_partitions) = [0, {num_partitions}), got {partition_id}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating | np.integer):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if shards_per_partition < 1:
        raise ValueError(f"shards_per_partition must be >= 1, got {shards_per_partition}")
    if scheme == "shard" and num_partitions * shards_per_partition > n:
        raise ValueError(
            f"shard: num_partitions * shards_per_partition ({num_partitions} * {shards_per_partition}) "
            f"exceeds the number of samples ({n}); lower one of them"
        )

    params: tuple[float | int, ...]
    if scheme == "dirichlet":
        params = (float(alpha),)
    elif scheme == "shard":
        params = (shards_per_partition,)
    else:
        params = ()
    fingerprint = (n, _labels_hash(y))
    key = (scheme, num_partitions, params, seed, fingerprint)
    with _cache_lock:
        parts = _cache.get(key)
        if parts is not None:
            _cache.move_to_end(key)
    if parts is None:
        parts = _split(y, scheme, num_partitions, params, seed)
        with _cache_lock:
            _cache[key] = parts
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return parts[partition_id].copy()


def _labels_hash(y: np.ndarray) -> str:
    return hashlib.blake2b(y.tobytes(), digest_size=16).hexdigest()


def _split(
    y: np.ndarray, scheme: str, num_partitions: int, params: tuple[float | int, ...], seed: int
) -> tuple[np.ndarray, ...]:
    """Run the flwr-datasets partitioner once and return every partition's sorted (read-only) indices.

    ``iid`` is computed here without it: flwr-datasets' ``IidPartitioner`` takes contiguous blocks
    (``datasets``' ``shard(contiguous=True)``: the first ``n % k`` blocks one sample longer), which
    is :func:`numpy.array_split` of the shuffled indices; equal to the partitioner's output
    (pinned by a test). The other schemes' splits go through the dataset cache, keyed by everything
    that decides them (the labels' hash included), so a process that finds one stored imports neither
    ``datasets`` nor pyarrow (1.3 to 4 CPU-seconds).
    """
    n = len(y)
    if scheme == "iid":
        shuffled = np.random.default_rng(seed).permutation(n).astype(np.int64)
        blocks = [np.sort(block) for block in np.array_split(shuffled, num_partitions)]
        for block in blocks:
            block.setflags(write=False)
        return tuple(blocks)
    versions = [package_version(d) for d in ("flwr-datasets", "datasets", "pyarrow", "numpy")]

    def compute() -> Arrays:
        parts = _split_with_flwr_datasets(y, scheme, num_partitions, params, seed)
        return {f"p{i}": part for i, part in enumerate(parts)}

    def check(arrays: Arrays) -> None:
        # shard: every partition holds its shards' samples, the leftovers none; dirichlet: at least one each
        size = int(params[0]) * (n // (num_partitions * int(params[0]))) if scheme == "shard" else None
        _check_parts(arrays, n, num_partitions, covering=scheme != "shard", size=size)

    if None in versions:
        arrays = compute()
    else:
        flwr_datasets, datasets, pyarrow, numpy = versions
        args = "-".join(str(p) for p in params)
        name = (
            f"partition-r{RECIPE}-{scheme}{args}-{num_partitions}parts-seed{seed}-labels{_labels_hash(y)}"
            f"-flwrdatasets{flwr_datasets}-datasets{datasets}-pyarrow{pyarrow}-numpy{numpy}"
        )
        arrays = cached_arrays(name, compute, check)
    parts = [arrays[f"p{i}"] for i in range(num_partitions)]
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def _check_parts(arrays: Arrays, n: int, num_partitions: int, *, covering: bool, size: int | None) -> None:
    """Raise ``ValueError`` unless ``arrays`` holds ``p0`` .. ``p{k-1}``: non-empty sorted int64 indices into
    ``n`` samples, disjoint, each of ``size`` samples when given, and (``covering``) together every sample once."""
    if sorted(arrays) != sorted(f"p{i}" for i in range(num_partitions)):
        raise ValueError(f"expected arrays p0..p{num_partitions - 1}, found {sorted(arrays)}")
    parts = [arrays[f"p{i}"] for i in range(num_partitions)]
    for part in parts:
        if part.dtype != np.int64 or part.ndim != 1 or not part.size or part[0] < 0 or part[-1] >= n:
            raise ValueError("a partition is not non-empty 1-D int64 indices within the dataset")
        if size is not None and part.size != size:
            raise ValueError(f"a partition holds {part.size} samples, not {size}")
        if part.size > 1 and not np.all(part[1:] > part[:-1]):
            raise ValueError("a partition's indices are not sorted and distinct")
    joined = np.sort(np.concatenate(parts))
    if joined.size > 1 and not np.all(joined[1:] > joined[:-1]):
        raise ValueError("the partitions overlap")
    if covering and not np.array_equal(joined, np.arange(n)):
        raise ValueError("the partitions do not cover the dataset")


def _split_with_flwr_datasets(
    y: np.ndarray, scheme: str, num_partitions: int, params: tuple[float | int, ...], seed: int
) -> tuple[np.ndarray, ...]:
    """Any scheme through flwr-datasets' partitioners (``iid`` too: the reference of :func:`_split`'s own)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner, ShardPartitioner

    n = len(y)
    idx = np.arange(n, dtype=np.int64)
    partitioner: Partitioner
    if scheme == "iid":
        # IidPartitioner cuts the dataset in contiguous blocks and has no seed: shuffle it first.
        idx = np.random.default_rng(seed).permutation(n).astype(np.int64)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(params[0]),
            min_partition_size=_dirichlet_min_size(n, num_partitions),
            self_balancing=True,
            shuffle=False,
            seed=seed,
        )
    else:
        partitioner = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=int(params[0]),
            shuffle=False,
            seed=seed,
        )
    partitioner.dataset = Dataset.from_dict({"label": y[idx], "idx": idx})
    parts: list[np.ndarray] = []
    with warnings.catch_warnings():
        # The Dirichlet partitioner warns on every retry; a final failure is reported below.
        warnings.filterwarnings("ignore", message=r"The specified min_partition_size")
        # pyarrow deprecation noise from datasets' sort (shard scheme).
        warnings.filterwarnings("ignore", message=r"Specifying null_placement", category=FutureWarning)
        try:
            for pid in range(num_partitions):
                part = np.sort(np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64))
                part.setflags(write=False)
                parts.append(part)
        except ValueError as exc:
            if scheme != "dirichlet":
                raise
            raise ValueError(
                f"dirichlet: could not give each of the {num_partitions} partitions at least "
                f"{_dirichlet_min_size(n, num_partitions)} of the {n} samples with alpha={params[0]} "
                f"(flwr-datasets: {exc}); raise alpha or lower num_partitions"
            ) from exc
    if scheme != "shard":
        covered = np.sort(np.concatenate(parts))
        if not np.array_equal(covered, np.arange(n)):  # e.g. NaN proportions for a vanishing alpha
            raise ValueError(
                f"{scheme}: the partitioner did not split the {n} samples into disjoint covering partitions "
                f"(alpha={params[0] if params else None}); raise alpha or lower num_partitions"
            )
    return tuple(parts)


def label_histogram(labels: torch.Tensor | np.ndarray, indices: np.ndarray, num_classes: int) -> list[int]:
    """Number of samples of each class among ``labels[indices]``.

    Parameters
    ----------
    labels:
        Integer class labels of the whole dataset, shape ``[N]``, values in ``[0, num_classes)``.
    indices:
        Indices into ``labels`` (e.g. from :func:`partition_indices`).
    num_classes:
        Number of classes (>= 1).

    Returns
    -------
    list[int]
        Length ``num_classes``; entry ``c`` is the count (samples) of class ``c``.

    Raises
    ------
    ValueError
        If ``labels`` is not 1-D integer, ``num_classes`` < 1, or a selected label is outside
        ``[0, num_classes)``.
    """
    y = _as_labels(labels)
    num_classes = _as_int(num_classes, "num_classes")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    selected = y[np.asarray(indices, dtype=np.int64)]
    if selected.size and (selected.min() < 0 or selected.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{selected.min()}, {selected.max()}]")
    return [int(c) for c in np.bincount(selected, minlength=num_classes)]
