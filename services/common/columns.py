"""Columnar helpers shared by the services: Arrow-style string arrays and int64 key counting.

Plain data in, plain data out; nothing here knows about gRPC.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class InvalidBatchError(ValueError):
    """A columnar batch whose buffers do not describe a consistent table."""


def string_array(offsets: bytes, data: bytes, what: str) -> pa.Array:
    """Rebuild a UTF-8 string array from its offsets (int32 LE) and data buffers, validating both."""
    if len(offsets) % 4 or len(offsets) < 4:
        raise InvalidBatchError(f"{what}: offsets must hold count+1 int32 values, got {len(offsets)} bytes")
    count = len(offsets) // 4 - 1
    try:
        arr = pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        arr.validate(full=True)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise InvalidBatchError(f"{what}: {exc}") from None
    return arr


def indices(raw: bytes, rows: int, bound: int, what: str) -> np.ndarray:
    """Decode ``rows`` uint32 LE indices and check each is below ``bound``."""
    if len(raw) != rows * 4:
        raise InvalidBatchError(f"{what}: expected {rows} uint32 indices ({rows * 4} bytes), got {len(raw)} bytes")
    idx = np.frombuffer(raw, dtype="<u4")
    if rows and int(idx.max()) >= bound:
        raise InvalidBatchError(f"{what}: index {int(idx.max())} out of range for a dictionary of {bound} entries")
    return idx


def uint32_column(raw: bytes, rows: int, what: str) -> np.ndarray:
    if len(raw) != rows * 4:
        raise InvalidBatchError(f"{what}: expected {rows} uint32 values ({rows * 4} bytes), got {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<u4")


class StringIds:
    """Assigns dense ids to strings in first-seen order.

    Lookups go through a dict, but only for the distinct strings of a batch (its dictionary),
    not for every row: the per-row work stays in numpy.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.values: list[str] = []

    def __len__(self) -> int:
        return len(self.values)

    def map(self, strings: list[str]) -> np.ndarray:
        ids = self._ids
        values = self.values
        out = np.empty(len(strings), dtype=np.int64)
        for i, s in enumerate(strings):
            j = ids.get(s)
            if j is None:
                j = ids[s] = len(values)
                values.append(s)
            out[i] = j
        return out


def group_count(keys: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct int64 keys and their counts (or summed int64 weights), via Arrow's hash aggregation."""
    if weights is None:
        weights = np.ones(len(keys), dtype=np.int64)
    table = pa.table({"k": keys, "w": weights})
    grouped = table.group_by("k", use_threads=False).aggregate([("w", "sum")])
    return grouped.column("k").to_numpy(), grouped.column("w_sum").to_numpy()


class KeyCounter:
    """Counts int64 keys with memory bounded by the number of distinct keys.

    Batches are buffered and folded into the state once the buffer is as large as the state,
    so each row is re-hashed O(1) times on average (geometric merging) instead of once per batch.
    """

    MIN_FLUSH = 1 << 20

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def add(self, keys: np.ndarray) -> None:
        self._pending.append(keys)
        self._pending_rows += len(keys)
        if self._pending_rows >= max(self.MIN_FLUSH, len(self.keys)):
            self._fold()

    def __len__(self) -> int:
        self._fold()
        return len(self.keys)

    def _fold(self) -> None:
        if not self._pending:
            return
        new = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        if len(self.keys):
            keys = np.concatenate([self.keys, new])
            weights = np.concatenate([self.counts, np.ones(len(new), dtype=np.int64)])
            self.keys, self.counts = group_count(keys, weights)
        else:
            self.keys, self.counts = group_count(new)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._fold()
        return self.keys, self.counts


def take_strings(values: list[str] | pa.Array, ids: np.ndarray) -> pa.Array:
    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    return pc.take(arr, pa.array(ids))
