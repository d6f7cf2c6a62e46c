"""What an input spec can be (file, folder, glob, zip), telling formats apart, the errors that
stop a run before it starts, and replaying a prefix of the chunks exactly."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from music_analytics.client.csv_source import InputError
from music_analytics.client.sources import FORMATS, REJECT_REASONS, SKIP_REASONS, open_source, records

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
CSV_HEADER = "user_id,song_id,artist,duration,timestamp\n"


def events(source) -> tuple[list[dict], list]:
    rows, rejected = [], []
    for chunk in source.chunks():
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
    return rows, rejected


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("listenbrainz_rob_export.zip", "listenbrainz"),
        ("listenbrainz_listens.jsonl", "listenbrainz"),
        ("listenbrainz_carol.json", "listenbrainz"),
        ("spotify_extended_history.zip", "spotify"),
        ("endsong_0.json", "spotify"),
        ("lastfm-1k.tsv", "lastfm-1k"),
        ("lastfm_scrobbles.csv", "lastfm-scrobbles"),
        ("playcounts.tsv", "playcounts"),
        ("playcounts-bad.csv", "playcounts"),
        ("../stream_data.csv", "csv"),
    ],
)
def test_format_is_told_by_content(name, format):
    assert open_source(SAMPLES / name, user="someone").format == format


def test_a_zip_its_extracted_folder_and_a_glob_read_as_the_same_one_stream(tmp_path):
    archive = SAMPLES / "listenbrainz_rob_export.zip"
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "export")
    from_zip = events(open_source(archive))
    from_folder = open_source(tmp_path / "export")
    assert [Path(f).relative_to(tmp_path / "export").as_posix() for f in from_folder.files] == [
        f.split(":", 1)[1] for f in open_source(archive).files
    ]
    assert events(from_folder) == from_zip
    # The folder's user.json names the user here too; a glob of the month files has none to read.
    listens = tmp_path / "export" / "listens"
    assert events(open_source(f"{listens}/**/*.jsonl", user="rob"))[0] == from_zip[0]


def test_a_folder_reads_only_the_files_of_the_format_forced(tmp_path):
    source = open_source(SAMPLES, format="lastfm-1k")
    assert [Path(f).name for f in source.files] == ["lastfm-1k-bad.tsv", "lastfm-1k.tsv"]
    assert str(SAMPLES / "make_samples.py") in source.ignored
    rows, rejected = events(source)
    assert len(rows) == 2 + 24 and {Path(r.source).name for r in rejected} == {"lastfm-1k-bad.tsv"}


def test_csv_files_in_a_zip_read_in_place_as_one_stream_naming_each_file(tmp_path):
    archive = tmp_path / "events.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("b.csv", CSV_HEADER + "u2,s2,B,2,2024-01-02T00:00:00Z\nu3,s3,C,x,2024-01-03\n")
        z.writestr("a.csv", CSV_HEADER + "u1,s1,A,1,2024-01-01T00:00:00+01:00\n")
    source = open_source(archive)
    assert source.format == "csv" and source.files == [f"{archive}:a.csv", f"{archive}:b.csv"]
    rows, rejected = events(source)
    assert [(r["user_id"], r["timestamp"]) for r in rows] == [("u1", 1704063600), ("u2", 1704153600)]
    assert [r.describe("?") for r in rejected] == [
        f"{archive}:b.csv:3 field 'duration': duration 'x' is not a whole number of seconds between 0 and 4294967295"
    ]
    offsets = [c.end_offset for c in source.chunks()]
    assert offsets == sorted(offsets) and offsets[-1] == source.total_bytes


def test_an_unusable_csv_header_in_a_folder_names_the_file(tmp_path):
    (tmp_path / "a.csv").write_text(CSV_HEADER + "u,s,A,1,2024-01-01\n")
    (tmp_path / "b.csv").write_text("user_id,song_id,artist,timestamp\nu,s,A,2024-01-01\n")
    with pytest.raises(InputError, match=f"^{tmp_path / 'b.csv'}:1: header lacks required column"):
        open_source(tmp_path, format="csv")


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 1000])
def test_stop_after_replays_exactly_the_first_chunks_of_a_full_read(monkeypatch, rows_per_chunk):
    monkeypatch.setattr(records, "CHUNK_ROWS", rows_per_chunk)
    source = open_source(SAMPLES, format="listenbrainz")  # three files, one with bad listens
    full = list(source.chunks())
    assert len(full) >= 2 or rows_per_chunk == 1000
    offsets = [c.end_offset for c in full]
    assert offsets == sorted(offsets) and offsets[-1] == source.total_bytes
    for k in range(len(full) + 1):
        prefix = list(source.chunks(stop_after=k))
        assert [(c.table, c.rejected, c.end_offset, c.skipped) for c in prefix] == [
            (c.table, c.rejected, c.end_offset, c.skipped) for c in full[:k]
        ]


def test_a_chunk_spans_files(monkeypatch):
    monkeypatch.setattr(records, "CHUNK_ROWS", 25)
    source = open_source(SAMPLES / "listenbrainz_rob_export.zip")
    sizes = [c.table.num_rows for c in source.chunks()]
    assert sizes == [25, 5]  # 30 listens in three month files


def test_the_reasons_cover_every_format():
    assert REJECT_REASONS[:6] == ("wrong_field_count", "invalid_utf8", "empty_field", "invalid_duration",
                                  "invalid_timestamp", "invalid_plays")  # fmt: skip
    seen = set()
    for name, user in (("listenbrainz-bad.jsonl", None), ("spotify-bad.json", None), ("lastfm-1k-bad.tsv", None),
                       ("lastfm-scrobbles-bad.csv", "u"), ("playcounts-bad.csv", None)):  # fmt: skip
        seen |= {r.reason for r in events(open_source(SAMPLES / name, user=user))[1]}
    assert seen <= set(REJECT_REASONS) and len(seen) == len(REJECT_REASONS) - 1  # all but invalid_field
    assert SKIP_REASONS == ("spotify_podcast", "spotify_audiobook")


def test_a_file_of_the_wrong_type_is_rejected_not_fatal(tmp_path):
    path = tmp_path / "listens.jsonl"
    good = {"listened_at": 5, "user_name": "u", "track_metadata": {"artist_name": "A", "track_name": "T"}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"track_metadata": {"artist_name": 7}}) + "\n")
    rows, rejected = events(open_source(path))
    assert len(rows) == 1 and [(r.line, r.reason, r.field) for r in rejected] == [
        (2, "invalid_field", "track_metadata.artist_name")
    ]


def test_format_given_overrides_detection(tmp_path):
    empty = tmp_path / "history.json"
    empty.write_text("[]")
    with pytest.raises(InputError, match="cannot tell the format; pass --format"):
        open_source(empty)
    source = open_source(empty, format="spotify", user="u")
    assert source.format == "spotify" and events(source) == ([], [])
    # Read as scrobbles, a Last.fm-1K line has the wrong number of fields.
    tsv = open_source(SAMPLES / "lastfm-1k.tsv", format="lastfm-scrobbles", user="u")
    assert {r.reason for r in events(tsv)[1]} == {"wrong_field_count"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "absent.zip"), "absent.zip: no such file or folder"),
        (lambda d: str(d / "*.json"), r"\*\.json: no file matches this pattern"),
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "empty: empty folder"),
        (
            lambda d: (d / "notes.txt").write_text("hello\n") and str(d / "notes.txt"),
            "notes.txt: cannot tell the format",
        ),
        (lambda d: (d / "e.csv").write_text("") or str(d / "e.csv"), "e.csv: empty file"),
        (lambda d: shutil.copy(SAMPLES / "lastfm-1k.tsv", d / "a.tsv") and str(d), "no file of format spotify"),
    ],
    ids=["missing", "glob-no-match", "empty-folder", "undetectable", "empty-csv", "no-file-of-format"],
)
def test_unusable_input_fails_up_front_naming_it(tmp_path, make, message):
    spec = make(tmp_path)
    fmt = "spotify" if message.startswith("no file of format") else None
    with pytest.raises(InputError, match=message):
        open_source(spec, format=fmt)


def test_files_of_two_formats_in_one_folder_need_a_choice(tmp_path):
    shutil.copy(SAMPLES / "lastfm-1k.tsv", tmp_path)
    shutil.copy(SAMPLES / "endsong_0.json", tmp_path)
    with pytest.raises(InputError, match=r"more than one format .*endsong_0\.json is spotify.*lastfm-1k"):
        open_source(tmp_path)


def test_unknown_format_name():
    with pytest.raises(InputError, match="unknown format 'itunes'; expected one of " + ", ".join(FORMATS)):
        open_source(SAMPLES / "lastfm-1k.tsv", format="itunes")


def test_the_committed_samples_are_what_their_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in SAMPLES.iterdir() if p.name != "make_samples.py")
    for name in written:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name


def test_the_last_chunk_ends_where_the_input_does_after_trailing_blank_lines(tmp_path, monkeypatch):
    """Found by the importers' fuzz test: a full chunk followed by nothing but a blank line ended
    a byte short of the input, so progress never reached 100%."""
    monkeypatch.setattr(records, "CHUNK_ROWS", 1)
    line = "user_000001\t2009-01-01T20:46:03Z\t\tRadiohead\t\tAirbag\n"
    path = tmp_path / "history.tsv"
    path.write_text(line * 3 + "\n\n")
    source = open_source(path, format="lastfm-1k")
    offsets = [chunk.end_offset for chunk in source.chunks()]
    assert len(offsets) == 3 and offsets == sorted(offsets) and offsets[-1] == source.total_bytes
