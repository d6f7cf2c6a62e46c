"""Encoding event tables as compact columnar stream messages, and sharding rows by key."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.api import events_pb2, userbehavior_pb2
from music_analytics.client.csv_source import STRING_COLUMNS
from music_analytics.services.common.events import string_array_message

# 64k rows keep a message near 2 MB for typical ids (PERF-NOTES: 256k rows break 4 MB).
BATCH_ROWS = 65_536


def _dictionary_column(column: pa.ChunkedArray | pa.Array) -> events_pb2.DictionaryColumn:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        # Columns from the fast CSV path arrive dictionary-encoded by the parser already.
        dictionary, idx = _compact(column.dictionary, column.indices.to_numpy())
    else:
        encoded = pc.dictionary_encode(column)
        dictionary, idx = encoded.dictionary, encoded.indices.to_numpy()
    return events_pb2.DictionaryColumn(
        dictionary=string_array_message(dictionary),
        indices=idx.astype("<u4", copy=False).tobytes(),
    )


def _compact(dictionary: pa.Array, idx: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Only the dictionary entries some row uses, indices renumbered to match.

    A slice or a shard of a parsed block keeps the whole block's dictionary; the services refuse
    a dictionary with more entries than rows, and entries no row uses are bytes sent for nothing.
    """
    used = np.zeros(len(dictionary), dtype=bool)
    used[idx] = True
    if used.all():
        return dictionary, idx
    renumbered = np.cumsum(used, dtype=np.int32) - 1
    return dictionary.filter(pa.array(used)), renumbered[idx]


ALL_COLUMNS = (*STRING_COLUMNS, "duration", "timestamp", "plays")


def encode_batch(table: pa.Table, columns: tuple[str, ...] = ALL_COLUMNS) -> bytes:
    """One serialized stream request holding ``columns`` of ``table``.

    ``events`` is field 1 of every streaming request type (CountPlaysRequest,
    AnalyzeUsersRequest), so the same bytes are a valid request for either service. Each
    service is sent only the columns it reads: fewer bytes to copy on both sides.
    """
    batch = events_pb2.EventBatch(num_rows=table.num_rows)
    for name in columns:
        if name == "duration":
            batch.duration = table["duration"].combine_chunks().to_numpy().astype("<u4", copy=False).tobytes()
        elif name == "timestamp":
            batch.timestamp = table["timestamp"].combine_chunks().to_numpy().astype("<i8", copy=False).tobytes()
        elif name == "plays":
            # Only inputs with a plays column have one; without it every row is one play.
            if "plays" in table.column_names:
                batch.plays = table["plays"].combine_chunks().to_numpy().astype("<u4", copy=False).tobytes()
        else:
            getattr(batch, name).CopyFrom(_dictionary_column(table[name]))
    return userbehavior_pb2.AnalyzeUsersRequest(events=events_pb2.EventChunk(batch=batch)).SerializeToString()


def batches(table: pa.Table, rows: int = BATCH_ROWS) -> list[pa.Table]:
    """Slices of at most ``rows`` rows, cut along the table's chunks (each chunk of a
    dictionary-typed column has a dictionary of its own)."""
    out = []
    for batch in table.to_batches():
        for start in range(0, batch.num_rows, rows):
            out.append(pa.Table.from_batches([batch.slice(start, rows)]))
    return out


_P = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def string_hashes(arr: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each string (same in every process and run, unlike ``hash()``)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if len(arr) == 0:
        return np.empty(0, dtype=np.uint64)
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, dtype="<i4")[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    base = offs[0]
    lengths = np.diff(offs)
    raw = np.frombuffer(data, dtype=np.uint8)[base : offs[-1]].astype(np.uint64)
    starts = offs[:-1] - base
    position = np.arange(len(raw), dtype=np.int64) - np.repeat(starts, lengths)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _P, dtype=np.uint64))
    weighted = (raw + np.uint64(1)) * powers[position]
    h = np.zeros(len(arr), dtype=np.uint64)
    nonempty = lengths > 0
    if nonempty.any():
        h[nonempty] = np.add.reduceat(weighted, starts[nonempty])
    h ^= lengths.astype(np.uint64)
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


def shard_rows(table: pa.Table, key: str, shards: int) -> np.ndarray:
    """The shard (0..shards-1) of every row, by a stable hash of its key column.

    ``key`` is a column name, or "song" for the "{artist} - {song_id}" key MapReduce counts by.
    Partitioning by key (the MapReduce shuffle) makes each replica's result exact for its keys,
    so merging replicas is concatenation, and a lost replica can be rebuilt from the input alone.
    """

    def text(name: str) -> pa.Array:
        column = table[name].combine_chunks()
        return column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column

    if key == "song":
        encoded = pc.dictionary_encode(pc.binary_join_element_wise(text("artist"), text("song_id"), " - "))
    else:
        column = table[key].combine_chunks()
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    per_key = (string_hashes(encoded.dictionary) % np.uint64(shards)).astype(np.int64)
    return per_key[encoded.indices.to_numpy()]
