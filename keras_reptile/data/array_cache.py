"""A folder of decoded uint8 arrays (`.npy`), each named by a hash of the files it was decoded from.

An entry is `<prefix>-<key>.npy`: `key` hashes every source file's path, size and modification
time (`file_stamp`), so a changed, added or removed file gives a new name and the old entry is never
read again (it is deleted when the new one is written). Entries are written under a temporary name,
flushed to disk and renamed, so a reader never sees a partial file, and they are read back with
`np.load(mmap_mode="r")`: mapping takes no time and the pages are shared through the OS page cache.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

_FORMAT_VERSION = "1"


def default_cache_dir() -> pathlib.Path:
    """`$KERAS_REPTILE_CACHE_DIR`, else `$XDG_CACHE_HOME/keras_reptile`, else
    `~/.cache/keras_reptile`."""
    if os.environ.get("KERAS_REPTILE_CACHE_DIR"):
        return pathlib.Path(os.environ["KERAS_REPTILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "keras_reptile"


def file_stamp(paths: Iterable[os.PathLike | str], *extra: object) -> str:
    """A hex digest of each file's path, size and modification time (in order) and of `extra`."""
    digest = hashlib.sha256(_FORMAT_VERSION.encode())
    for item in extra:
        digest.update(f"{item!r}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.fspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cached_array(
    cache_dir: os.PathLike | str,
    prefix: str,
    key: str,
    shape: Sequence[int],
    fill: Callable[[np.ndarray], None],
) -> np.ndarray:
    """Returns the uint8 array of `shape` that `fill` writes, from the cache if it holds `key`.

    Args:
        cache_dir: str or path-like. The cache folder (created if needed).
        prefix: str. Names the slot: a new entry replaces the older entries of the same prefix.
        key: str. What the array is made of, for example a `file_stamp`.
        shape: sequence of ints. The array's shape.
        fill: callable. Writes the array's values into the uint8 array it is given.

    Returns:
        A read-only memory map of the cached entry, or the array `fill` just wrote. If the entry
        cannot be written (for example a read-only or full disk), a warning says so and the
        array is returned anyway.
    """
    shape = tuple(int(d) for d in shape)
    folder = pathlib.Path(cache_dir)
    path = folder / f"{prefix}-{key}.npy"
    cached = _read(path, shape)
    if cached is not None:
        return cached
    array = np.empty(shape, np.uint8)
    fill(array)
    try:
        _write_atomically(path, array)
    except OSError as e:
        warnings.warn(
            f"Could not write the decoded-image cache ({e}); the images will be decoded again "
            f"next time. Received: cache_dir={folder}",
            stacklevel=2,
        )
        return array
    for old in folder.glob(f"{prefix}-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return array


def _read(path: pathlib.Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The entry memory-mapped, or None if it is absent, unreadable or of another shape."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):  # Absent, or truncated / not an .npy file: written again.
        return None
    if array.shape != shape or array.dtype != np.uint8:
        return None
    return array


def _write_atomically(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
