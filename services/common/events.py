"""Decoding the EventChunk stream message into plain columns, with the errors a client can act on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.api import events_pb2
from music_analytics.services.common.columns import (
    InvalidBatchError,
    drop_unused,
    indices,
    int64_column,
    string_array,
    uint32_column,
)
from music_analytics.services.common.contract import MAX_BATCH_ROWS, MAX_TIMESTAMP, MIN_TIMESTAMP
from music_analytics.services.common.timestamps import parse_timestamp

# Columns each service reads; the others may be absent from what it is sent.
USER, SONG, ARTIST, DURATION, TIMESTAMP = "user_id", "song_id", "artist", "duration", "timestamp"
PLAYS = "plays"
STRING_COLUMNS = (USER, SONG, ARTIST)
TIMESTAMP_RANGE = "is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC"


@dataclass(frozen=True)
class DictColumn:
    dictionary: pa.Array
    indices: np.ndarray


@dataclass(frozen=True)
class EventColumns:
    rows: int
    columns: dict[str, DictColumn]
    duration: np.ndarray | None
    timestamp: np.ndarray | None = None  # int64 seconds since 1970 UTC
    # uint32 plays each row stands for; None when every row is one play (the usual case, kept
    # free of a column of ones).
    plays: np.ndarray | None = None


def decode_chunk(chunk: events_pb2.EventChunk, needed: tuple[str, ...]) -> EventColumns:
    """The ``needed`` columns of one stream message; raises InvalidBatchError saying what is wrong,
    its message starting with the field at fault (``artist.indices: ...``).

    A message is checked whole, whichever columns this service reads: one that is invalid
    anywhere is refused. A batch: ``num_rows`` between 1 and MAX_BATCH_ROWS; every column it
    carries (and every column needed) exactly ``num_rows`` rows; each dictionary at most
    ``num_rows`` entries, its offsets non-negative, monotonic and within its data, its strings
    valid UTF-8 and not empty, every index below its size. Records: between 1 and MAX_BATCH_ROWS
    events, none with an empty string field.
    """
    kind = chunk.WhichOneof("payload")
    if kind == "batch":
        return _decode_batch(chunk.batch, needed)
    if kind == "records":
        return _decode_records(chunk.records, needed)
    raise InvalidBatchError("payload: the message carries no events; set `batch` or `records`")


def _decode_batch(batch: events_pb2.EventBatch, needed: tuple[str, ...]) -> EventColumns:
    rows = batch.num_rows
    if rows == 0:
        raise InvalidBatchError("num_rows: 0, an empty batch")
    if rows > MAX_BATCH_ROWS:
        raise InvalidBatchError(f"num_rows: {rows} exceeds the limit of {MAX_BATCH_ROWS} per message", "out_of_range")
    columns = {}
    for name in STRING_COLUMNS:
        if not batch.HasField(name):
            if name in needed:
                raise InvalidBatchError(f"{name}: column missing from the batch")
            continue
        dictionary, idx = _dictionary_column(getattr(batch, name), rows, name)
        if name in needed:
            columns[name] = DictColumn(*drop_unused(dictionary, idx))
    # proto3 cannot tell an absent bytes field from an empty one: no durations is absent.
    duration = uint32_column(batch.duration, rows, DURATION) if batch.duration or DURATION in needed else None
    timestamp = None
    if batch.timestamp or TIMESTAMP in needed:
        timestamp = int64_column(batch.timestamp, rows, TIMESTAMP)
        lo, hi = int(timestamp.min()), int(timestamp.max())
        if lo < MIN_TIMESTAMP or hi >= MAX_TIMESTAMP:
            raise InvalidBatchError(f"timestamp: {lo if lo < MIN_TIMESTAMP else hi} {TIMESTAMP_RANGE}", "out_of_range")
    return EventColumns(
        rows,
        columns,
        duration if DURATION in needed else None,
        timestamp if TIMESTAMP in needed else None,
        _plays(uint32_column(batch.plays, rows, PLAYS)) if batch.plays else None,
    )


def _plays(plays: np.ndarray) -> np.ndarray | None:
    if int(plays.min()) == 0:
        raise InvalidBatchError(f"plays: row {int(np.argmin(plays))} stands for 0 plays; a row is at least 1 play")
    return None if int(plays.max()) == 1 else plays


def _dictionary_column(column: events_pb2.DictionaryColumn, rows: int, name: str) -> tuple[pa.Array, np.ndarray]:
    dictionary = string_array(column.dictionary.offsets, column.dictionary.data, f"{name}.dictionary", rows)
    if pc.any(pc.equal(pc.binary_length(dictionary), 0)).as_py():
        raise InvalidBatchError(f"{name}.dictionary: holds an empty string; {name} must not be empty", "empty_field")
    return dictionary, indices(column.indices, rows, len(dictionary), f"{name}.indices")


def _decode_records(records: events_pb2.PlayEvents, needed: tuple[str, ...]) -> EventColumns:
    events = records.events
    if not events:
        raise InvalidBatchError("records.events: none, empty records")
    if len(events) > MAX_BATCH_ROWS:
        raise InvalidBatchError(
            f"records.events: {len(events)} events exceed the limit of {MAX_BATCH_ROWS} per message", "out_of_range"
        )
    # A record is checked whole, whichever columns this service reads: it is invalid anywhere.
    for i, event in enumerate(events):
        for name in STRING_COLUMNS:
            if not getattr(event, name):
                raise InvalidBatchError(f"records.events[{i}].{name} is empty", "empty_field")
    timestamp = None
    if TIMESTAMP in needed:
        timestamp = np.empty(len(events), dtype=np.int64)
        for i, event in enumerate(events):
            seconds = parse_timestamp(event.timestamp)
            if seconds is None:
                raise InvalidBatchError(
                    f"records.events[{i}].timestamp: {event.timestamp!r} is not an ISO 8601 date-time of a real day"
                )
            timestamp[i] = seconds
            if not MIN_TIMESTAMP <= timestamp[i] < MAX_TIMESTAMP:
                raise InvalidBatchError(
                    f"records.events[{i}].timestamp: {event.timestamp!r} {TIMESTAMP_RANGE}", "out_of_range"
                )
    columns = {}
    for name in needed:
        if name in (DURATION, TIMESTAMP):
            continue
        values = [getattr(e, name) for e in events]
        encoded = pc.dictionary_encode(pa.array(values, type=pa.string()))
        columns[name] = DictColumn(encoded.dictionary, encoded.indices.to_numpy().astype(np.uint32))
    duration = np.fromiter((e.duration for e in events), dtype=np.uint32, count=len(events))
    # 0 is proto3's unset: one play.
    plays = np.fromiter((e.plays or 1 for e in events), dtype=np.uint32, count=len(events))
    return EventColumns(
        len(events), columns, duration if DURATION in needed else None, timestamp, None if plays.max() == 1 else plays
    )


def string_array_message(arr: pa.Array | pa.ChunkedArray) -> events_pb2.StringArray:
    """A string array as the StringArray message: offsets rebased to 0, only the bytes they span
    copied (a slice of an array keeps its parent's whole data buffer)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    if len(arr) == 0:
        return events_pb2.StringArray(offsets=np.zeros(1, dtype="<i4").tobytes(), data=b"")
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, dtype="<i4")[arr.offset : arr.offset + len(arr) + 1]
    start, stop = int(offs[0]), int(offs[-1])
    raw = memoryview(data)[start:stop] if data is not None else b""
    return events_pb2.StringArray(offsets=(offs - start if start else offs).tobytes(), data=bytes(raw))


def dictionary_column_message(values: pa.Array, ids: np.ndarray) -> events_pb2.DictionaryColumn:
    """Rows ``values[ids]`` as a DictionaryColumn holding only the values used."""
    used, index = np.unique(ids, return_inverse=True)
    return events_pb2.DictionaryColumn(
        dictionary=string_array_message(pc.take(values, pa.array(used))),
        indices=index.reshape(-1).astype("<u4").tobytes(),
    )
