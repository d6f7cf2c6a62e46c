"""Small valid event tables and stream messages for tests that talk to a service directly."""

from __future__ import annotations

import pyarrow as pa
from google.protobuf.message import Message

from music_analytics.api import mapreduce_pb2
from music_analytics.client.encoding import encode_batch


def good_table(rows: int = 3) -> pa.Table:
    return pa.table({
        "user_id": [f"u{i}" for i in range(rows)], "song_id": ["s"] * rows, "artist": ["A"] * rows,
        "duration": pa.array([1] * rows, type=pa.uint32()),
        "timestamp": pa.array([1_700_000_000 + 60 * i for i in range(rows)], type=pa.int64()),
    })  # fmt: skip


def count_plays_request(table: pa.Table, top_n: int = 0) -> mapreduce_pb2.CountPlaysRequest:
    """``table`` as one CountPlays stream message, encoded as the client encodes it."""
    request = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(table))
    request.top_n = top_n
    return request


def set_fields(message: Message, **fields: object) -> None:
    """Set ``fields`` on ``message``; a name like ``artist__dictionary__offsets`` reaches into
    sub-messages, so a test can break exactly one field of an otherwise valid message."""
    for path, value in fields.items():
        target = message
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
