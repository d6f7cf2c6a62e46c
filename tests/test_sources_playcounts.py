"""Play-count files (HetRec's user_artists.dat and CSV/TSV exports like it): detected by their
header, read as user_id, artist and plays, every bad row rejected with its line and the column's
own name, by the fast path and the exact path alike, and as a plain reference reader reads them."""

from __future__ import annotations

import codecs
import csv
import io
import re
import shutil
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from music_analytics.client.csv_source import BadRowError, InputError
from music_analytics.client.sources import KINDS, open_source, playcounts
from tests.fuzzing import fuzz_settings

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
HETREC_HEADER = "userID\tartistID\tweight\n"


def read_all(spec, **kwargs) -> tuple[list[dict], list]:
    rows, rejected = [], []
    for chunk in open_source(spec, **kwargs).chunks():
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
    return rows, rejected


def read_file(path: Path, **kwargs) -> tuple[list[dict], list[tuple[int, str, str | None]], list[int]]:
    """playcounts.read_stream of one file: rows, (line, reason, field) of each rejection, chunk ends."""
    rows, rejected, ends = [], [], []
    for chunk in playcounts.read_stream(lambda: path.open("rb"), str(path), **kwargs):
        rows.extend(chunk.table.to_pylist())
        rejected.extend((r.line, r.reason, r.field) for r in chunk.rejected)
        ends.append(chunk.end_offset)
    return rows, rejected, ends


def write(tmp_path: Path, data: bytes | str, name: str = "plays.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------------------------------------
# The samples
# ---------------------------------------------------------------------------------------------


def test_hetrec_shaped_sample_is_detected_and_read_with_ids_as_text():
    path = SAMPLES / "playcounts.tsv"
    source = open_source(path)
    assert (source.format, source.kind) == ("playcounts", "playcounts")
    with path.open(newline="") as f:
        lines = list(csv.reader(f, delimiter="\t"))
    assert lines[0] == ["userID", "artistID", "weight"]
    expected = [{"user_id": user, "artist": artist, "plays": int(weight)} for user, artist, weight in lines[1:]]
    rows, rejected = read_all(path)
    assert rejected == [] and rows == expected and len(rows) > 50
    chunks = list(source.chunks())
    assert all(c.table.column_names == ["user_id", "artist", "plays"] for c in chunks)
    assert all(c.table.schema.field("plays").type == pa.uint32() for c in chunks)


def test_bad_sample_rejects_each_kind_of_bad_row_naming_the_column_as_written():
    path = SAMPLES / "playcounts-bad.csv"
    rows, rejected = read_all(path)
    assert [(r.line, r.reason, r.field) for r in rejected] == [
        (3, "wrong_field_count", None),
        (4, "invalid_utf8", "artist_name"),
        (5, "empty_field", "user"),
        (6, "empty_field", "artist_name"),
        *[(line, "invalid_plays", "plays") for line in range(7, 12)],
    ]
    assert [(r["user_id"], r["artist"]) for r in rows] == [
        ("alice", "Earth, Wind & Fire"),
        ("carol", 'The "Quoted" Band'),
        ("carol", "坂本龍一"),
    ]
    assert [r.describe("?") for r in rejected[4:6]] == [
        f"{path}:7 field 'plays': plays '0' is not a whole number of plays between 1 and 4294967295",
        f"{path}:8 field 'plays': plays '-1' is not a whole number of plays between 1 and 4294967295",
    ]
    with pytest.raises(BadRowError, match=f"^{re.escape(str(path))}:3: expected 4 fields, found 2$"):
        list(open_source(path).chunks(strict=True))


# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------

GOOD_COUNTS = [("1", 1), ("007", 7), ("4294967295", 2**32 - 1), ("0" * 5000 + "3", 3)]
BAD_COUNTS = ["0", "-1", "1.5", "4294967296", "", "9" * 5000, "+5", " 5", "5 ", "0x10", "1e3", "٣", "５", "many"]


def count_id(value: str) -> str:
    return repr(value) if len(value) < 20 else f"{len(value)}-digits"


@pytest.mark.parametrize(("text", "value"), GOOD_COUNTS, ids=[count_id(t) for t, _ in GOOD_COUNTS])
def test_a_count_is_a_whole_number_from_1_to_2_to_the_32_less_1(tmp_path, text, value):
    path = write(tmp_path, f"{HETREC_HEADER}2\t51\t{text}\n")
    assert read_all(path) == ([{"user_id": "2", "artist": "51", "plays": value}], [])


@pytest.mark.parametrize("value", BAD_COUNTS, ids=[count_id(v) for v in BAD_COUNTS])
@pytest.mark.parametrize("delimiter", ["\t", ","], ids=["tsv", "csv"])
def test_a_bad_count_is_rejected_and_the_rest_kept(tmp_path, value, delimiter):
    header = delimiter.join(["user", "artist", "count"]) + "\n"
    good = delimiter.join(["u1", "Björk", "4"]) + "\n"
    bad = delimiter.join(["u2", "Björk", value]) + "\n"
    path = write(tmp_path, header + good + bad + good, f"plays.{'tsv' if delimiter == chr(9) else 'csv'}")
    rows, rejected = read_all(path)
    assert rows == [{"user_id": "u1", "artist": "Björk", "plays": 4}] * 2
    assert [(r.line, r.reason, r.field) for r in rejected] == [(3, "invalid_plays", "count")]
    assert rejected[0].message == f"count {value!r} is not a whole number of plays between 1 and 4294967295"
    with pytest.raises(BadRowError, match=f"^{re.escape(str(path))}:3 field 'count': count "):
        list(open_source(path).chunks(strict=True))


@pytest.mark.parametrize("value", BAD_COUNTS, ids=[count_id(v) for v in BAD_COUNTS])
def test_the_fast_path_leaves_a_bad_count_to_the_exact_path(value):
    header = playcounts.parse_header(HETREC_HEADER.encode(), "plays.tsv")
    body = f"2\t51\t3\n2\t52\t{value}\n".encode()
    assert playcounts.parse_fast(body, header) is None
    chunk = playcounts.parse_exact(body, header, 2)
    assert [(r.line, r.reason) for r in chunk.rejected] == [(3, "invalid_plays")]
    assert chunk.table.to_pylist() == [{"user_id": "2", "artist": "51", "plays": 3}]


def test_fast_and_exact_paths_agree_on_clean_rows():
    header = playcounts.parse_header(b'user,artist,plays,"note, free"\n', "plays.csv")
    body = b"".join(b'u%d,"Art, %d",%d,"n ""%d"""\n' % (i % 13, i % 7, 1 + i * 7919 % 10**6, i) for i in range(500))
    fast = playcounts.parse_fast(body, header)
    exact = playcounts.parse_exact(body, header, 2)
    assert fast is not None and exact.rejected == []
    assert fast.to_pylist() == exact.table.to_pylist()
    assert fast.column_names == exact.table.column_names == ["user_id", "artist", "plays"]


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def test_every_row_problem_in_both_delimiters(tmp_path):
    for delimiter, suffix in (("\t", "tsv"), (",", "csv")):
        lines = [["plays", "artist_name", "user_id"], ["5", "A", "u1"], ["5", "A"], ["5", "A", "u\udcff"],
                 ["5", "", "u1"], ["5", "A", ""], ["5", "A", "u1", "extra"], ["7", "B", "u2"]]  # fmt: skip
        text = "".join(delimiter.join(fields) + "\n" for fields in lines)
        path = write(tmp_path, text.encode("utf-8", errors="surrogateescape"), f"counts.{suffix}")
        rows, rejected = read_all(path)
        assert rows == [{"user_id": "u1", "artist": "A", "plays": 5}, {"user_id": "u2", "artist": "B", "plays": 7}]
        assert [(r.line, r.reason, r.field) for r in rejected] == [
            (3, "wrong_field_count", None),
            (4, "invalid_utf8", "user_id"),
            (5, "empty_field", "artist_name"),
            (6, "empty_field", "user_id"),
            (7, "wrong_field_count", None),
        ]


def test_columns_not_read_may_hold_anything(tmp_path):
    path = write(tmp_path, b"user\tplays\tnote\tartist\n" + b"u1\t3\t\xff\xfe\tA\n" + b"u2\t4\t\tB\n")
    assert read_all(path) == (
        [{"user_id": "u1", "artist": "A", "plays": 3}, {"user_id": "u2", "artist": "B", "plays": 4}],
        [],
    )


def test_quoting_in_tsv_and_csv_line_breaks_bom_and_blank_lines(tmp_path):
    tsv = (
        codecs.BOM_UTF8 + b"userID\tartist\tweight\r\n"
        b'u1\t"tab\there"\t1\r\n'
        b"\r\n"
        b'u2\t"line\nbreak"\t2\r\n'
        b'u3\t"say ""hi"""\t3\r\n'
        b"u4\tx\t-4\r\n"
        b'u5\t"a,b"\t5'  # no final line break
    )
    rows, rejected = read_all(write(tmp_path, tsv))
    assert [(r["artist"], r["plays"]) for r in rows] == [("tab\there", 1), ("line\nbreak", 2), ('say "hi"', 3),
                                                         ("a,b", 5)]  # fmt: skip
    # Line 3 is blank and the quoted line break makes u2 span lines 4-5: u4 is on line 7.
    assert [(r.line, r.reason) for r in rejected] == [(7, "invalid_plays")]


def test_duplicate_pairs_are_each_kept(tmp_path):
    path = write(tmp_path, HETREC_HEADER + "2\t51\t3\n2\t51\t4\n")
    assert [r["plays"] for r in read_all(path)[0]] == [3, 4]


def test_line_numbers_and_rows_are_the_same_for_every_chunk_size(tmp_path):
    lines = [HETREC_HEADER]
    bad_lines = []
    for i in range(2, 2000):
        if i % 89 == 0:
            lines.append(f'{i}\t"two\nlines"\t0\n')  # bad, and spans two lines
            bad_lines.append(i + len(bad_lines))
        else:
            lines.append(f"{i}\t{i % 31}\t{i}\n")
    path = write(tmp_path, "".join(lines))
    full = read_file(path)
    assert [line for line, _, _ in full[1]] == bad_lines
    assert len(full[0]) == 1998 - len(bad_lines)
    for chunk_bytes in (16, 100, 4096):
        rows, rejected, ends = read_file(path, chunk_bytes=chunk_bytes)
        assert (rows, rejected) == full[:2]
        assert len(ends) > 1 and ends == sorted(ends) and ends[-1] == path.stat().st_size
        # A prefix up to a chunk's end, as the client re-reads one: exactly the chunks before it.
        stop = ends[len(ends) // 2]
        prefix_rows, prefix_rejected, prefix_ends = read_file(path, chunk_bytes=chunk_bytes, stop_offset=stop)
        assert prefix_ends == ends[: len(prefix_ends)] and prefix_ends[-1] == stop
        assert prefix_rows == rows[: len(prefix_rows)] and prefix_rejected == rejected[: len(prefix_rejected)]


def test_a_quoted_field_never_closed_is_an_error_once_the_row_passes_max_row_bytes(tmp_path):
    path = write(tmp_path, HETREC_HEADER + '2\t51\t3\n2\t"never closed\t4\n' + "\n" * 300)
    with pytest.raises(InputError, match=re.escape(f"{path}:3: no row ends within 100 bytes")):
        read_file(path, chunk_bytes=16, max_row_bytes=100)


# ---------------------------------------------------------------------------------------------
# The header
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("userID\tartistID\tweight", "2\t51\t7", ("2", "51", 7)),
        ("user_id,artist,plays", "u,A,7", ("u", "A", 7)),
        ("User,Artist_Name,COUNT", "u,A,7", ("u", "A", 7)),
        (" user_id , artist , plays ", "u,A,7", ("u", "A", 7)),
        ("plays\tcountry\tartist_name\tuserid", "7\tDE\tA\tu", ("u", "A", 7)),
        ('"user",artist,"plays"', "u,A,7", ("u", "A", 7)),
        # A name before an id, plays before a weight; the other columns are not read.
        ("user_id,artistID,artist,weight,plays", "u,51,A,99,7", ("u", "A", 7)),
        ("user,user_id,artist,plays", "name,u,A,7", ("u", "A", 7)),
    ],
)
def test_header_names_of_each_column(tmp_path, header, row, expected):
    path = write(tmp_path, f"{header}\n{row}\n", "counts.txt")
    source = open_source(path)
    assert source.format == "playcounts"
    assert read_all(path) == ([dict(zip(("user_id", "artist", "plays"), expected, strict=True))], [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", ": empty file; expected a header line naming a user column (user_id, userid, user), an artist "
              "column (artist, artist_name, artistid) and a play-count column (plays, weight, count)"),
        (b"\n2\t51\t3\n", ":1: blank line; expected a header line naming a user column"),
        (b"userID\tartistID\ttagID\n", ":1: header lacks a play-count column; expected a user column (user_id, "
                                        "userid, user), an artist column (artist, artist_name, artistid) and a "
                                        "play-count column (plays, weight, count), found userID, artistID, tagID"),
        (b"id\tweight\n", ":1: header lacks a user column and an artist column; expected"),
        (b"userID\tartistID\tweight\tweight\n", ":1: header repeats column(s) weight"),
        (b"user,User,artist,plays\n", ":1: header repeats column(s) user"),
        (b"user\tartist\tplays\xff\n", ":1: header is not valid UTF-8"),
        (b"user\tartist\rplays\n", ":1: header is not one line"),
        (b"user\tartist\tplays\t" + b"x" * (1 << 20) + b"\n", ":1: header line longer than 1048576 bytes"),
    ],
    ids=["empty", "blank", "no-count", "two-missing", "repeated", "repeated-other-case", "not-utf8", "lone-cr",
         "too-long"],
)  # fmt: skip
def test_unusable_header_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(InputError, match="^" + re.escape(f"{path}{message}")):
        read_all(path, format="playcounts")


def test_an_event_csv_with_plays_is_events_not_play_counts(tmp_path):
    path = write(tmp_path, "user_id,song_id,artist,duration,timestamp,plays\nu,s,A,600,2024-01-01,3\n", "e.csv")
    source = open_source(path)
    assert (source.format, source.kind) == ("csv", "events")
    assert [r["plays"] for r in read_all(path)[0]] == [3]
    # Forced, the same file is a play-count file whose other columns are not read.
    assert read_all(path, format="playcounts") == ([{"user_id": "u", "artist": "A", "plays": 3}], [])


def test_every_other_format_is_of_kind_events():
    for name in ("lastfm-1k.tsv", "endsong_0.json", "listenbrainz_listens.jsonl"):
        assert open_source(SAMPLES / name).kind == "events"
    assert KINDS == ("events", "playcounts")


# ---------------------------------------------------------------------------------------------
# Folders, zips
# ---------------------------------------------------------------------------------------------

HETREC_OTHER_FILES = {
    "artists.dat": "id\tname\turl\tpictureURL\n1\tMALICE MIZER\thttp://example.org/1\t\n",
    "tags.dat": "tagID\ttagValue\n1\tmetal\n",
    "user_friends.dat": "userID\tfriendID\n2\t275\n",
    "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t52\t13\t1\t4\t2009\n",
    "user_taggedartists-timestamps.dat": "userID\tartistID\ttagID\ttimestamp\n2\t52\t13\t1238536800000\n",
    "readme.txt": "A sample in the shape of a play-count dataset.\n",
}


def hetrec_folder(root: Path, user_artists: str) -> Path:
    folder = root / "hetrec2011-lastfm-2k"
    folder.mkdir()
    for name, text in HETREC_OTHER_FILES.items():
        (folder / name).write_text(text)
    (folder / "user_artists.dat").write_text(user_artists)
    return folder


def test_a_dataset_folder_reads_only_its_play_count_file(tmp_path):
    folder = hetrec_folder(tmp_path, HETREC_HEADER + "2\t51\t13883\n2\t52\t11690\n")
    source = open_source(folder)
    assert source.format == "playcounts" and source.files == [str(folder / "user_artists.dat")]
    assert sorted(Path(f).name for f in source.ignored) == sorted(HETREC_OTHER_FILES)
    assert read_all(folder)[0] == [{"user_id": "2", "artist": "51", "plays": 13883},
                                   {"user_id": "2", "artist": "52", "plays": 11690}]  # fmt: skip


def test_a_dataset_play_count_file_whose_header_does_not_tell_is_read_and_reported(tmp_path):
    folder = hetrec_folder(tmp_path, "userID\tartistID\n2\t51\n")
    with pytest.raises(InputError, match=re.escape(f"{folder / 'user_artists.dat'}:1: header lacks a play-count")):
        open_source(folder, format="playcounts")


def test_files_of_both_delimiters_in_a_zip_read_as_one_stream_naming_each_file(tmp_path):
    archive = tmp_path / "counts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("b.csv", "user,artist,plays\nu2,B,2\nu3,C,x\n")
        z.writestr("a.tsv", HETREC_HEADER + "u1\tA\t1\n")
    source = open_source(archive)
    assert source.format == "playcounts" and source.files == [f"{archive}:a.tsv", f"{archive}:b.csv"]
    rows, rejected = read_all(archive)
    assert [(r["user_id"], r["artist"], r["plays"]) for r in rows] == [("u1", "A", 1), ("u2", "B", 2)]
    assert [r.describe("?") for r in rejected] == [
        f"{archive}:b.csv:3 field 'plays': plays 'x' is not a whole number of plays between 1 and 4294967295"
    ]
    offsets = [c.end_offset for c in source.chunks()]
    assert offsets == sorted(offsets) and offsets[-1] == source.total_bytes


def test_play_counts_and_events_in_one_folder_need_a_choice(tmp_path):
    shutil.copy(SAMPLES / "playcounts.tsv", tmp_path)
    shutil.copy(SAMPLES / "lastfm-1k.tsv", tmp_path)
    with pytest.raises(InputError, match=r"more than one format .*lastfm-1k\.tsv is lastfm-1k.*is playcounts"):
        open_source(tmp_path)
    assert [Path(f).name for f in open_source(tmp_path, format="playcounts").files] == ["playcounts.tsv"]


# ---------------------------------------------------------------------------------------------
# Against a plain reference reader
# ---------------------------------------------------------------------------------------------


def reference_read(data: bytes) -> tuple[list[dict], list[tuple[int, str, str | None]]] | None:
    """The rules of the playcounts module's docstring written out plainly: the csv module on the
    whole file. None: the header makes the file unusable."""
    end = data.find(b"\n")
    first = (data if end < 0 else data[: end + 1]).removeprefix(codecs.BOM_UTF8)
    try:
        line = first.decode("utf-8")
    except UnicodeDecodeError:
        return None
    delimiter = "\t" if "\t" in line else ","
    try:
        names = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    except csv.Error:
        return None
    lowered = [n.strip().lower() for n in names]
    positions = []
    for choices in (("user_id", "userid", "user"), ("artist", "artist_name", "artistid"), ("plays", "weight", "count")):
        found = [c for c in choices if c in lowered]
        if not found or lowered.count(found[0]) > 1:
            return None
        positions.append(lowered.index(found[0]))
    user, artist, plays = positions
    body = data[(len(data) if end < 0 else end + 1) :].decode("utf-8", errors="surrogateescape")
    reader = csv.reader(re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", body), delimiter=delimiter)
    rows, rejected = [], []
    before = 0
    for fields in reader:
        number = 2 + before
        before = reader.line_num
        if not fields:
            continue
        if len(fields) != len(names):
            rejected.append((number, "wrong_field_count", None))
            continue
        undecodable = [p for p in positions if any("\udc80" <= c <= "\udcff" for c in fields[p])]
        empty = [p for p in (user, artist) if fields[p] == ""]
        count = fields[plays]
        if undecodable:
            rejected.append((number, "invalid_utf8", names[undecodable[0]]))
        elif empty:
            rejected.append((number, "empty_field", names[empty[0]]))
        elif not (count and all(c in "0123456789" for c in count) and 1 <= int(count) < 2**32):
            rejected.append((number, "invalid_plays", names[plays]))
        else:
            rows.append({"user_id": fields[user], "artist": fields[artist], "plays": int(count)})
    return rows, rejected


USABLE_HEADERS = ["userID\tartistID\tweight", "user,artist,plays", "Artist_Name,note,USER,count",
                  "plays\tuser_id\tartist", "user_id,artistID,artist,weight,plays"]  # fmt: skip
HEADERS = USABLE_HEADERS * 3 + ["user\tartist", "user,artist,plays,plays"]
VALUES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
    st.sampled_from(["a,b", "t\tb", 'say "hi"', "two\nlines", "\r", '"', "ü", "\udcff"]),
    st.integers(0, 2**33).map(str),
    st.sampled_from(["0", "-1", "1.5", "007", "4294967295", "4294967296", " 3", "٣"]),
)


@st.composite
def playcount_files(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from(HEADERS))
    delimiter = "\t" if "\t" in header else ","
    width = header.count(delimiter) + 1
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for _ in range(draw(st.integers(0, 20))):
        fields = [draw(st.integers(1, 10**6).map(str)) if draw(st.booleans()) else draw(VALUES) for _ in range(width)]
        if draw(st.integers(0, 8)) == 0:
            fields = fields[: draw(st.integers(0, width))] if draw(st.booleans()) else [*fields, "extra"]
        quote = draw(st.sampled_from(["needed", "always", "never"]))
        lines.append(
            delimiter.join(
                '"' + f.replace('"', '""') + '"'
                if quote == "always" or (quote == "needed" and any(c in f for c in f'{delimiter}"\r\n'))
                else f
                for f in fields
            )
        )
    text = ("\ufeff" if draw(st.booleans()) else "") + header + newline + newline.join(lines)
    return (text + (newline if draw(st.booleans()) else "")).encode("utf-8", errors="surrogateescape")


@fuzz_settings(300, deadline_ms=10_000)
@given(data=playcount_files(), chunk_bytes=st.sampled_from([16, 64, 1 << 20]))
def test_generated_files_read_as_the_reference_reads_them(tmp_path_factory, data, chunk_bytes):
    path = tmp_path_factory.mktemp("playcounts") / "counts.txt"
    path.write_bytes(data)
    note(repr(data))
    expected = reference_read(data)
    if expected is None:
        with pytest.raises(InputError, match=f"^{re.escape(str(path))}"):
            read_file(path, chunk_bytes=chunk_bytes)
        event("unusable header")
        return
    rows, rejected, _ = read_file(path, chunk_bytes=chunk_bytes)
    assert (rows, rejected) == expected
    event(f"{'rows' if rows else 'no rows'}; rejected: {', '.join(sorted({r for _, r, _ in rejected})) or 'none'}")
    if rejected:
        with pytest.raises(BadRowError, match=f"^{re.escape(str(path))}:{rejected[0][0]}[: ]"):
            read_file(path, chunk_bytes=chunk_bytes, strict=True)


def test_the_reference_reads_the_bad_sample_as_the_reader_does():
    data = (SAMPLES / "playcounts-bad.csv").read_bytes()
    rows, rejected, _ = read_file(SAMPLES / "playcounts-bad.csv")
    assert reference_read(data) == (rows, rejected)
    assert io.BytesIO(data).readline().startswith(b"user,artist_name,plays")
