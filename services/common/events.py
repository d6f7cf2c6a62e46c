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
    string_array,
    uint32_column,
)

# Columns each service reads; the others may be absent from what it is sent.
USER, SONG, ARTIST, DURATION = "user_id", "song_id", "artist", "duration"


@dataclass(frozen=True)
class DictColumn:
    dictionary: pa.Array
    indices: np.ndarray


@dataclass(frozen=True)
class EventColumns:
    rows: int
    columns: dict[str, DictColumn]
    duration: np.ndarray | None


def decode_chunk(chunk: events_pb2.EventChunk, needed: tuple[str, ...]) -> EventColumns:
    """The ``needed`` columns of one stream message; raises InvalidBatchError saying what is wrong."""
    kind = chunk.WhichOneof("payload")
    if kind == "batch":
        return _decode_batch(chunk.batch, needed)
    if kind == "records":
        return _decode_records(chunk.records, needed)
    raise InvalidBatchError("message carries no events: set `batch` or `records`")


def _decode_batch(batch: events_pb2.EventBatch, needed: tuple[str, ...]) -> EventColumns:
    rows = batch.num_rows
    if rows == 0:
        raise InvalidBatchError("empty batch: num_rows is 0")
    columns = {}
    for name in needed:
        if name == DURATION:
            continue
        if not batch.HasField(name):
            raise InvalidBatchError(f"batch lacks column {name!r}")
        column = getattr(batch, name)
        dictionary = string_array(column.dictionary.offsets, column.dictionary.data, f"{name}.dictionary")
        if pc.any(pc.equal(pc.binary_length(dictionary), 0)).as_py():
            raise InvalidBatchError(f"{name}.dictionary holds an empty string; {name} must not be empty", "empty_field")
        idx = indices(column.indices, rows, len(dictionary), f"{name}.indices")
        columns[name] = DictColumn(*drop_unused(dictionary, idx))
    duration = uint32_column(batch.duration, rows, "duration") if DURATION in needed else None
    return EventColumns(rows, columns, duration)


def _decode_records(records: events_pb2.PlayEvents, needed: tuple[str, ...]) -> EventColumns:
    events = records.events
    if not events:
        raise InvalidBatchError("empty records: no events")
    # A record is checked whole, whichever columns this service reads: it is invalid anywhere.
    for i, event in enumerate(events):
        for name in (USER, SONG, ARTIST):
            if not getattr(event, name):
                raise InvalidBatchError(f"records.events[{i}].{name} is empty", "empty_field")
    columns = {}
    for name in needed:
        if name == DURATION:
            continue
        values = [getattr(e, name) for e in events]
        encoded = pc.dictionary_encode(pa.array(values, type=pa.string()))
        columns[name] = DictColumn(encoded.dictionary, encoded.indices.to_numpy().astype(np.uint32))
    duration = np.fromiter((e.duration for e in events), dtype=np.uint32, count=len(events))
    return EventColumns(len(events), columns, duration if DURATION in needed else None)
