"""An on-disk cache of the offline datasets' raw arrays (and of non-iid partitions' indices,
:mod:`fl_split.data.partition`), so a new process need not rebuild them.

Every process that trains on ``digits`` or ``mnist1d`` (each Ray actor, ``flwr-clientapp`` process,
DDP or gossip rank, CLI run) would otherwise import scikit-learn, which brings SciPy and pandas
(about 2 CPU-seconds), or generate MNIST-1D (about 3 s); reading the cached arrays takes milliseconds
and imports neither. The arrays are exactly what the library returned: ``.npz`` keeps every value and
dtype. A file's name carries the producing package's version, the seed and the recipe's version
(``RECIPE`` in each dataset module, bumped when its arrays change), so an upgrade makes a new one. A
file that does not load or fails its dataset's check (``check``) is rebuilt with a warning; a folder
that cannot be read or written only means no cache.

The folder: ``$FL_SPLIT_CACHE_DIR`` (empty or ``off``: no cache), else
``$XDG_CACHE_HOME/fl-split``, else ``~/.cache/fl-split``.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from fl_split.durable import atomic_write_bytes

log = logging.getLogger(__name__)

#: The environment variable that names the cache folder (empty or ``off``: no cache).
CACHE_ENV = "FL_SPLIT_CACHE_DIR"

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``$FL_SPLIT_CACHE_DIR`` turns the cache off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        value = value.strip()
        return None if value in ("", "off") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fl-split"


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (read without importing it), or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cached_arrays(name: str, compute: Callable[[], Arrays], check: Callable[[Arrays], None]) -> Arrays:
    """The arrays stored under ``name``, else ``compute()``'s, stored for the next process.

    Parameters
    ----------
    name:
        File stem; it must change whenever ``compute`` would return something else: it holds the library's
        version, the seed and the recipe's own version (bumped whenever ``compute`` changes).
    compute:
        Builds the arrays (the slow path).
    check:
        Raises ``ValueError`` when stored arrays are not what ``compute`` returns (shapes, dtypes, ranges):
        such a file is rebuilt.
    """
    folder = cache_dir()
    path = None if folder is None else folder / f"{name}.npz"
    if path is not None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {k: stored[k] for k in stored.files}
            check(arrays)
            return arrays
        except FileNotFoundError:
            pass  # the first process to ask: build and store
        except PermissionError as exc:  # a folder this user may not read (HOME of another user): no cache
            log.info("dataset cache %s not readable (%s): running without it", path, exc)
            path = None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("dataset cache %s is unusable (%s): rebuilding it", path, exc)
    arrays = compute()
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:  # a read-only home: run without the cache
            log.info("dataset cache %s not written (%s)", path, exc)
    return arrays
