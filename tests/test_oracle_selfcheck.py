"""The oracle checked against answers worked out by hand, on small files written out literally.

These expectations are the only hard-coded analytics results in the test suite: everything else is
compared with the oracle, so the oracle itself must be right on ties, byte-wise string order, RFC 4180
quoting, CRLF line endings and the key rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.oracle import oracle, oracle_events, results_json

HEADER = "user_id,song_id,artist,duration,timestamp"
TS = "2026-01-01T00:00:00Z"


def write(tmp_path: Path, rows: list[str], newline: str = "\n", name: str = "events.csv") -> Path:
    """Rows are literal CSV lines (already quoted as they should appear in the file)."""
    path = tmp_path / name
    path.write_bytes((newline.join([HEADER, *rows]) + newline).encode("utf-8"))
    return path


def test_ties_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            f"u1,s1,A,100,{TS}",
            f"u1,s2,B,50,{TS}",
            f"u2,s1,A,10,{TS}",
            f"u2,s3,B,20,{TS}",
            f"u2,s3,B,30,{TS}",
            f"u3,s2,B,60,{TS}",
            f"u3,s4,C,40,{TS}",
        ],
    )
    r = oracle(path)
    # Three songs with 2 plays: ties by key ascending; then the single play.
    assert r["top_songs"] == [["A - s1", 2], ["B - s2", 2], ["B - s3", 2], ["C - s4", 1]]
    assert r["song_counts"] == {"A - s1": 2, "B - s2": 2, "B - s3": 2, "C - s4": 1}
    # u1: A and B once each -> tie -> "A"; u2: B twice; u3: B and C once each -> "B".
    assert r["users"] == {
        "u1": {"total_time": 150, "top_artist": "A"},
        "u2": {"total_time": 60, "top_artist": "B"},
        "u3": {"total_time": 100, "top_artist": "B"},
    }
    assert r["top_users"] == ["u1", "u3", "u2"]
    assert r["trending"] == ["A - s1", "B - s2", "B - s3", "C - s4"]
    assert r["recommendations"] == {
        "u1": ["B - s2", "B - s3", "C - s4"],
        "u2": ["A - s1", "C - s4"],
        "u3": ["A - s1", "C - s4"],
    }
    assert oracle_events(path) == 7


def test_limits_and_string_not_numeric_order(tmp_path: Path) -> None:
    # 12 songs by artist X: song sNN played 13 - NN times (s01: 12 plays ... s12: 1 play), all by u1.
    rows = [f"u1,s{i:02d},X,1,{TS}" for i in range(1, 13) for _ in range(13 - i)]
    # Six users with equal total time (u1 has 78 plays of 1 second; these have 78 s in one play),
    # so top_users is decided by user_id as strings: "u10" < "u2" < "u3" ...
    rows += [f"u{n},t1,Y,78,{TS}" for n in (2, 3, 10, 4, 5)]
    path = write(tmp_path, rows)
    r = oracle(path)
    # "Y - t1" (5 plays) ties with "X - s08" and comes after it by key; s09 is 10th, s10 is out.
    expected = [[f"X - s{i:02d}", 13 - i] for i in range(1, 9)] + [["Y - t1", 5], ["X - s09", 4]]
    assert r["top_songs"] == expected
    assert r["trending"] == [f"X - s{i:02d}" for i in range(1, 6)]
    assert len(r["song_counts"]) == 13
    assert r["top_users"] == ["u1", "u10", "u2", "u3", "u4"]
    # u1's top artist is X: every trending song is X's, nothing to recommend (still listed).
    assert r["recommendations"]["u1"] == []
    assert r["recommendations"]["u10"] == [f"X - s{i:02d}" for i in range(1, 6)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_unicode_quoting_and_byte_order(tmp_path: Path, newline: str) -> None:
    rows = [
        # Quoted comma and doubled quotes; a quoted duration is still a number.
        f'u1,s1,"Crosby, Stills & Nash",200,{TS}',
        f'u1,s2,"The ""Band""","100",{TS}',
        f'u1,s2,"The ""Band""",100,{TS}',
        # Byte order: "Zed" (0x5A) < "Ébène" (0xC3 0x89): a tie between them goes to "Zed".
        f"u2,s3,Ébène,10,{TS}",
        f"u2,s4,Zed,20,{TS}",
        # Case matters, as bytes: "Beta" (0x42) < "alpha" (0x61).
        f"u3,s5,alpha,1,{TS}",
        f"u3,s6,Beta,2,{TS}",
        # Non-Latin scripts and an emoji, all UTF-8: "東京" (0xE6) < "😀" (0xF0).
        f"u4,s7,😀,5,{TS}",
        f"u4,s8,東京,5,{TS}",
        f'"ü5",s1,"Crosby, Stills & Nash",7,{TS}',
    ]
    path = write(tmp_path, rows, newline=newline)
    r = oracle(path)
    assert r["top_songs"] == [
        ["Crosby, Stills & Nash - s1", 2],
        ['The "Band" - s2', 2],
        ["Beta - s6", 1],
        ["Zed - s4", 1],
        ["alpha - s5", 1],
        ["Ébène - s3", 1],
        ["東京 - s8", 1],
        ["😀 - s7", 1],
    ]
    assert r["users"] == {
        "u1": {"total_time": 400, "top_artist": 'The "Band"'},
        "u2": {"total_time": 30, "top_artist": "Zed"},
        "u3": {"total_time": 3, "top_artist": "Beta"},
        "u4": {"total_time": 10, "top_artist": "東京"},
        "ü5": {"total_time": 7, "top_artist": "Crosby, Stills & Nash"},
    }
    # "u4" and "ü5" are not tied (10 vs 7); "u3" last.
    assert r["top_users"] == ["u1", "u2", "u4", "ü5", "u3"]
    assert r["trending"] == ["Crosby, Stills & Nash - s1", 'The "Band" - s2', "Beta - s6", "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["u1"] == ["Crosby, Stills & Nash - s1", "Beta - s6", "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["u3"] == ["Crosby, Stills & Nash - s1", 'The "Band" - s2', "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["ü5"] == ['The "Band" - s2', "Beta - s6", "Zed - s4", "alpha - s5"]
    # The byte order the oracle uses is Python's str order, which the pipeline will use.
    assert [k for k, _ in r["top_songs"][2:]] == sorted(k for k, _ in r["top_songs"][2:])
    assert oracle_events(path) == 10


def test_same_key_from_two_artists(tmp_path: Path) -> None:
    # ("a - b", "c") and ("a", "b - c") both spell the key "a - b - c": counted together, and the
    # key's artist is the smaller name, "a".
    rows = [
        f"u1,c,a - b,10,{TS}",
        f"u1,b - c,a,10,{TS}",
        f"u2,c,a - b,5,{TS}",
        f"u2,c,a - b,5,{TS}",
    ]
    r = oracle(write(tmp_path, rows))
    assert r["top_songs"] == [["a - b - c", 4]]
    assert r["users"]["u1"] == {"total_time": 20, "top_artist": "a"}
    assert r["users"]["u2"] == {"total_time": 10, "top_artist": "a - b"}
    assert r["recommendations"] == {"u1": [], "u2": ["a - b - c"]}


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    assert oracle(path) == {
        "top_songs": [],
        "song_counts": {},
        "users": {},
        "top_users": [],
        "trending": [],
        "recommendations": {},
    }
    assert oracle_events(path) == 0


def test_results_json_shape(tmp_path: Path) -> None:
    path = write(tmp_path, [f"u2,s1,A,3,{TS}", f"u1,s1,A,4,{TS}", f"u1,s2,B,5,{TS}"])
    assert results_json(path) == {
        "mapreduce_results": {"top_songs": {"A - s1": 2, "B - s2": 1}, "distinct_songs": 2},
        "userbehavior_results": {
            "users": [
                {"user_id": "u1", "total_time": 9, "top_artist": "A"},
                {"user_id": "u2", "total_time": 3, "top_artist": "A"},
            ],
            "top_users": ["u1", "u2"],
        },
        "recommendation_results": {
            "trending_songs": ["A - s1", "B - s2"],
            "recommendations": {"u1": ["B - s2"], "u2": ["B - s2"]},
        },
        "events_processed": 3,
    }
