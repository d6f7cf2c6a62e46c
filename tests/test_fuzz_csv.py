"""Fuzzing the CSV reader (``read_events``) against a plain reference reader.

What is generated: files whose header names the five columns in any order among others, plays
sometimes among them (with a byte order mark or not, sometimes broken: a column missing or
repeated, invalid UTF-8, blank, a lone carriage return), then valid rows mixed with bad ones
(fields missing or extra, durations or play counts negative, fractional, hexadecimal, too large,
with spaces or non-ASCII digits, a count of 0, timestamps malformed or of impossible dates,
empty strings, invalid UTF-8), fields quoted or not whether they
need it or not, embedded quotes, commas and line breaks, \\n or \\r\\n or a lone \\r, blank and
whitespace lines, no final line break, NUL bytes, stray quotes; then sometimes bytes inserted at
random. Each file is read with chunks of 16 bytes up to the default 16 MiB (many chunk
boundaries, each a place where rows and line numbers can go wrong), then again up to one of its
chunk boundaries (as the client re-reads a prefix), then in strict mode.

The only outcomes allowed: InputError exactly when the reference finds the header unusable;
otherwise every row the reference rejects is a Rejection with the same line, reason and field,
and the rows kept are the reference's, value for value (the timestamp as epoch seconds, which the
reference computes with datetime), in order. ``reference_read`` is that
reference: the csv module on the whole file at once, and the rules of csv_source's docstring
written out plainly (timestamps by their own pattern and calendar check).

Examples per run in `make test` (tests/fuzzing.py): 500 generated files and 500 files of random
bytes after a valid header, about 20 s on a 2-core machine. `make fuzz` runs
MUSIC_ANALYTICS_FUZZ_EXAMPLES of each. Every file in tests/fuzz_corpus/csv/ is replayed on every
run, at each chunk size.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import event, example, given, note
from hypothesis import strategies as st

from music_analytics.client.csv_source import CHUNK_BYTES, BadRowError, InputError, read_events
from music_analytics.services.common.contract import MAX_TIMESTAMP, MIN_TIMESTAMP
from tests.fuzzing import fuzz_settings

# pyarrow reports an exception in a callback of its own as "Exception ignored" on stderr, where a
# user would see a traceback: here it fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus" / "csv"
COLUMNS = ("user_id", "song_id", "artist", "duration", "timestamp")
PLAYS = "plays"  # the optional column
CHUNK_SIZES = (16, 64, 256, 4096, CHUNK_BYTES)

# ---------------------------------------------------------------------------------------------
# The reference reader
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    rows: list[dict]  # user_id, song_id, artist, duration, timestamp (and plays if the file has them)
    rejected: list[tuple[int, str, str | None]]  # line, reason, field


# A timestamp: date, then optionally a time (hours, then optional minutes, seconds, fraction)
# and an optional zone. Digits are ASCII only ([0-9], not \d, which takes any Unicode digit).
_STAMP = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[T ](?P<hour>[0-9]{2})(?::(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:[.,][0-9]+)?)?)?"
    r"(?:Z|(?P<sign>[+-])(?P<zone_hours>[0-9]{2})(?::?(?P<zone_minutes>[0-9]{2}))?)?)?"
)


def stamp_seconds(text: str) -> int | None:
    """Epoch seconds of a valid timestamp (no zone: UTC; fraction floored; second 60: the next
    second; an instant the services accept), None for an invalid one."""
    match = _STAMP.fullmatch(text)
    if match is None:
        return None
    limits = {"hour": 23, "minute": 59, "second": 60, "zone_hours": 23, "zone_minutes": 59}
    if any(match[part] is not None and int(match[part]) > limit for part, limit in limits.items()):
        return None
    try:
        day = dt.datetime(int(match["year"]), int(match["month"]), int(match["day"]), tzinfo=dt.UTC)
    except ValueError:
        return None
    zone = dt.timedelta(hours=int(match["zone_hours"] or 0), minutes=int(match["zone_minutes"] or 0))
    if match["sign"] == "-":
        zone = -zone
    local = dt.timedelta(
        hours=int(match["hour"] or 0), minutes=int(match["minute"] or 0), seconds=int(match["second"] or 0)
    )
    seconds = (day - dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + local - zone) // dt.timedelta(seconds=1)
    return seconds if MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP else None


def _not_utf8(text: str) -> bool:
    # The file is decoded with surrogateescape: an undecodable byte becomes U+DC80..U+DCFF.
    return any("\udc80" <= c <= "\udcff" for c in text)


def _whole_number(text: str, low: int) -> bool:
    return bool(text) and all(c in "0123456789" for c in text) and low <= int(text) < 2**32


def _problem(values: dict[str, str]) -> tuple[str, str | None] | None:
    for name in (*COLUMNS, PLAYS) if PLAYS in values else COLUMNS:
        if _not_utf8(values[name]):
            return "invalid_utf8", name
    for name in ("user_id", "song_id", "artist"):
        if values[name] == "":
            return "empty_field", name
    if not _whole_number(values["duration"], 0):
        return "invalid_duration", "duration"
    if stamp_seconds(values["timestamp"]) is None:
        return "invalid_timestamp", "timestamp"
    if PLAYS in values and not _whole_number(values[PLAYS], 1):
        return "invalid_plays", PLAYS
    return None


_PHYSICAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def reference_read(data: bytes) -> Outcome | None:
    """The rows and rejections of ``data`` as a CSV file, or None if it is unusable."""
    end = data.find(b"\n")
    header = data if end < 0 else data[: end + 1]
    text = header.removeprefix(codecs.BOM_UTF8)
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return None
    try:
        names = next(csv.reader([text.rstrip("\r\n")]), [])
    except csv.Error:
        return None
    if any(names.count(c) != 1 for c in COLUMNS) or names.count(PLAYS) > 1:
        return None
    body = data[len(header) :].decode("utf-8", errors="surrogateescape")
    lines = _PHYSICAL_LINE.findall(body)
    reader = csv.reader(lines)
    rows, rejected = [], []
    lines_before = 0
    for fields in reader:
        line = 2 + lines_before  # the header is line 1
        lines_before = reader.line_num
        if not fields:
            continue  # blank line
        if len(fields) != len(names):
            rejected.append((line, "wrong_field_count", None))
            continue
        values = dict(zip(names, fields, strict=True))
        problem = _problem(values)
        if problem is not None:
            rejected.append((line, *problem))
            continue
        row = {
            "user_id": values["user_id"], "song_id": values["song_id"], "artist": values["artist"],
            "duration": int(values["duration"]), "timestamp": stamp_seconds(values["timestamp"]),
        }  # fmt: skip
        if PLAYS in values:
            row[PLAYS] = int(values[PLAYS])
        rows.append(row)
    return Outcome(rows, rejected)


# ---------------------------------------------------------------------------------------------
# Comparing read_events with it
# ---------------------------------------------------------------------------------------------


def read_all(path: Path, **kwargs) -> tuple[Outcome, list[int]]:
    """Everything read_events yields, and the end offset of each chunk."""
    rows, rejected, ends = [], [], []
    for chunk in read_events(path, **kwargs):
        rows.extend(chunk.table.to_pylist())
        rejected.extend((r.line, r.reason, r.field) for r in chunk.rejected)
        ends.append(chunk.end_offset)
    return Outcome(rows, rejected), ends


def check_file(path: Path, data: bytes, chunk_bytes: int, stop_at: int = 0) -> str:
    """Assert read_events reads ``data`` (written at ``path``) as the reference does; a label of
    the outcome for Hypothesis' statistics."""
    path.write_bytes(data)
    expected = reference_read(data)
    if expected is None:
        with pytest.raises(InputError, match=re.escape(str(path))):
            read_all(path, chunk_bytes=chunk_bytes)
        return "unusable header"
    got, ends = read_all(path, chunk_bytes=chunk_bytes)
    assert got.rejected == expected.rejected
    assert got.rows == expected.rows

    # A prefix, as the client re-reads one after losing a replica: exactly the chunks before it.
    if ends:
        stop = ends[stop_at % len(ends)]
        prefix, _ = read_all(path, chunk_bytes=chunk_bytes, stop_offset=stop)
        assert prefix.rows == got.rows[: len(prefix.rows)]
        assert prefix.rejected == got.rejected[: len(prefix.rejected)]
        if stop == ends[-1]:
            assert prefix == got

    if expected.rejected:
        first_line = expected.rejected[0][0]
        with pytest.raises(BadRowError, match=f"^{re.escape(str(path))}:{first_line}[: ]"):
            read_all(path, chunk_bytes=chunk_bytes, strict=True)
    else:
        assert read_all(path, chunk_bytes=chunk_bytes, strict=True)[0] == got
    reasons = sorted({reason for _, reason, _ in expected.rejected})
    return f"{(len(expected.rows) > 0 and 'rows') or 'no rows'}; rejected: {', '.join(reasons) or 'none'}"


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

text_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
nasty_values = st.sampled_from(["a,b", 'say "hi"', "two\nlines", "cr\rlf\r\n", " padded ", '"', '""', "ü", "\ufeff"])
good_durations = st.one_of(st.integers(0, 2**32 - 1).map(str), st.sampled_from(["0", "007", "4294967295"]))
bad_durations = st.sampled_from([
    "", "-5", "1.5", "0x10", " 5", "5 ", "+5", "1e3", "4294967296", "99999999999999999999", "٣", "５", "five", "5\n",
])  # fmt: skip
good_plays = st.one_of(st.integers(1, 2**32 - 1).map(str), st.sampled_from(["1", "01", "4294967295"]))
bad_plays = st.sampled_from(["", "0", "00", "-1", "1.5", "+1", " 1", "0x10", "4294967296", "9" * 30, "٣", "1\n"])
bad_timestamps = st.one_of(
    st.sampled_from([
        "", "yesterday", "2024-02-30", "2023-02-29", "2024-13-01", "2024-01-01T24:00", "2024-01-01T10:61",
        "2024-01-01T10:00:00+24:00", "2024-1-01", "20240101", "2024-01-01T", "2024-01-01t10:00", "0000-01-01",
        "2024-01-01\n", "2024-01-01 ", " 2024-01-01", "２０２４-01-01", "2024-01-01T10:00:00.Z",
    ]),
    st.text(max_size=12),
)  # fmt: skip


@st.composite
def good_timestamps(draw: st.DrawFn) -> str:
    # Mostly the years the services accept, their two ends crossed by zones; sometimes any year.
    day = draw(
        st.one_of(
            st.dates(dt.date(1899, 12, 31), dt.date(2200, 1, 1)),
            st.sampled_from([dt.date(1899, 12, 31), dt.date(1900, 1, 1), dt.date(2199, 12, 31), dt.date(2200, 1, 1)]),
            st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)),
        )
    ).isoformat()
    if draw(st.booleans()):
        return day
    time = f"{draw(st.integers(0, 23)):02d}"
    for part in (draw(st.integers(0, 59)), draw(st.integers(0, 60))):
        if draw(st.booleans()):
            break
        time += f":{part:02d}"
    else:
        if draw(st.booleans()):
            time += draw(st.sampled_from([".", ","])) + str(draw(st.integers(0, 999_999_999)))
    zone = draw(st.sampled_from(["", "Z", "+02:00", "-0530", "+01", "-23:59"]))
    return f"{day}{draw(st.sampled_from(['T', ' ']))}{time}{zone}"


def encode_field(value: str, quote: bool) -> str:
    return '"' + value.replace('"', '""') + '"' if quote else value


@st.composite
def rows(draw: st.DrawFn, names: list[str]) -> str:
    """One row (without its line break): valid, or broken in one way."""
    values = {n: draw(st.one_of(text_values, nasty_values)) for n in names}
    values["duration"] = draw(good_durations)
    values["timestamp"] = draw(good_timestamps())
    if PLAYS in values:
        values[PLAYS] = draw(good_plays)
    kinds = ["valid"] * 4 + ["empty", "duration", "timestamp", "utf8", "missing", "extra"]
    kind = draw(st.sampled_from([*kinds, "plays"] if PLAYS in values else kinds))
    if kind == "empty":
        values[draw(st.sampled_from(["user_id", "song_id", "artist"]))] = ""
    elif kind == "duration":
        values["duration"] = draw(bad_durations)
    elif kind == "timestamp":
        values["timestamp"] = draw(bad_timestamps)
    elif kind == "plays":
        values[PLAYS] = draw(bad_plays)
    elif kind == "utf8":
        values[draw(st.sampled_from(names))] += "\udcff"  # an invalid byte, written back below
    fields = [values[n] for n in names]
    if kind == "missing":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif kind == "extra":
        fields.append(draw(text_values))
    if draw(st.integers(0, 40)) == 0:
        # Longer than the csv module's default field limit (128 KiB).
        fields[draw(st.integers(0, len(fields) - 1))] = "L" * 140_000
    # Quote each field when it needs it, or always, or never (then commas and line breaks in it
    # reshape the row, which the reference sees too).
    style = draw(st.sampled_from(["needed", "needed", "always", "never"]))
    return ",".join(
        encode_field(f, style == "always" or (style == "needed" and any(c in f for c in ',"\r\n'))) for f in fields
    )


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    extras = draw(st.lists(st.sampled_from(["extra", "plays", "note, quoted", "é"]), max_size=2, unique=True))
    names = draw(st.permutations([*COLUMNS, *extras]))
    header = ",".join(encode_field(n, "," in n) for n in names)
    # Hypothesis favours the first choices: the intact header comes first, and often.
    broken = draw(st.sampled_from(["no"] * 16 + ["renamed", "repeated", "lone cr", "blank", "utf8"]))
    if broken == "renamed":
        header = header.replace(draw(st.sampled_from(COLUMNS)), "renamed")
    elif broken == "repeated":
        header += "," + draw(st.sampled_from([*COLUMNS, PLAYS] if PLAYS in names else COLUMNS))
    elif broken == "lone cr":
        header = header.replace(",", "\r", 1)
    elif broken == "blank":
        header = draw(st.sampled_from(["", " ", "\t"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", " ", "\r", ",,,,", '""'])))
        lines.append(draw(rows(names)))
    text = bom + header + newline + newline.join(lines)
    if lines and draw(st.booleans()):
        text += newline
    data = text.encode("utf-8", errors="surrogateescape")
    if broken == "utf8":
        data = data.replace(b"user_id", b"user_\xffid", 1)
    # Bytes inserted at random: stray quotes, line breaks, NUL, invalid UTF-8, a byte order mark.
    body_start = len((bom + header).encode("utf-8", errors="surrogateescape"))
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):
        at = draw(
            st.integers(body_start if draw(st.sampled_from(["body"] * 9 + ["header"])) == "body" else 0, len(data))
        )
        junk = draw(st.sampled_from([b'"', b",", b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", codecs.BOM_UTF8]))
        data = data[:at] + junk + data[at:]
    return data


def shown(content: bytes) -> str:
    """The file for a failure report; a long one shortened (print_blob reproduces it whole)."""
    if len(content) <= 2000:
        return repr(content)
    return f"{content[:1000]!r} ... {content[-1000:]!r} ({len(content)} bytes)"


def chunk_sizes(data: bytes) -> st.SearchStrategy[int]:
    # Many small reads of a long file would only be slow: each read rescans the row in progress.
    return st.sampled_from([c for c in CHUNK_SIZES if c >= len(data) // 500])


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-csv") / "events.csv"


HEADER = b"user_id,song_id,artist,duration,timestamp\n"
STAMP = b"2024-01-01T00:00:00Z"


@fuzz_settings(500, deadline_ms=10_000)
@given(data=st.data(), stop_at=st.integers(0, 1000))
def test_generated_files_read_as_the_reference_reads_them(csv_path, data, stop_at):
    content = data.draw(csv_files(), label="file")
    chunk_bytes = data.draw(chunk_sizes(content), label="chunk_bytes")
    note(f"file: {shown(content)}")
    event(check_file(csv_path, content, chunk_bytes, stop_at))


# Found by the fuzzing or written to cover what it found, each failed before its fix.
KNOWN = [
    # A stray quote made every later quote count wrong: rows cut inside a quoted field.
    (HEADER + b'u1,a"b,A,1,' + STAMP + b'\nu2,s,"multi\nline",2,' + STAMP + b"\nu3,s,C,3," + STAMP + b"\n", 16),
    # "5\n" (quoted) was a duration of 5, a timestamp with a final line break was valid.
    (HEADER + b'u1,s,A,"5\n",' + STAMP + b'\nu2,s,A,5,"2024-01-01\n"\n', CHUNK_BYTES),
    # A lone carriage return is a line break to the csv module: later lines were numbered one less
    # after a chunk boundary.
    (HEADER + b"u1,s\r1,A,1," + STAMP + b"\n" + b"u2,s,A,x," + STAMP + b"\n" * 3 + b"u3,s,A,y," + STAMP + b"\n", 16),
    # A lone carriage return in the header: csv.Error escaped read_events.
    (b"user_id,song_id\rartist,duration,timestamp\nu,s,A,1," + STAMP + b"\n", CHUNK_BYTES),
    # A field over the csv module's 128 KiB limit in a chunk that takes the exact path: csv.Error.
    (HEADER + b"u1,s," + b"L" * 140_000 + b",1," + STAMP + b"\nu2,s,A,x," + STAMP + b"\n", 4096),
    # Too many fields and invalid UTF-8 in one row: pyarrow's invalid-row callback failed to
    # decode the row and printed a traceback.
    (HEADER + b"u1,s,A,1," + STAMP + b",\xff\n", CHUNK_BYTES),
    # A time the services refuse (before 1900) was kept, and the whole run failed on it.
    (HEADER + b"u1,s,A,1," + STAMP + b"\nu2,s,A,1,1850-01-01\nu3,s,A,1,1900-01-01T00:30+01:00\n", CHUNK_BYTES),
]


@pytest.mark.parametrize(("content", "chunk_bytes"), KNOWN, ids=[f"known-{i}" for i in range(len(KNOWN))])
def test_inputs_that_found_defects(csv_path, content, chunk_bytes):
    check_file(csv_path, content, chunk_bytes)


@fuzz_settings(500, deadline_ms=10_000)
@given(body=st.binary(max_size=300), chunk_bytes=st.sampled_from(CHUNK_SIZES))
@example(body=b'"\n"\r"', chunk_bytes=16)
@example(body=b"\x00\x00,\r\r\n\xef\xbb\xbf", chunk_bytes=16)
def test_random_bytes_after_a_valid_header_read_as_the_reference_reads_them(csv_path, body, chunk_bytes):
    note(f"file: {shown(HEADER + body)}")
    event(check_file(csv_path, HEADER + body, chunk_bytes))


def test_a_quoted_field_never_closed_is_an_error_once_the_row_passes_max_row_bytes(tmp_path):
    path = tmp_path / "unclosed.csv"
    path.write_bytes(HEADER + b"u1,s,A,1," + STAMP + b'\nu2,"never closed,A,1,' + STAMP + b"\n" * 500)
    with pytest.raises(InputError, match=re.escape(f"{path}:3: no row ends within 100 bytes")):
        read_all(path, chunk_bytes=16, max_row_bytes=100)
    # Within the limit it is what the csv module reads: one long field, a row with too few fields.
    outcome, _ = read_all(path, chunk_bytes=16)
    assert outcome == reference_read(path.read_bytes())
    assert outcome.rejected == [(3, "wrong_field_count", None)]


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.csv"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus_file(csv_path, path: Path):
    content = path.read_bytes()
    for chunk_bytes in CHUNK_SIZES:
        check_file(csv_path, content, chunk_bytes)


def test_corpus_is_there():
    assert len(corpus_files()) >= 10
