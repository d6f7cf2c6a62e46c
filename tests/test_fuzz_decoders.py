"""Fuzzing the stream decoders (``decode_chunk``) against a plain reference decoding.

What is generated: EventChunk messages, valid batches and records and the same mutated (offsets
garbage, swapped, negative or past the data; invalid UTF-8; empty strings; indices out of range or
of the wrong length; num_rows off by a few, 0 or huge; dictionaries larger than the batch; columns
missing; durations of the wrong length), raw bytes parsed as an EventChunk, and valid serialized
messages with bytes flipped. The only outcomes allowed: InvalidBatchError whose message starts
with a field the reference finds at fault and whose reason is the reference's, or a decoding
whose rows equal the reference's row for row. ``reference_decode`` is that reference: plain
Python (split the data by the offsets, decode UTF-8, look indices up), written from the rules in
``decode_chunk``'s docstring, not from its code.

The same messages go through a real MapReduce and a real UserBehavior service on loopback: only
INVALID_ARGUMENT naming the first bad message, or OK with the reference's counts; afterwards each
service still answers health SERVING.

Examples per run in `make test` (tests/fuzzing.py): 800 structured messages, 300 raw-bytes, 400
flipped-bytes and 150 client-encoded tables in process, and 250 streams of 1-3 messages through
each service: about 20 s on a 2-core machine, service start included. `make fuzz` runs
MUSIC_ANALYTICS_FUZZ_EXAMPLES of each in-process property and a fifth of that over gRPC. Every
file in tests/fuzz_corpus/decoders/ is replayed on every run.
"""

from __future__ import annotations

import collections
import itertools
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, example, given, note
from hypothesis import strategies as st

from music_analytics.api import events_pb2, mapreduce_pb2, userbehavior_pb2
from music_analytics.client.demo import ServiceProcess, start_service
from music_analytics.client.encoding import ALL_COLUMNS, encode_batch
from music_analytics.services.common.columns import InvalidBatchError
from music_analytics.services.common.contract import (
    MAPREDUCE,
    MAX_BATCH_ROWS,
    MAX_TIMESTAMP,
    MAX_TOP_N,
    MIN_TIMESTAMP,
    USERBEHAVIOR,
)
from music_analytics.services.common.events import ARTIST, DURATION, SONG, TIMESTAMP, USER, decode_chunk
from tests.fuzzing import fuzz_settings
from tests.support.events import set_fields

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus" / "decoders"
STRING_COLUMNS = (USER, SONG, ARTIST)
# What each service reads, and everything.
NEEDED = {
    "mapreduce": (ARTIST, SONG),
    "userbehavior": (USER, SONG, ARTIST, DURATION, TIMESTAMP),
    "all": (USER, SONG, ARTIST, DURATION, TIMESTAMP),
}
# Event times as text, with their seconds since 1970 written out (worked by hand, not computed).
KNOWN_TIMES = {
    "2024-01-01T00:00:00Z": 1_704_067_200,
    "2020-02-29": 1_582_934_400,
    "2016-12-31T23:59:60Z": 1_483_228_800,
    "2024-05-01T12:00+02:00": 1_714_557_600,
    "1969-12-31T23:59:59.5Z": -1,
}
# Parsed, but before 1900 or from 2200 on: out of range.
OUT_OF_RANGE_TIMES = ("1899-12-31T23:59:59Z", "2200-01-01")
UINT32_MAX = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# The reference decoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    field: str  # what the error message must start with: "artist.indices"
    reason: str


@dataclass(frozen=True)
class Decoded:
    rows: int
    columns: dict[str, list[str]]  # every needed string column, row by row
    duration: list[int] | None
    timestamp: list[int] | None = None


def _uint32s(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


def _int64s(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 8], "little", signed=True) for i in range(0, len(raw), 8)]


def _int32s(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 4], "little", signed=True) for i in range(0, len(raw), 4)]


def _reference_strings(name: str, array: events_pb2.StringArray, rows: int, problems: list[Problem]) -> list | None:
    """The dictionary's strings, or None after noting why it is unusable."""
    what = f"{name}.dictionary"
    if len(array.offsets) < 4 or len(array.offsets) % 4:
        problems.append(Problem(what, "invalid_batch"))
        return None
    offsets = _int32s(array.offsets)
    if len(offsets) - 1 > rows:
        problems.append(Problem(what, "invalid_batch"))
        return None
    if offsets[0] < 0 or offsets[-1] > len(array.data) or any(b < a for a, b in itertools.pairwise(offsets)):
        problems.append(Problem(what, "invalid_batch"))
        return None
    strings = []
    for start, end in itertools.pairwise(offsets):
        try:
            strings.append(array.data[start:end].decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(Problem(what, "invalid_batch"))
            return None
    if "" in strings:
        problems.append(Problem(what, "empty_field"))
        return None
    return strings


def _reference_batch(batch: events_pb2.EventBatch, needed: tuple[str, ...]) -> Decoded | list[Problem]:
    rows = batch.num_rows
    if rows == 0:
        return [Problem("num_rows", "invalid_batch")]
    if rows > MAX_BATCH_ROWS:
        return [Problem("num_rows", "out_of_range")]
    problems: list[Problem] = []
    columns = {}
    for name in STRING_COLUMNS:
        if not batch.HasField(name):
            if name in needed:
                problems.append(Problem(name, "invalid_batch"))
            continue
        column = getattr(batch, name)
        strings = _reference_strings(name, column.dictionary, rows, problems)
        if len(column.indices) != 4 * rows:
            problems.append(Problem(f"{name}.indices", "invalid_batch"))
            continue
        idx = _uint32s(column.indices)
        if strings is None:
            continue
        if any(i >= len(strings) for i in idx):
            problems.append(Problem(f"{name}.indices", "invalid_batch"))
            continue
        if name in needed:
            columns[name] = [strings[i] for i in idx]
    duration = None
    if batch.duration or DURATION in needed:
        if len(batch.duration) != 4 * rows:
            problems.append(Problem("duration", "invalid_batch"))
        else:
            duration = _uint32s(batch.duration)
    timestamp = None
    if batch.timestamp or TIMESTAMP in needed:
        if len(batch.timestamp) != 8 * rows:
            problems.append(Problem("timestamp", "invalid_batch"))
        else:
            timestamp = _int64s(batch.timestamp)
            if any(not MIN_TIMESTAMP <= t < MAX_TIMESTAMP for t in timestamp):
                problems.append(Problem("timestamp", "out_of_range"))
    if problems:
        return problems
    return Decoded(rows, columns, duration if DURATION in needed else None, timestamp if TIMESTAMP in needed else None)


def _reference_records(records: events_pb2.PlayEvents, needed: tuple[str, ...]) -> Decoded | list[Problem]:
    events = list(records.events)
    if not events:
        return [Problem("records.events", "invalid_batch")]
    if len(events) > MAX_BATCH_ROWS:
        return [Problem("records.events", "out_of_range")]
    problems = [
        Problem(f"records.events[{i}].{name}", "empty_field")
        for i, e in enumerate(events)
        for name in STRING_COLUMNS
        if getattr(e, name) == ""
    ]
    if TIMESTAMP in needed:
        for i, e in enumerate(events):
            if e.timestamp in OUT_OF_RANGE_TIMES:
                problems.append(Problem(f"records.events[{i}].timestamp", "out_of_range"))
            elif e.timestamp not in KNOWN_TIMES:  # anything else drawn is no date-time, or no such day
                problems.append(Problem(f"records.events[{i}].timestamp", "invalid_batch"))
    if problems:
        return problems
    columns = {name: [getattr(e, name) for e in events] for name in STRING_COLUMNS if name in needed}
    duration = [e.duration for e in events] if DURATION in needed else None
    timestamp = [KNOWN_TIMES[e.timestamp] for e in events] if TIMESTAMP in needed else None
    return Decoded(len(events), columns, duration, timestamp)


def reference_decode(chunk: events_pb2.EventChunk, needed: tuple[str, ...]) -> Decoded | list[Problem]:
    """What ``decode_chunk`` must return for ``chunk``, or every problem it may report."""
    if chunk.HasField("batch"):
        return _reference_batch(chunk.batch, needed)
    if chunk.HasField("records"):
        return _reference_records(chunk.records, needed)
    return [Problem("payload", "invalid_batch")]


_FIELD = re.compile(r"[^:\s]+")


def error_field(message: str) -> str:
    """The field an error message starts with."""
    match = _FIELD.match(message)
    return match.group(0) if match else ""


def check_against_reference(
    chunk: events_pb2.EventChunk, needed: tuple[str, ...]
) -> tuple[Decoded | list[Problem], str]:
    """Decode ``chunk`` and assert the outcome is the reference's; returns the reference's and a
    label of the outcome for Hypothesis' statistics."""
    expected = reference_decode(chunk, needed)
    try:
        got = decode_chunk(chunk, needed)
    except InvalidBatchError as exc:
        assert isinstance(expected, list), f"refused a valid message: {exc}"
        claimed = Problem(error_field(str(exc)), exc.reason)
        assert claimed in expected, f"error {str(exc)!r} ({exc.reason}) is none of the problems {expected}"
        return expected, f"refused: {exc.reason} at {claimed.field.split('[')[0]}"
    assert not isinstance(expected, list), f"accepted a message with problems {expected}"
    assert got.rows == expected.rows
    assert set(got.columns) == set(expected.columns)
    for name, values in expected.columns.items():
        column = got.columns[name]
        assert column.indices.dtype.kind == "u" and column.indices.dtype.itemsize == 4
        assert len(column.indices) == got.rows
        dictionary = column.dictionary.to_pylist()
        assert [dictionary[i] for i in column.indices.tolist()] == values, name
        # Only strings that really occur become users, artists or songs.
        assert sorted(set(column.indices.tolist())) == list(range(len(dictionary))), f"{name}: unused entries"
    if expected.duration is None:
        assert got.duration is None
    else:
        assert got.duration is not None and got.duration.tolist() == expected.duration
    if expected.timestamp is None:
        assert got.timestamp is None
    else:
        assert got.timestamp is not None and got.timestamp.tolist() == expected.timestamp
    return expected, "accepted"


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

# Any Unicode text except lone surrogates (which UTF-8 cannot encode), some of it multi-byte.
strings = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)
durations = st.integers(0, UINT32_MAX)
times = st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP - 1)


def _offsets(values: list[bytes], start: int) -> bytes:
    return struct.pack(f"<{len(values) + 1}i", *itertools.accumulate((len(v) for v in values), initial=start))


@st.composite
def valid_batches(draw: st.DrawFn) -> events_pb2.EventBatch:
    """A valid batch, with what the format allows a client to vary: dictionary order and unused
    entries, duplicate entries, data bytes no offset covers, columns the services do not read
    left out."""
    rows = draw(st.integers(1, 30))
    batch = events_pb2.EventBatch(num_rows=rows)
    for name in STRING_COLUMNS:
        if draw(st.integers(0, 19)) == 0:
            continue  # absent: valid for a service that does not read it
        size = draw(st.integers(1, rows))
        values = [s.encode() for s in draw(st.lists(strings, min_size=size, max_size=size))]
        lead = draw(st.binary(max_size=3))
        column = getattr(batch, name)
        column.dictionary.offsets = _offsets(values, len(lead))
        column.dictionary.data = lead + b"".join(values) + draw(st.binary(max_size=3))
        idx = draw(st.lists(st.integers(0, size - 1), min_size=rows, max_size=rows))
        column.indices = struct.pack(f"<{rows}I", *idx)
    if draw(st.integers(0, 9)):
        batch.duration = struct.pack(f"<{rows}I", *draw(st.lists(durations, min_size=rows, max_size=rows)))
    if draw(st.integers(0, 9)):
        batch.timestamp = struct.pack(f"<{rows}q", *draw(st.lists(times, min_size=rows, max_size=rows)))
    return batch


def _replace_int32(raw: bytes, position: int, value: int) -> bytes:
    return raw[: 4 * position] + struct.pack("<i", value) + raw[4 * position + 4 :]


@st.composite
def mutated_batches(draw: st.DrawFn) -> events_pb2.EventBatch:
    """A valid batch with one to three things broken."""
    batch = draw(valid_batches())
    rows = batch.num_rows
    present = [n for n in STRING_COLUMNS if batch.HasField(n)] or [ARTIST]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(present))
        column = getattr(batch, name)
        offsets, data = column.dictionary.offsets, column.dictionary.data
        count = max(len(offsets) // 4 - 1, 0)
        kind = draw(
            st.sampled_from([
                "offsets garbage", "offsets swapped", "offset replaced", "offsets cut", "data invalid utf-8",
                "data cut", "empty string", "index out of range", "indices resized", "num_rows changed",
                "dictionary grown", "column dropped", "duration resized", "timestamp resized",
                "timestamp out of range",
            ])
        )  # fmt: skip
        if kind == "offsets garbage":
            column.dictionary.offsets = draw(st.binary(max_size=4 * (rows + 3)))
        elif kind == "offsets swapped" and count >= 1:
            i, j = draw(st.integers(0, count)), draw(st.integers(0, count))
            values = _int32s(offsets)
            values[i], values[j] = values[j], values[i]
            column.dictionary.offsets = struct.pack(f"<{len(values)}i", *values)
        elif kind == "offset replaced" and count >= 0 and offsets:
            value = draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(len(data) - 2, len(data) + 2)))
            column.dictionary.offsets = _replace_int32(offsets, draw(st.integers(0, count)), value)
        elif kind == "offsets cut":
            column.dictionary.offsets = offsets[: len(offsets) - draw(st.integers(1, 5))]
        elif kind == "data invalid utf-8":
            at = draw(st.integers(0, len(data)))
            bad = draw(st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]))
            column.dictionary.data = data[:at] + bad + data[at:]
        elif kind == "data cut":
            column.dictionary.data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
        elif kind == "empty string" and count >= 1:
            values = _int32s(offsets)
            i = draw(st.integers(1, count))
            values[i] = values[i - 1]
            column.dictionary.offsets = struct.pack(f"<{len(values)}i", *values)
        elif kind == "index out of range" and len(column.indices) >= 4:  # a resize may leave 1-3 bytes
            value = draw(st.one_of(st.integers(count, count + 2), st.just(UINT32_MAX)))
            position = draw(st.integers(0, len(column.indices) // 4 - 1))
            raw = column.indices
            column.indices = raw[: 4 * position] + struct.pack("<I", value) + raw[4 * position + 4 :]
        elif kind == "indices resized":
            column.indices = column.indices[: len(column.indices) + draw(st.integers(-6, -1))] or draw(
                st.binary(min_size=1, max_size=12)
            )
        elif kind == "num_rows changed":
            batch.num_rows = draw(
                st.one_of(
                    st.integers(max(rows - 2, 0), rows + 2),
                    st.sampled_from([0, MAX_BATCH_ROWS, MAX_BATCH_ROWS + 1, UINT32_MAX]),
                )
            )
        elif kind == "dictionary grown":
            extra = [s.encode() for s in draw(st.lists(strings, min_size=1, max_size=rows + 2))]
            values = _int32s(offsets) if count else [0]
            more = list(itertools.accumulate((len(v) for v in extra), initial=values[-1]))[1:]
            column.dictionary.offsets = struct.pack(f"<{len(values) + len(more)}i", *values, *more)
            column.dictionary.data = data[: values[-1]] + b"".join(extra)
        elif kind == "column dropped":
            batch.ClearField(name)
        elif kind == "duration resized":
            batch.duration = draw(st.binary(max_size=4 * rows + 8))
        elif kind == "timestamp resized":
            batch.timestamp = draw(st.binary(max_size=8 * rows + 16))
        elif kind == "timestamp out of range":
            value = draw(st.sampled_from([MIN_TIMESTAMP - 1, MAX_TIMESTAMP, -(2**63), 2**63 - 1]))
            batch.timestamp = struct.pack(f"<{rows}q", *([value] * rows))
    return batch


@st.composite
def records(draw: st.DrawFn) -> events_pb2.PlayEvents:
    """Records, a few with an empty string, or none at all."""
    events = draw(
        st.lists(
            st.builds(
                events_pb2.PlayEvent,
                user_id=strings,
                song_id=strings,
                artist=strings,
                duration=durations,
                timestamp=st.one_of(
                    st.sampled_from(sorted(KNOWN_TIMES)), st.sampled_from(OUT_OF_RANGE_TIMES), st.text(max_size=4)
                ),
            ),
            max_size=12,
        )
    )
    if events and draw(st.integers(0, 3)) == 0:
        setattr(draw(st.sampled_from(events)), draw(st.sampled_from(STRING_COLUMNS)), "")
    return events_pb2.PlayEvents(events=events)


nonempty_chunks = st.one_of(
    st.builds(lambda b: events_pb2.EventChunk(batch=b), valid_batches()),
    st.builds(lambda b: events_pb2.EventChunk(batch=b), mutated_batches()),
    st.builds(lambda r: events_pb2.EventChunk(records=r), records()),
)
chunks = st.one_of(nonempty_chunks, st.just(events_pb2.EventChunk()))
needed_sets = st.sampled_from(sorted(NEEDED.values()))


# ---------------------------------------------------------------------------------------------
# In-process properties
# ---------------------------------------------------------------------------------------------


def _chunk(batch: events_pb2.EventBatch) -> events_pb2.EventChunk:
    return events_pb2.EventChunk(batch=batch)


def _one_row_batch(**fields) -> events_pb2.EventBatch:
    batch = events_pb2.EventBatch(num_rows=1)
    for name in STRING_COLUMNS:
        getattr(batch, name).dictionary.offsets = struct.pack("<2i", 0, 1)
        getattr(batch, name).dictionary.data = b"x"
        getattr(batch, name).indices = struct.pack("<I", 0)
    batch.duration = struct.pack("<I", 5)
    batch.timestamp = struct.pack("<q", 1_704_067_200)
    set_fields(batch, **fields)
    return batch


@fuzz_settings(800, deadline_ms=2000)
@given(chunk=chunks, needed=needed_sets)
@example(chunk=_chunk(_one_row_batch(artist__dictionary__offsets=struct.pack("<3i", 0, 1, 1))), needed=NEEDED["all"])
@example(chunk=_chunk(_one_row_batch(num_rows=MAX_BATCH_ROWS + 1)), needed=NEEDED["mapreduce"])
@example(chunk=_chunk(_one_row_batch(duration=b"\x00")), needed=NEEDED["mapreduce"])
def test_structured_messages_decode_as_the_reference_or_are_refused(chunk, needed):
    note(f"serialized: {chunk.SerializeToString().hex()}")
    event(check_against_reference(chunk, needed)[1])


@fuzz_settings(300, deadline_ms=2000)
@given(raw=st.binary(max_size=200), needed=needed_sets)
def test_raw_bytes_decode_as_the_reference_or_are_refused(raw, needed):
    try:
        chunk = events_pb2.EventChunk.FromString(raw)
    except DecodeError:
        event("not a protobuf message")
        return  # refused by the protobuf runtime before any decoder sees it (gRPC: see below)
    event(check_against_reference(chunk, needed)[1])


@st.composite
def flipped_bytes(draw: st.DrawFn) -> bytes:
    """A valid serialized chunk with a few bytes replaced, inserted or deleted: mostly still a
    parseable message, now with lengths, counts and offsets off."""
    raw = bytearray(draw(nonempty_chunks).SerializeToString())
    # Positions and byte values uniform (a Random seeded by Hypothesis): its own integers favour
    # 0, here the outer tag and length, which would leave most messages unparseable.
    uniform = draw(st.randoms(use_true_random=True))
    for _ in range(draw(st.integers(1, 3))):
        at = uniform.randint(0, len(raw))
        # Mostly replaced: an inserted or deleted byte shifts every length after it.
        op = draw(st.sampled_from(["replace", "replace", "replace", "insert", "delete"]))
        if op == "insert" or not raw:
            raw[at:at] = uniform.randbytes(uniform.randint(1, 2))
        elif op == "replace":
            raw[min(at, len(raw) - 1)] = uniform.randint(0, 255)
        else:
            del raw[min(at, len(raw) - 1)]
    return bytes(raw)


@fuzz_settings(400, deadline_ms=2000)
@given(raw=flipped_bytes(), needed=needed_sets)
def test_flipped_bytes_decode_as_the_reference_or_are_refused(raw, needed):
    note(f"serialized: {raw.hex()}")
    try:
        chunk = events_pb2.EventChunk.FromString(raw)
    except DecodeError:
        event("not a protobuf message")
        return
    event(check_against_reference(chunk, needed)[1])


@st.composite
def client_tables(draw: st.DrawFn) -> pa.Table:
    """Tables as the client encodes them: dictionary-typed columns (the fast CSV path) whose
    dictionary holds more than the rows use, sliced and filtered as batching and sharding do."""
    size = draw(st.integers(1, 40))
    columns = {}
    for name in STRING_COLUMNS:
        dictionary = draw(st.lists(strings, min_size=1, max_size=12, unique=True))
        idx = draw(st.lists(st.integers(0, len(dictionary) - 1), min_size=size, max_size=size))
        if draw(st.booleans()):
            columns[name] = pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(dictionary, pa.string()))
        else:
            columns[name] = pa.array([dictionary[i] for i in idx], pa.string())
    columns["duration"] = pa.array(draw(st.lists(durations, min_size=size, max_size=size)), pa.uint32())
    columns["timestamp"] = pa.array(draw(st.lists(times, min_size=size, max_size=size)), pa.int64())
    table = pa.table(columns)
    start = draw(st.integers(0, size - 1))
    table = table.slice(start, draw(st.integers(1, size - start)))
    keep = draw(st.lists(st.booleans(), min_size=table.num_rows, max_size=table.num_rows))
    keep[draw(st.integers(0, table.num_rows - 1))] = True
    return table.filter(pa.array(keep))


@fuzz_settings(150, deadline_ms=2000)
@given(table=client_tables(), needed=needed_sets)
def test_what_the_client_encodes_decodes_to_the_same_rows(table, needed):
    chunk = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(table, ALL_COLUMNS)).events
    expected, _ = check_against_reference(chunk, needed)
    assert isinstance(expected, Decoded), expected
    for name in STRING_COLUMNS:
        if name in needed:
            assert expected.columns[name] == table[name].cast(pa.string()).to_pylist()
        # Compact: every entry sent is used by some row.
        column = getattr(chunk.batch, name)
        assert len(set(_uint32s(column.indices))) == len(column.dictionary.offsets) // 4 - 1


# ---------------------------------------------------------------------------------------------
# Each check, on its own
# ---------------------------------------------------------------------------------------------


def refusal(chunk: events_pb2.EventChunk, needed: tuple[str, ...]) -> InvalidBatchError:
    with pytest.raises(InvalidBatchError) as err:
        decode_chunk(chunk, needed)
    return err.value


def test_num_rows_past_the_bound_is_out_of_range_before_any_column_is_read():
    err = refusal(_chunk(_one_row_batch(num_rows=MAX_BATCH_ROWS + 1)), NEEDED["all"])
    assert err.reason == "out_of_range" and str(err).startswith("num_rows: ")
    assert str(MAX_BATCH_ROWS) in str(err)


def _records_message(count: int) -> events_pb2.EventChunk:
    # Serialized by hand: a million PlayEvent objects would take the test a minute to build.
    event_bytes = events_pb2.PlayEvent(
        user_id="u", song_id="s", artist="A", duration=1, timestamp="2024-01-01T00:00:00Z"
    ).SerializeToString()
    one = b"\x0a" + bytes([len(event_bytes)]) + event_bytes  # PlayEvents.events, field 1
    body = one * count
    return events_pb2.EventChunk.FromString(b"\x12" + _varint(len(body)) + body)  # EventChunk.records, field 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_records_past_the_bound_are_out_of_range():
    err = refusal(_records_message(MAX_BATCH_ROWS + 1), NEEDED["userbehavior"])
    assert err.reason == "out_of_range" and str(err).startswith("records.events: ")
    assert decode_chunk(_records_message(MAX_BATCH_ROWS), NEEDED["userbehavior"]).rows == MAX_BATCH_ROWS


def test_dictionary_with_more_entries_than_rows_is_refused():
    offsets = struct.pack("<3i", 0, 1, 2)
    err = refusal(_chunk(_one_row_batch(song_id__dictionary__offsets=offsets, song_id__dictionary__data=b"xy")),
                  NEEDED["mapreduce"])  # fmt: skip
    assert err.reason == "invalid_batch" and str(err).startswith("song_id.dictionary: 2 entries for 1 rows")


def test_durations_of_the_wrong_length_are_refused_by_a_service_that_does_not_read_them():
    err = refusal(_chunk(_one_row_batch(duration=struct.pack("<2I", 1, 2))), NEEDED["mapreduce"])
    assert err.reason == "invalid_batch" and str(err).startswith("duration: expected 1 uint32 values")


def test_a_column_the_service_does_not_read_is_checked_too():
    bad_utf8 = _chunk(_one_row_batch(user_id__dictionary__data=b"\xff"))
    err = refusal(bad_utf8, NEEDED["mapreduce"])
    assert err.reason == "invalid_batch" and str(err).startswith("user_id.dictionary: ")
    wrong_rows = _chunk(_one_row_batch(user_id__indices=b""))
    assert str(refusal(wrong_rows, NEEDED["mapreduce"])).startswith("user_id.indices: expected 1 uint32 indices")


def test_a_missing_column_the_service_reads_is_named():
    batch = _one_row_batch()
    batch.ClearField("user_id")
    assert str(refusal(_chunk(batch), NEEDED["userbehavior"])).startswith("user_id: column missing")
    assert decode_chunk(_chunk(batch), NEEDED["mapreduce"]).rows == 1


def test_a_timestamp_outside_the_accepted_range_is_out_of_range():
    late = struct.pack("<q", MAX_TIMESTAMP)
    err = refusal(_chunk(_one_row_batch(timestamp=late)), NEEDED["userbehavior"])
    assert err.reason == "out_of_range" and str(err).startswith(f"timestamp: {MAX_TIMESTAMP} is outside")


def test_client_sends_a_shard_with_only_the_dictionary_entries_its_rows_use():
    """A shard of a parsed block keeps the block's whole dictionary in Arrow; on the wire it must
    not (the services refuse a dictionary larger than its batch)."""
    artists = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, 3], pa.int32()), pa.array(list("abcd")))
    table = pa.table({"user_id": list("uvwxy"), "song_id": list("sssss"), "artist": artists,
                      "duration": pa.array([1, 2, 3, 4, 5], pa.uint32()),
                      "timestamp": pa.array([0, 1, 2, 3, 4], pa.int64())})  # fmt: skip
    table = table.filter(pa.array([False, False, False, True, True]))
    chunk = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(table)).events
    assert chunk.batch.artist.dictionary.data == b"d"
    decoded = decode_chunk(chunk, NEEDED["mapreduce"])
    assert decoded.columns[ARTIST].dictionary.to_pylist() == ["d"]


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus_message(path: Path):
    """Each file is one serialized EventChunk named ``<field>--<what>.bin`` (the reference must
    find that field at fault) or ``valid--<what>.bin``."""
    field, _ = path.stem.split("--", 1)
    chunk = events_pb2.EventChunk.FromString(path.read_bytes())
    outcomes = [check_against_reference(chunk, needed)[0] for needed in NEEDED.values()]
    if field == "valid":
        assert all(isinstance(o, Decoded) for o in outcomes)
    else:
        assert any(isinstance(o, list) and field in {p.field for p in o} for o in outcomes), outcomes


def test_corpus_is_there():
    assert len(corpus_files()) >= 15


# ---------------------------------------------------------------------------------------------
# Over gRPC, through real services
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_services(tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("fuzz-service-logs")
    processes = {name: start_service(name, logs / f"{name}.log") for name in ("mapreduce", "userbehavior")}
    try:
        for process in processes.values():
            process.wait_serving()
        yield processes
        for process in processes.values():
            assert_serving(process)
    finally:
        for process in processes.values():
            process.stop()


def assert_serving(process: ServiceProcess) -> None:
    assert process.process.poll() is None, f"{process.name} exited"
    with grpc.insecure_channel(process.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _expected_call(messages: list[events_pb2.EventChunk], needed: tuple[str, ...]):
    """The index of the first message the reference refuses with its problems, or None and the
    concatenated reference decoding of all of them."""
    decoded = []
    for index, chunk in enumerate(messages):
        outcome = reference_decode(chunk, needed)
        if isinstance(outcome, list):
            return index, outcome
        decoded.append(outcome)
    return None, decoded


def _check_refusal(err: grpc.RpcError, index: int, problems: list[Problem]) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    prefix = f"message {index}: "
    assert err.details().startswith(prefix), err.details()
    field = error_field(err.details()[len(prefix) :])
    assert field in {p.field for p in problems}, (err.details(), problems)


def count_plays(process: ServiceProcess, messages: list[events_pb2.EventChunk]) -> str:
    """One CountPlays call; asserts its outcome is the reference's, which it returns."""
    index, outcome = _expected_call(messages, NEEDED["mapreduce"])
    requests = [mapreduce_pb2.CountPlaysRequest(events=m, top_n=MAX_TOP_N) for m in messages]
    with grpc.insecure_channel(process.address) as channel:
        call = channel.stream_unary(
            MAPREDUCE.method,
            request_serializer=mapreduce_pb2.CountPlaysRequest.SerializeToString,
            response_deserializer=mapreduce_pb2.CountPlaysResponse.FromString,
        )
        try:
            reply = call(iter(requests), timeout=30)
        except grpc.RpcError as err:
            assert index is not None, f"refused a valid stream: {err.code()} {err.details()}"
            _check_refusal(err, index, outcome)
            return "refused"
    assert index is None, f"accepted a stream whose message {index} has problems {outcome}"
    plays = collections.Counter(
        f"{artist} - {song}" for d in outcome for artist, song in zip(d.columns[ARTIST], d.columns[SONG], strict=True)
    )
    assert reply.events_processed == sum(d.rows for d in outcome)
    assert reply.distinct_songs == len(plays)
    # The contract's order written out here, not taken from the code under test.
    want = sorted(plays.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TOP_N]
    assert [(s.song, s.plays) for s in reply.top_songs] == want
    return "accepted"


def analyze_users(process: ServiceProcess, messages: list[events_pb2.EventChunk]) -> str:
    """One AnalyzeUsers call; asserts its outcome is the reference's, which it returns."""
    index, outcome = _expected_call(messages, NEEDED["userbehavior"])
    requests = [userbehavior_pb2.AnalyzeUsersRequest(events=m) for m in messages]
    with grpc.insecure_channel(process.address) as channel:
        call = channel.stream_stream(
            USERBEHAVIOR.method,
            request_serializer=userbehavior_pb2.AnalyzeUsersRequest.SerializeToString,
            response_deserializer=userbehavior_pb2.AnalyzeUsersResponse.FromString,
        )
        try:
            replies = list(call(iter(requests), timeout=30))
        except grpc.RpcError as err:
            assert index is not None, f"refused a valid stream: {err.code()} {err.details()}"
            _check_refusal(err, index, outcome)
            return "refused"
    assert index is None, f"accepted a stream whose message {index} has problems {outcome}"
    total_time: collections.Counter[str] = collections.Counter()
    for d in outcome:
        for user, seconds in zip(d.columns[USER], d.duration, strict=True):
            total_time[user] += seconds
    assert {r.events_processed for r in replies} == {sum(d.rows for d in outcome)}
    got = {
        u: t for r in replies if r.HasField("users") for u, t in zip(r.users.user_ids, r.users.total_time, strict=True)
    }
    assert got == dict(total_time)
    return "accepted"


# Valid batches weigh more here: a stream is refused if any of its messages is.
stream_chunks = st.one_of(
    st.builds(lambda b: events_pb2.EventChunk(batch=b), valid_batches()),
    st.builds(lambda b: events_pb2.EventChunk(batch=b), valid_batches()),
    chunks,
)


@fuzz_settings(250, deadline_ms=30_000, share=0.2)
@given(messages=st.lists(stream_chunks, min_size=1, max_size=3))
def test_services_answer_fuzzed_streams_with_invalid_argument_or_the_reference_counts(fuzzed_services, messages):
    for chunk in messages:
        note(f"serialized: {chunk.SerializeToString().hex()}")
    event(f"CountPlays {count_plays(fuzzed_services['mapreduce'], messages)}")
    event(f"AnalyzeUsers {analyze_users(fuzzed_services['userbehavior'], messages)}")


def _serving_after_each(fuzzed_services) -> None:
    for process in fuzzed_services.values():
        assert_serving(process)


def test_services_still_serve_after_the_fuzzed_streams(fuzzed_services):
    _serving_after_each(fuzzed_services)
    # And still count right.
    good = events_pb2.EventChunk(batch=_one_row_batch())
    count_plays(fuzzed_services["mapreduce"], [good])
    analyze_users(fuzzed_services["userbehavior"], [good])


def test_a_message_that_is_not_protobuf_is_invalid_argument(fuzzed_services):
    with grpc.insecure_channel(fuzzed_services["mapreduce"].address) as channel:
        call = channel.stream_unary(MAPREDUCE.method, response_deserializer=mapreduce_pb2.CountPlaysResponse.FromString)
        # Field 1 (events) as a length-delimited field whose record holds a string with bad UTF-8.
        bad_utf8 = (
            events_pb2.EventChunk(
                records=events_pb2.PlayEvents(events=[events_pb2.PlayEvent(user_id="u", song_id="s", artist="A")])
            )
            .SerializeToString()
            .replace(b"A", b"\xff")
        )
        for payload in (b"\x0a" + _varint(len(bad_utf8)) + bad_utf8, b"\xff\xff\xff"):
            with pytest.raises(grpc.RpcError) as err:
                call(iter([payload]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
    _serving_after_each(fuzzed_services)
