"""Writing run outputs so that a crash loses nothing: atomic replaces, synced appends, safe checkpoints.

- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_torch_save`: write a temporary
  file in the same folder, ``fsync`` it, then ``os.replace`` it over the target: a reader sees the old
  file or the new one, never half of one.
- :func:`append_line`: append, flush and ``fsync`` (a metrics row is on disk when the call returns).
- :func:`to_safe` / :func:`from_safe`: checkpoints hold tensors, numbers, strings, lists and dicts
  only, so they load with ``torch.load(weights_only=True)`` (no pickled code runs on load); byte
  strings travel as ``uint8`` tensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

_BYTES = "__bytes__"


def _atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600: give the usual mode
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself survives a power cut
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    _atomic(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    _atomic(Path(path), lambda fh: fh.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path``, flushed and synced to disk."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def to_safe(obj: Any) -> Any:
    """``obj`` with every ``bytes`` replaced by a tagged ``uint8`` tensor (``weights_only`` loads it)."""
    if isinstance(obj, bytes | bytearray):
        return {
            _BYTES: torch.frombuffer(bytearray(obj), dtype=torch.uint8) if obj else torch.empty(0, dtype=torch.uint8)
        }
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    """Inverse of :func:`to_safe`."""
    if isinstance(obj, dict):
        if set(obj) == {_BYTES}:
            return obj[_BYTES].numpy().tobytes()
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(from_safe(v) for v in obj)
    return obj
