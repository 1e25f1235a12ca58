"""Adapted weights kept between requests: a task seen before is answered without adapting again.

An entry is keyed by a SHA-256 digest of the model, its version and every input that decides
the adaptation (the support set's bytes, shapes and dtypes, and the protocol's values), so two
requests share an entry only if adapting them would compute the same weights. The cache is
bounded in bytes with least-recently-used eviction; identical requests in flight adapt once
(the others wait for the first); a version's entries go when it is unloaded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Mapping

import numpy as np


def adaptation_key(
    model: str, version: int, inputs: Mapping[str, np.ndarray], protocol: Mapping[str, object]
) -> str:
    """The hex SHA-256 of everything that decides an adaptation.

    Args:
        model: str. The model's name.
        version: int. Its version.
        inputs: the arrays the adaptation reads (support images, labels or targets), by key.
        protocol: the settings it runs with (inner steps, batch size, learning rate, ...), by key.
    """
    digest = hashlib.sha256()

    def part(*items) -> None:
        for item in items:
            data = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

    part("model", model, "version", int(version))
    for key in sorted(inputs):
        array = np.ascontiguousarray(inputs[key])
        part("input", key, array.dtype.str, array.shape, array.tobytes())
    for key in sorted(protocol):
        value = protocol[key]
        if isinstance(value, np.ndarray | np.generic):
            value = np.asarray(value)
            value = (value.dtype.str, value.shape, value.tobytes())
        part("protocol", key, repr(value))
    return digest.hexdigest()


@dataclasses.dataclass
class CacheStats:
    """What the cache has done since it started."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0


class _Flight:
    def __init__(self):
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None


class AdaptationCache:
    """A thread-safe LRU of adapted weights (numpy arrays), bounded in bytes.

    Args:
        capacity_bytes: int. The most the entries may hold together; 0 turns the cache off
            (every call adapts).
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(
                f"`capacity_bytes` must be >= 0. Received: capacity_bytes={capacity_bytes}"
            )
        self.capacity = int(capacity_bytes)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[tuple, np.ndarray]] = (
            collections.OrderedDict()
        )
        self._flights: dict[str, _Flight] = {}
        self._bytes = 0
        self._stats = CacheStats(capacity_bytes=self.capacity)

    def get_or_adapt(
        self,
        key: str,
        owner: tuple,
        adapt: Callable[[], np.ndarray],
        wait_seconds: float | None = None,
    ) -> tuple[np.ndarray, bool]:
        """The weights cached under `key`, or `adapt()`'s result (then cached). Returns
        `(weights, hit)`. `owner` is `(model, version)`, for `drop`.

        A call that finds the same key being adapted by another waits for it (at most
        `wait_seconds`, then `TimeoutError`) and shares its result (or its error, which is not
        cached).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                return entry[1], True
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
                self._stats.misses += 1
            else:
                self._stats.hits += 1
        if not leader:
            if not flight.done.wait(wait_seconds):
                raise TimeoutError(f"The same adaptation did not finish within {wait_seconds} s.")
            if flight.error is not None:
                raise flight.error
            return flight.value, True
        try:
            value = np.asarray(adapt())
            value.setflags(write=False)  # shared by every later hit
            flight.value = value
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[key]
                if flight.error is None:
                    self._insert(key, owner, flight.value)
            flight.done.set()
        return value, False

    def _insert(self, key: str, owner: tuple, value: np.ndarray) -> None:
        size = value.nbytes
        if size > self.capacity:
            return  # larger than the whole cache: answered, not kept
        while self._bytes + size > self.capacity and self._entries:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            self._stats.evictions += 1
        self._entries[key] = (owner, value)
        self._bytes += size

    def drop(self, model: str, version: int | None = None) -> int:
        """Removes the entries of `model` (of one `version`, if given); returns how many."""
        with self._lock:
            gone = [
                k
                for k, (owner, _) in self._entries.items()
                if owner[0] == model and (version is None or owner[1] == version)
            ]
            for k in gone:
                _, value = self._entries.pop(k)
                self._bytes -= value.nbytes
            return len(gone)

    def stats(self) -> CacheStats:
        with self._lock:
            return dataclasses.replace(self._stats, entries=len(self._entries), bytes=self._bytes)
