"""Writes the sample listening histories in this folder (deterministic: run it again, get the same bytes).

    python data/samples/make_samples.py

Each sample has the shape of the real export (or dataset), the fields we ignore included, with
made-up values; the ``*-bad*`` files hold one record of each kind of problem among valid ones.
tests/test_sources_*.py read them.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZIP_TIME = (2024, 6, 1, 12, 0, 0)  # fixed member times: the zips' bytes do not depend on when they are made

ARTISTS = [
    ("Björk", "87c5dedd-371d-4a53-9f7f-80522fb7f3cb"),
    ("Earth, Wind & Fire", "535afeda-2538-435d-9dd1-5e10be586774"),
    ('The "Quoted" Band', "00000000-0000-4000-8000-000000000001"),
    ("坂本龍一", "ab5e1d8e-3fba-4c0a-a1b7-3f0b16f3a9f2"),
    ("Radiohead", "a74b1b7f-71a5-4011-9441-d0b5e4122711"),
]
TRACKS = {
    "Björk": ["Jóga", "Hyperballad", "Army of Me"],
    "Earth, Wind & Fire": ["September", "Let's Groove"],
    'The "Quoted" Band': ['Say "Hi"'],
    "坂本龍一": ["Merry Christmas Mr. Lawrence", "Energy Flow"],
    "Radiohead": ["Airbag", "Paranoid Android", "Reckoner"],
}


def uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def plays(rng: random.Random, n: int, start: dt.datetime) -> list[tuple[str, str, str, int, dt.datetime]]:
    """n plays: (artist, artist mbid, track, track length s, start instant), in time order."""
    out = []
    t = start
    for _ in range(n):
        artist, mbid = rng.choice(ARTISTS)
        track = rng.choice(TRACKS[artist])
        length = 150 + (sum(map(ord, track)) % 200)
        t += dt.timedelta(seconds=rng.randrange(200, 200_000))
        out.append((artist, mbid, track, length, t))
    return out


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)


def epoch(t: dt.datetime) -> int:
    return int(t.timestamp())


# ---------------------------------------------------------------------------------------------
# ListenBrainz
# ---------------------------------------------------------------------------------------------


def lb_listen(rng: random.Random, play: tuple, *, user: str | None, mapped: bool, msid_at: str) -> dict:
    artist, artist_mbid, track, length, t = play
    msid = uuid(rng)
    info: dict = {"submission_client": "Navidrome", "submission_client_version": "0.52.5", "media_player": "web"}
    if rng.random() < 0.5:
        info["duration_ms"] = length * 1000 + rng.randrange(1000)
    elif rng.random() < 0.5:
        info["duration"] = length
    if msid_at == "additional_info":
        info["recording_msid"] = msid
    metadata: dict = {"artist_name": artist, "track_name": track, "release_name": "Album", "additional_info": info}
    if msid_at == "track_metadata":
        metadata["recording_msid"] = msid
    if msid_at != "none":
        metadata["mbid_mapping"] = (
            {
                "recording_name": track,
                "recording_mbid": uuid(rng),
                "release_mbid": uuid(rng),
                "artist_mbids": [artist_mbid],
                "caa_id": rng.randrange(10**10),
                "caa_release_mbid": uuid(rng),
                "artists": [{"artist_credit_name": artist, "join_phrase": "", "artist_mbid": artist_mbid}],
            }
            if mapped
            else None
        )
    listen: dict = {"listened_at": epoch(t), "inserted_at": epoch(t) + 5, "track_metadata": metadata}
    if user is not None:
        listen["user_name"] = user
        if msid_at == "top":
            listen["recording_msid"] = msid
    return listen


def jsonl(records: list) -> bytes:
    # Non-ASCII as UTF-8, not escaped: as the export writes it.
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def listenbrainz(rng: random.Random, out: Path) -> None:
    # The export zip: listens/YYYY/M.jsonl (month not zero-padded) and no user name in a listen.
    by_month: dict[tuple[int, int], list] = {}
    for play in plays(rng, 30, dt.datetime(2023, 11, 20, tzinfo=dt.UTC)):
        listen = lb_listen(rng, play, user=None, mapped=rng.random() < 0.6, msid_at="track_metadata")
        # The export's epoch values are numeric with a fraction (PostgreSQL's extract(epoch ...)).
        listen["listened_at"] = float(listen["listened_at"])
        by_month.setdefault((play[4].year, play[4].month), []).append(listen)
    members = [("user.json", b'{"user_id": 4711, "username": "rob"}\n')]
    members += [(f"listens/{y}/{m}.jsonl", jsonl(ls)) for (y, m), ls in sorted(by_month.items())]
    members.append(("feedback.jsonl", b'{"recording_msid": "5b7e3a7e-2d2c-4f5b-9c59-8f0e0d3b9a11", '
                                      b'"recording_mbid": null, "score": 1, "created": 1700000000}\n'))  # fmt: skip
    write_zip(out / "listenbrainz_rob_export.zip", members)

    # JSON Lines from the API, two users, and the older JSON array export of one.
    records = [
        lb_listen(rng, p, user=rng.choice(["alice", "bob"]), mapped=rng.random() < 0.5, msid_at="additional_info")
        for p in plays(rng, 20, dt.datetime(2021, 3, 1, tzinfo=dt.UTC))
    ]
    (out / "listenbrainz_listens.jsonl").write_bytes(jsonl(records))
    array = [
        lb_listen(rng, p, user="carol", mapped=False, msid_at="top")
        for p in plays(rng, 12, dt.datetime(2019, 12, 25, tzinfo=dt.UTC))
    ]
    (out / "listenbrainz_carol.json").write_text(json.dumps(array, ensure_ascii=False, indent=2) + "\n")

    good = [lb_listen(rng, p, user="dave", mapped=True, msid_at="track_metadata")
            for p in plays(rng, 4, dt.datetime(2022, 1, 1, tzinfo=dt.UTC))]  # fmt: skip
    missing_time = lb_listen(rng, plays(rng, 1, dt.datetime(2022, 2, 1, tzinfo=dt.UTC))[0], user="dave",
                             mapped=False, msid_at="none")  # fmt: skip
    del missing_time["listened_at"]
    text_time = dict(good[0], listened_at="2022-01-01T10:00:00Z")
    empty_artist = json.loads(json.dumps(good[1]))
    empty_artist["track_metadata"]["artist_name"] = ""
    negative = json.loads(json.dumps(good[2]))
    negative["track_metadata"]["additional_info"] = {"duration_ms": -5000}

    def line(record: dict) -> bytes:
        return json.dumps(record, ensure_ascii=False).encode()

    lines = [
        line(good[0]),  # line 1
        b'{"listened_at": 1640995200, "track_metadata": {"artist_name": "A", "track_name": ',  # 2: invalid JSON
        line(missing_time),  # 3: missing_field listened_at
        line(text_time),  # 4: invalid_timestamp
        line(empty_artist),  # 5: empty_field
        line(negative),  # 6: invalid_duration
        line(good[1]).replace(b'"user_name": "dave"', b'"user_name": "dav\xffe"'),  # 7: invalid_utf8
        b'["not", "an", "object"]',  # 8: invalid_json (not an object)
        line(good[3]),  # 9
    ]
    (out / "listenbrainz-bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")


# ---------------------------------------------------------------------------------------------
# Spotify
# ---------------------------------------------------------------------------------------------


def spotify_stream(rng: random.Random, play: tuple, *, username: str | None, kind: str = "track") -> dict:
    artist, _, track, length, t = play
    ms = length * 1000 if rng.random() < 0.7 else rng.randrange(1000, length * 1000)
    ended = t + dt.timedelta(milliseconds=ms)
    stream: dict = {"ts": ended.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if username is not None:
        stream["username"] = username
    stream |= {
        "platform": rng.choice(["android", "ios", "windows", "Partner google cast_tv"]),
        "ms_played": ms,
        "conn_country": "DE",
        "ip_addr": f"192.0.2.{rng.randrange(1, 255)}",
        "master_metadata_track_name": track,
        "master_metadata_album_artist_name": artist,
        "master_metadata_album_album_name": "Album",
        "spotify_track_uri": "spotify:track:" + "".join(rng.choice("0123456789ABCDEFabcdef") for _ in range(22)),
        "episode_name": None,
        "episode_show_name": None,
        "spotify_episode_uri": None,
        "audiobook_title": None,
        "audiobook_uri": None,
        "audiobook_chapter_uri": None,
        "audiobook_chapter_title": None,
        "reason_start": rng.choice(["trackdone", "clickrow", "fwdbtn"]),
        "reason_end": rng.choice(["trackdone", "endplay", "fwdbtn"]),
        "shuffle": rng.random() < 0.5,
        "skipped": ms < length * 1000,
        "offline": False,
        "offline_timestamp": None,
        "incognito_mode": False,
    }
    if kind != "track":
        for key in ("master_metadata_track_name", "master_metadata_album_artist_name",
                    "master_metadata_album_album_name", "spotify_track_uri"):  # fmt: skip
            stream[key] = None
    if kind == "podcast":
        stream |= {"episode_name": "Episode 12", "episode_show_name": "A Show",
                   "spotify_episode_uri": "spotify:episode:5Xt5DXGzch68nYYamXrNxZ"}  # fmt: skip
    if kind == "audiobook":
        stream |= {"audiobook_title": "A Book", "audiobook_uri": "spotify:show:7iHfbu1YPACw6oZPAFJtqe",
                   "audiobook_chapter_uri": "spotify:episode:0Q86acNRm6V9GYx55SXKwf",
                   "audiobook_chapter_title": "Chapter 1"}  # fmt: skip
    return stream


def spotify(rng: random.Random, out: Path) -> None:
    files = []
    start = dt.datetime(2023, 3, 20, tzinfo=dt.UTC)
    for index in range(2):
        streams = [spotify_stream(rng, p, username=None) for p in plays(rng, 15, start)]
        start = dt.datetime(2024, 3, 25, tzinfo=dt.UTC)
        streams.insert(3, spotify_stream(rng, plays(rng, 1, start)[0], username=None, kind="podcast"))
        streams.insert(7, spotify_stream(rng, plays(rng, 1, start)[0], username=None, kind="audiobook"))
        name = f"Spotify Extended Streaming History/Streaming_History_Audio_{2023 + index}_{index}.json"
        files.append((name, json.dumps(streams, ensure_ascii=False, indent=2).encode()))
    video = [spotify_stream(rng, plays(rng, 1, start)[0], username=None)]
    files.append(("Spotify Extended Streaming History/Streaming_History_Video_2024.json", json.dumps(video).encode()))
    files.append(("Spotify Extended Streaming History/ReadMeFirst_ExtendedStreamingHistory.pdf",
                  b"%PDF-1.4\n% sample stand-in for Spotify's field guide\n%%EOF\n"))  # fmt: skip
    write_zip(out / "spotify_extended_history.zip", files)

    # An older export (endsong_N.json) whose streams name the user.
    old = [spotify_stream(rng, p, username="erin_sp") for p in plays(rng, 10, dt.datetime(2018, 10, 26, tzinfo=dt.UTC))]
    (out / "endsong_0.json").write_text(json.dumps(old, ensure_ascii=False, indent=1) + "\n")

    good = [spotify_stream(rng, p, username="erin_sp") for p in plays(rng, 3, dt.datetime(2020, 1, 1, tzinfo=dt.UTC))]
    no_track = spotify_stream(rng, plays(rng, 1, dt.datetime(2020, 2, 1, tzinfo=dt.UTC))[0], username="erin_sp",
                              kind="unknown")  # fmt: skip
    bad_ts = dict(good[0], ts="2020-13-01T00:00:00Z")
    bad_ms = dict(good[1], ms_played="lots")
    no_artist = dict(good[2], master_metadata_album_artist_name=None)
    records = [good[0], no_track, bad_ts, bad_ms, no_artist, good[1], good[2]]
    (out / "spotify-bad.json").write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Last.fm
# ---------------------------------------------------------------------------------------------


def lastfm(rng: random.Random, out: Path) -> None:
    lines = []
    for user in ("user_000001", "user_000002", "user_000003"):
        for artist, artist_mbid, track, _, t in plays(rng, 8, dt.datetime(2008, 12, 28, tzinfo=dt.UTC)):
            track_mbid = uuid(rng) if rng.random() < 0.6 else ""
            lines.append("\t".join([user, t.strftime("%Y-%m-%dT%H:%M:%SZ"), artist_mbid, artist, track_mbid, track]))
    (out / "lastfm-1k.tsv").write_text("\n".join(lines) + "\n")
    bad = [
        lines[0],
        "user_000004\t2009-05-04T23:08:57Z\t\tDeep Dish\t",  # 2: five fields
        "user_000004\t2009-02-30T10:00:00Z\t\tDeep Dish\t\tFlashdance",  # 3: no such date
        "user_000004\t2009-05-04T23:08:57Z\t\t\t\tFlashdance",  # 4: no artist name
        "\t2009-05-04T23:08:57Z\t\tDeep Dish\t\tFlashdance",  # 5: no user
        lines[1],
    ]
    (out / "lastfm-1k-bad.tsv").write_text("\n".join(bad) + "\n")

    rows = []
    for artist, _, track, _, t in reversed(plays(rng, 25, dt.datetime(2021, 1, 10, tzinfo=dt.UTC))):
        album = "" if rng.random() < 0.2 else "Album, Deluxe" if rng.random() < 0.3 else "Album"
        fields = [artist, album, track, t.strftime("%d %b %Y %H:%M")]
        rows.append(",".join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"') else f for f in fields))
    (out / "lastfm_scrobbles.csv").write_text("\n".join(rows) + "\n")
    bad_rows = [
        rows[0],
        "Radiohead,OK Computer,Airbag",  # 2: three fields
        "Radiohead,OK Computer,Airbag,31 Foo 2021 14:05",  # 3: no such month
        ",OK Computer,Airbag,31 Jan 2021 14:05",  # 4: no artist
        "Radiohead,OK Computer,,31 Jan 2021 14:05",  # 5: no track
        rows[1],
    ]
    (out / "lastfm-scrobbles-bad.csv").write_text("\n".join(bad_rows) + "\n")


# ---------------------------------------------------------------------------------------------
# Play counts
# ---------------------------------------------------------------------------------------------


def playcounts(rng: random.Random, out: Path) -> None:
    # HetRec 2011's user_artists.dat shape: numeric ids, tab-separated, rows by user then artist.
    # Three groups of artists; each user mostly plays one group, so tastes differ.
    groups = [range(group * 10 + 1, group * 10 + 11) for group in range(3)]
    lines = ["userID\tartistID\tweight"]
    for user in range(2, 20):
        favourite = groups[user % 3]
        artists = set(rng.sample(favourite, rng.randrange(3, 7)))
        artists |= set(rng.sample(range(1, 31), rng.randrange(0, 3)))
        for artist in sorted(artists):
            weight = int(rng.paretovariate(1.2) * (60 if artist in favourite else 8))
            lines.append(f"{user}\t{artist}\t{weight}")
    (out / "playcounts.tsv").write_text("\n".join(lines) + "\n")

    # Named columns in a CSV (quoted where a name needs it), one row of each kind of problem.
    bad = [
        b"user,artist_name,plays,country",
        b'alice,"Earth, Wind & Fire",12,DE',  # 2
        b"alice,Radiohead",  # 3: two fields
        b"bob,Bj\xf6rk,3,IS",  # 4: Latin-1, not UTF-8
        b",Radiohead,4,DE",  # 5: no user
        b"bob,,4,DE",  # 6: no artist
        b"bob,Radiohead,0,DE",  # 7: no plays
        b"bob,Radiohead,-1,DE",  # 8
        b"bob,Radiohead,1.5,DE",  # 9
        b"bob,Radiohead,4294967296,DE",  # 10: past 2^32-1
        b"bob,Radiohead,,DE",  # 11: empty
        b'carol,"The ""Quoted"" Band",7,FR',  # 12
        f"carol,{ARTISTS[3][0]},{rng.randrange(1, 500)},JP".encode(),  # 13
    ]
    (out / "playcounts-bad.csv").write_bytes(b"\n".join(bad) + b"\n")


def main(out: Path = HERE) -> None:
    listenbrainz(random.Random(1), out)
    spotify(random.Random(2), out)
    lastfm(random.Random(3), out)
    playcounts(random.Random(4), out)


if __name__ == "__main__":
    main()
