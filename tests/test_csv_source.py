"""Reading CSV input: every kind of bad row is rejected with its line and reason, the rest is kept."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pytest

from music_analytics.client.csv_source import (
    BadRowError,
    InputError,
    Rejection,
    _parse_exact,
    _parse_fast,
    read_events,
    read_header,
)

HEADER = b"user_id,song_id,artist,duration,timestamp\n"
NAMES = ("user_id", "song_id", "artist", "duration", "timestamp")


def epoch(*parts: int, offset: dt.timedelta = dt.timedelta(0)) -> int:
    """Epoch seconds of a wall-clock time at a UTC ``offset``, by datetime (the test's own oracle)."""
    return int(dt.datetime(*parts, tzinfo=dt.timezone(offset)).timestamp())


def write(tmp_path: Path, body: bytes, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


def read_all(path: Path, **kwargs) -> tuple[list[dict], list]:
    rows, rejected = [], []
    for chunk in read_events(path, **kwargs):
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
    return rows, rejected


BAD_ROWS = [
    (b"u1,s1,A,10\n", "wrong_field_count", None),
    (b"u1,s1,A,10,2024-01-01T00:00:00Z,extra\n", "wrong_field_count", None),
    (b"u1,s1,A,ten,2024-01-01T00:00:00Z\n", "invalid_duration", "duration"),
    (b"u1,s1,A,-5,2024-01-01T00:00:00Z\n", "invalid_duration", "duration"),
    (b"u1,s1,A,1.5,2024-01-01T00:00:00Z\n", "invalid_duration", "duration"),
    (b"u1,s1,A,0x10,2024-01-01T00:00:00Z\n", "invalid_duration", "duration"),
    (b"u1,s1,A,4294967296,2024-01-01T00:00:00Z\n", "invalid_duration", "duration"),
    (b"u1,s1,A,10,yesterday\n", "invalid_timestamp", "timestamp"),
    (b"u1,s1,A,10,2024-02-30T00:00:00Z\n", "invalid_timestamp", "timestamp"),
    (b"u1,s1,A,10,2024-01-01T25:00:00Z\n", "invalid_timestamp", "timestamp"),
    (b"u1,s1,A,10,1850-01-01\n", "invalid_timestamp", "timestamp"),  # the services refuse it: outside 1900..2200
    (b",s1,A,10,2024-01-01T00:00:00Z\n", "empty_field", "user_id"),
    (b"u1,,A,10,2024-01-01T00:00:00Z\n", "empty_field", "song_id"),
    (b'u1,s1,"",10,2024-01-01T00:00:00Z\n', "empty_field", "artist"),
    (b"u1,s1,\xffArtist,10,2024-01-01T00:00:00Z\n", "invalid_utf8", "artist"),
]
GOOD = b"u0,s0,Z,7,2024-01-01T00:00:00Z\n"


@pytest.mark.parametrize(("row", "reason", "field"), BAD_ROWS)
def test_bad_row_is_rejected_with_line_and_reason_and_the_rest_kept(tmp_path, row, reason, field):
    path = write(tmp_path, HEADER + GOOD + row + GOOD)
    rows, rejected = read_all(path)
    assert [r["user_id"] for r in rows] == ["u0", "u0"]
    assert len(rejected) == 1
    assert (rejected[0].line, rejected[0].reason, rejected[0].field) == (3, reason, field)
    assert str(path) in rejected[0].describe(str(path))


@pytest.mark.parametrize(("row", "reason", "field"), BAD_ROWS)
def test_strict_stops_at_the_first_bad_row_naming_file_and_line(tmp_path, row, reason, field):
    path = write(tmp_path, HEADER + GOOD + row)
    with pytest.raises(BadRowError, match=f"{path}:3"):
        read_all(path, strict=True)


def test_accepted_forms_of_iso_8601(tmp_path):
    stamps = [b"2024-01-01", b"2024-01-01T10:00", b"2024-01-01T10:00:00", b"2024-01-01 10:00:00",
              b"2024-01-01T10:00:00.123456Z", b"2024-01-01T10:00:00+02:00", b"2024-01-01T10:00:00-0530",
              b"2024-02-29T00:00:00Z"]  # fmt: skip
    path = write(tmp_path, HEADER + b"".join(b"u,s,A,1," + s + b"\n" for s in stamps))
    rows, rejected = read_all(path)
    assert rejected == [] and len(rows) == len(stamps)


def test_quoting_crlf_unicode_bom_and_blank_lines(tmp_path):
    body = (
        b"\xef\xbb\xbfuser_id,song_id,artist,duration,timestamp\r\n"
        b'u1,s1,"Earth, Wind & Fire",10,2024-01-01T00:00:00Z\r\n'
        b'u2,s2,"The ""Quoted"" Band",20,2024-01-01T00:00:00Z\r\n'
        b"\r\n"
        b'u3,s3,"Line\r\nBreak",30,2024-01-01T00:00:00Z\r\n'
        + "ü4,s4,Björk,40,2024-01-01T00:00:00Z\r\n".encode()
        + b"u5,s5,bad,x,2024-01-01T00:00:00Z\r\n"
        b"u6,s6,Last,60,2024-01-01T00:00:00Z"  # no final line break
    )
    rows, rejected = read_all(write(tmp_path, body))
    assert [r["artist"] for r in rows] == ["Earth, Wind & Fire", 'The "Quoted" Band', "Line\r\nBreak", "Björk", "Last"]
    assert [r["duration"] for r in rows] == [10, 20, 30, 40, 60]
    # Line 5 is blank; the quoted line break makes row u3 span lines 5-6... u5 is on line 8.
    assert [(r.line, r.reason) for r in rejected] == [(8, "invalid_duration")]


def test_header_columns_in_another_order_with_extra_columns(tmp_path):
    body = b"timestamp,artist,extra,user_id,duration,song_id\n2024-01-01,A,x,u1,5,s1\n"
    rows, rejected = read_all(write(tmp_path, body))
    assert rows == [{"user_id": "u1", "song_id": "s1", "artist": "A", "duration": 5, "timestamp": epoch(2024, 1, 1)}]
    assert rejected == []


def test_line_numbers_stay_right_across_chunk_boundaries(tmp_path):
    lines = [HEADER]
    bad_lines = []
    for i in range(2, 3000):
        if i % 97 == 0:
            lines.append(b'u,s,"multi\nline",x,2024-01-01\n')  # bad, and spans two lines
            bad_lines.append(i)
            lines.append(None)  # placeholder: the second physical line of that row
        else:
            lines.append(b"u%d,s,A,1,2024-01-01\n" % i)
    body = b"".join(line for line in lines if line is not None)
    path = write(tmp_path, body)
    expected_rows = sum(1 for line in lines[1:] if line is not None) - len(bad_lines)
    for chunk_bytes in (64, 1000, 1 << 20):
        rows, rejected = read_all(path, chunk_bytes=chunk_bytes)
        assert len(rows) == expected_rows
        # Each bad row pushes later rows one physical line down.
        assert [r.line for r in rejected] == [b + k for k, b in enumerate(bad_lines)]


def test_fast_and_exact_paths_agree_on_clean_data(tmp_path):
    names = ("user_id", "song_id", "artist", "duration", "timestamp")
    body = b"".join(
        b'u%d,s%d,"Art, %d",%d,2024-01-%02dT00:00:00Z\n' % (i, i % 7, i % 5, i, i % 28 + 1) for i in range(500)
    )
    fast = _parse_fast(body, names)
    exact = _parse_exact(body, names, 2)
    assert fast is not None and exact.rejected == []
    assert fast.to_pylist() == exact.table.to_pylist()


# Every form the rule accepts, and the instant each one is (written out by hand).
STAMPS = [
    ("2024-01-01", epoch(2024, 1, 1)),
    ("2024-01-01T10", epoch(2024, 1, 1, 10)),
    ("2024-01-01T10Z", epoch(2024, 1, 1, 10)),
    ("2024-01-01 10:30", epoch(2024, 1, 1, 10, 30)),
    ("2024-01-01T10:30:15", epoch(2024, 1, 1, 10, 30, 15)),
    ("2024-01-01T10:30:15.999999Z", epoch(2024, 1, 1, 10, 30, 15)),
    ("2024-01-01T10:30:15,5", epoch(2024, 1, 1, 10, 30, 15)),
    ("2024-01-01T10:30:15+02:00", epoch(2024, 1, 1, 10, 30, 15, offset=dt.timedelta(hours=2))),
    ("2024-01-01T10:30:15-0530", epoch(2024, 1, 1, 10, 30, 15, offset=-dt.timedelta(hours=5, minutes=30))),
    ("2024-01-01T10:30:15+01", epoch(2024, 1, 1, 10, 30, 15, offset=dt.timedelta(hours=1))),
    ("2024-02-29T23:59:59Z", epoch(2024, 2, 29, 23, 59, 59)),
    ("1969-12-31T23:59:59.5Z", -1),  # floored: the second before the epoch, not the epoch
    ("1900-01-01T00:00:00Z", epoch(1900, 1, 1)),  # the first instant the services accept
    ("2200-01-01T00:59:59+01:00", epoch(2199, 12, 31, 23, 59, 59)),  # the last
]


@pytest.mark.parametrize(("stamp", "seconds"), STAMPS, ids=[s for s, _ in STAMPS])
def test_timestamp_becomes_epoch_seconds_utc(tmp_path, stamp, seconds):
    rows, rejected = read_all(write(tmp_path, HEADER + b'u,s,A,1,"' + stamp.encode() + b'"\n'))
    assert rejected == [] and [r["timestamp"] for r in rows] == [seconds]


def test_leap_second_is_the_next_second(tmp_path):
    body = HEADER + b"u,s,A,1,2016-12-31T23:59:60Z\nu,s,A,1,2016-12-31T23:59:60.9+01:00\n"
    rows, rejected = read_all(write(tmp_path, body))
    assert rejected == []
    assert [r["timestamp"] for r in rows] == [epoch(2017, 1, 1), epoch(2017, 1, 1, offset=dt.timedelta(hours=1))]


@pytest.mark.parametrize(
    "stamp", ["1899-12-31T23:59:59Z", "1900-01-01T00:30:00+01:00", "2200-01-01T00:00:00Z", "2199-12-31T23:00-01:00",
              "0001-01-01", "9999-12-31T23:59:59Z"],
)  # fmt: skip
def test_a_time_outside_what_the_services_accept_is_rejected_not_sent(tmp_path, stamp):
    # A batch holding one such time is refused whole by the services: the run would fail.
    path = write(tmp_path, HEADER + GOOD + b"u1,s1,A,1," + stamp.encode() + b"\n" + GOOD)
    rows, rejected = read_all(path)
    assert len(rows) == 2
    assert [(r.line, r.reason, r.field) for r in rejected] == [(3, "invalid_timestamp", "timestamp")]
    assert "is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC" in rejected[0].message


def test_fast_and_exact_paths_agree_on_timestamps_of_every_form_mixed_in_one_chunk():
    # Arrow does not read a decimal comma.
    arrow_readable = [(s, t) for s, t in STAMPS if "," not in s]
    body = b"".join(b'u,s,A,1,"%s"\n' % s.encode() for s, _ in arrow_readable)
    fast = _parse_fast(body, NAMES)
    exact = _parse_exact(body, NAMES, 2)
    assert fast is not None, "the fast path should read zoned and naive values mixed in a chunk"
    assert fast["timestamp"].to_pylist() == exact.table["timestamp"].to_pylist() == [t for _, t in arrow_readable]


def test_rejection_names_its_source_and_a_record_when_there_are_no_lines():
    line = Rejection(7, "empty_field", "artist", "artist is empty", source="export.zip:listens/2021/3.jsonl")
    record = Rejection(3, "missing_field", "ts", "ts is missing", source="Streaming_History_Audio_2021.json",
                       unit="record")  # fmt: skip
    assert line.describe("ignored.csv") == "export.zip:listens/2021/3.jsonl:7 field 'artist': artist is empty"
    assert record.describe("ignored.csv") == "Streaming_History_Audio_2021.json: record 3 field 'ts': ts is missing"
    assert Rejection(2, "wrong_field_count", None, "expected 5").describe("in.csv") == "in.csv:2: expected 5"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_all(tmp_path / "absent.csv")


def test_header_without_required_columns(tmp_path):
    with pytest.raises(InputError, match=r"lacks required column.*duration"):
        read_all(write(tmp_path, b"user_id,song_id,artist,timestamp\nu,s,a,2024-01-01\n"))


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match="empty file"):
        read_all(write(tmp_path, b""))


TIMESTAMP_VARIANTS = [
    "2024-01-01", "2024-01-01T10", "2024-01-01T10Z", "2024-01-01T10:00", "2024-01-01 10:00Z",
    "2024-01-01T10:00:00", "2024-01-01T10:00:00Z", "2024-01-01T10:00:00.5", "2024-01-01T10:00:00.123456789Z",
    "2024-01-01T10:00:00+01", "2024-01-01T10:00:00+0100", "2024-01-01T10:00:00-05:30", "2024-01-01T10:00:60Z",
    "2024-01-01T10:00:00,5Z", "2024-01-01T1000", "20240101", "2024-1-01", " 2024-01-01", "2024-01-01T",
    "2024-01-01T10:00:00.Z", "2024-02-29", "2023-02-29", "2024-04-31", "2024-01-01T24:00", "2024-01-01t10:00",
    "2024-01-01T10:00:00+24:00", "9999-12-31T23:59:59Z", "0000-01-01",
]  # fmt: skip


@pytest.mark.parametrize("stamp", TIMESTAMP_VARIANTS)
def test_fast_path_never_accepts_a_timestamp_the_rule_rejects(stamp):
    import pyarrow as pa

    from music_analytics.client.csv_source import _iso8601_timestamps, check_row

    names = ("user_id", "song_id", "artist", "duration", "timestamp")
    exact = check_row(["u", "s", "a", "1", stamp], names) is None
    fast = _iso8601_timestamps(pa.chunked_array([[stamp]]))
    assert exact or not fast, f"Arrow accepts {stamp!r} but the rule rejects it"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\nuser_id,song_id,artist,duration,timestamp\n", ":1: blank line; expected a header line"),
        (b"\xef\xbb\xbf\r\n", ":1: blank line; expected a header line"),
        (b"user_id,song_id\rartist,duration,timestamp\n", ":1: header is not one CSV line"),
        (b"user_id,song_id,artist,duration,timestamp," + b"x" * (1 << 20) + b"\n", ":1: header line longer than"),
        (b"user_id,song_id,artist,duration,timestamp,\xff\n", ":1: header is not valid UTF-8"),
        (b"user_id,song_id,artist,duration,timestamp,artist\n", ":1: header repeats column(s) artist"),
    ],
    ids=["blank", "bom-then-blank", "lone-carriage-return", "too-long", "not-utf8", "repeated"],
)
def test_unusable_header_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(InputError, match=re.escape(f"{path}{message}")):
        read_all(path)


def test_header_length_counts_the_byte_order_mark(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + HEADER + GOOD)
    assert read_header(path).length == 3 + len(HEADER)
    assert [r["user_id"] for r in read_all(path)[0]] == ["u0"]


def test_durations_and_timestamps_with_a_final_line_break_are_rejected(tmp_path):
    # In quotes a field may end with a line break; "$" in a pattern matches before one.
    path = write(tmp_path, HEADER + b'u1,s,A,"5\n",2024-01-01\nu2,s,A,5,"2024-01-01\n"\n' + GOOD)
    rows, rejected = read_all(path)
    assert [r["user_id"] for r in rows] == ["u0"]
    assert [(r.line, r.reason) for r in rejected] == [(2, "invalid_duration"), (4, "invalid_timestamp")]


# ---------------------------------------------------------------------------------------------
# The optional plays column
# ---------------------------------------------------------------------------------------------

PLAYS_HEADER = b"user_id,plays,song_id,artist,duration,timestamp\n"
PLAYS_NAMES = ("user_id", "plays", "song_id", "artist", "duration", "timestamp")
PLAYS_GOOD = b"u0,3,s0,Z,600,2024-01-01T00:00:00Z\n"
BAD_PLAYS = ["0", "-1", "1.5", "4294967296", "", "9" * 5000, "+5", " 5", "5 ", "0x10", "1e3", "٣", "５", "three"]


def test_without_a_plays_column_a_chunk_has_none(tmp_path):
    for chunk_bytes in (16, 1 << 20):  # the exact path (a chunk per row) and the fast one
        chunks = list(read_events(write(tmp_path, HEADER + GOOD + GOOD), chunk_bytes=chunk_bytes))
        assert {tuple(c.table.column_names) for c in chunks} == {NAMES}


def test_a_plays_column_anywhere_in_the_header_is_read_as_counts(tmp_path):
    body = PLAYS_HEADER + b"u1,1,s1,A,200,2024-01-01\nu2,007,s2,B,0,2024-01-02\nu3,4294967295,s3,C,9,2024-01-03\n"
    path = write(tmp_path, body)
    rows, rejected = read_all(path)
    assert rejected == []
    assert [(r["user_id"], r["plays"], r["duration"]) for r in rows] == [
        ("u1", 1, 200),
        ("u2", 7, 0),
        ("u3", 2**32 - 1, 9),
    ]
    table = next(read_events(path)).table
    assert table.column_names == [*NAMES, "plays"] and table["plays"].type == pa.uint32()


@pytest.mark.parametrize("value", BAD_PLAYS, ids=[v if len(v) < 20 else "5000-digits" for v in BAD_PLAYS])
def test_a_bad_play_count_is_rejected_naming_file_line_and_field(tmp_path, value):
    row = b"u1," + value.encode() + b",s1,A,1,2024-01-01T00:00:00Z\n"
    path = write(tmp_path, PLAYS_HEADER + PLAYS_GOOD + row + PLAYS_GOOD)
    rows, rejected = read_all(path)
    assert [r["plays"] for r in rows] == [3, 3]
    assert [(r.line, r.reason, r.field) for r in rejected] == [(3, "invalid_plays", "plays")]
    assert rejected[0].describe(str(path)) == (
        f"{path}:3 field 'plays': plays {value!r} is not a whole number of plays between 1 and 4294967295"
    )
    with pytest.raises(BadRowError, match=f"^{re.escape(str(path))}:3 field 'plays'"):
        read_all(path, strict=True)


@pytest.mark.parametrize("value", BAD_PLAYS, ids=[v if len(v) < 20 else "5000-digits" for v in BAD_PLAYS])
def test_the_fast_path_leaves_a_bad_play_count_to_the_exact_path(value):
    body = PLAYS_GOOD + b"u1," + value.encode() + b",s1,A,1,2024-01-01T00:00:00Z\n"
    assert _parse_fast(body, PLAYS_NAMES) is None
    assert [(r.line, r.reason) for r in _parse_exact(body, PLAYS_NAMES, 2).rejected] == [(3, "invalid_plays")]


def test_plays_that_are_not_utf8_and_the_order_of_the_checks(tmp_path):
    body = (
        PLAYS_HEADER + b"u1,\xff,s1,A,1,2024-01-01\nu2,0,,A,1,2024-01-01\nu3,0,s3,A,x,2024-01-01\nu4,0,s4,A,1,never\n"
    )
    rows, rejected = read_all(write(tmp_path, body))
    assert rows == []
    # A play count is checked last: each row is rejected for what the files without plays reject it for.
    assert [(r.line, r.reason, r.field) for r in rejected] == [
        (2, "invalid_utf8", "plays"),
        (3, "empty_field", "song_id"),
        (4, "invalid_duration", "duration"),
        (5, "invalid_timestamp", "timestamp"),
    ]


def test_fast_and_exact_paths_agree_on_clean_data_with_plays():
    body = b"".join(
        b'u%d,%d,s%d,"Art, %d",%d,2024-01-%02dT00:00:00Z\n' % (i, 1 + i * 7919 % 1000, i % 7, i % 5, i, i % 28 + 1)
        for i in range(500)
    )
    fast = _parse_fast(body, PLAYS_NAMES)
    exact = _parse_exact(body, PLAYS_NAMES, 2)
    assert fast is not None and exact.rejected == []
    assert fast.to_pylist() == exact.table.to_pylist()
    assert fast.schema.field("plays").type == exact.table.schema.field("plays").type == pa.uint32()


def test_a_header_naming_plays_twice_is_unusable(tmp_path):
    path = write(tmp_path, b"user_id,song_id,artist,duration,timestamp,plays,plays\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:1: header repeats column(s) plays")):
        read_all(path)


def test_a_number_too_long_for_int_is_rejected_not_a_crash(tmp_path):
    """Python refuses int() of more than 4300 digits (ValueError): a duration that long stopped
    the read instead of being rejected."""
    path = write(
        tmp_path, HEADER + GOOD + b"u1,s1,A," + b"9" * 5000 + b",2024-01-01\nu2,s2,A," + b"0" * 5000 + b"7,2024-01-01\n"
    )
    rows, rejected = read_all(path)
    assert [(r.line, r.reason) for r in rejected] == [(3, "invalid_duration")]
    assert [(r["user_id"], r["duration"]) for r in rows] == [("u0", 7), ("u2", 7)]
