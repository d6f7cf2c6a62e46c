"""Deterministic, realistic synthetic listening events: ``music-analytics generate``.

The model, in the order the random numbers are drawn:

* a catalogue: artists with Zipf popularity, each in one genre; songs grouped by artist (popular
  artists have more songs), a skewed popularity inside each artist's catalogue, a track length each;
* taste clusters: sets of artists from one genre or two, members drawn by flattened popularity (the
  stars sit in many clusters, the rest of a cluster is its own), each member weighted by its
  popularity times a liking of the cluster's own;
* listeners: heavy-tailed (log-normal) activity, a taste cluster (a few mainstream clusters with
  large audiences, many niche ones), a few favourite artists from it and a loyalty (the share of
  plays that go to those favourites);
* events in time order (Poisson arrivals warped by a daily cycle): a listener drawn by activity,
  then a favourite artist, an artist of their cluster, of their cluster's main genre or any artist
  (by popularity), then a song of that artist and how long it was played (full length, or a skip).

So listeners of one cluster share many artists (what a collaborative-filtering recommender finds),
while global popularity still decides much of everyone's listening (what most-popular finds).

Output is byte-identical for a given ``(events, seed, tricky, crlf)`` on the same numpy version: the
catalogue comes from one seeded generator and every chunk of rows from its own generator seeded with
``(seed, chunk index)`` and a fixed chunk size. Rows are built with Arrow string kernels (take +
join of pre-rendered fields), so 10M rows take seconds and memory stays bounded by one chunk.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = "user_id,song_id,artist,duration,timestamp"

# Bump when the output for a given (events, seed) changes, so caches keyed on it are invalidated.
FORMAT_VERSION = 2

# Fixed: it is part of what makes the output deterministic (one generator per chunk).
CHUNK_ROWS = 1 << 18

START_EPOCH = np.datetime64("2026-01-01T00:00:00", "s")
SPAN_DAYS = 30

# Cardinalities at the reference size; smaller inputs scale down sub-linearly (see _cardinalities).
REFERENCE_EVENTS = 10_000_000
REFERENCE_USERS, REFERENCE_SONGS, REFERENCE_ARTISTS = 200_000, 400_000, 20_000

# Listeners' taste (see _catalogue). Tuned together: on a random 80/20 split of (user, artist)
# pairs of 200k events, item-kNN (BM25, K=50) gets about 2.5x the NDCG@10 of most-popular while
# most-popular stays far above chance, and 10M events hold about 5M distinct (user, artist) pairs.
FAVOURITES = 6
# Loyalty (the share of a listener's plays that go to their favourites) is LOYALTY_LOW plus
# LOYALTY_RANGE times a Beta(5, 4): low enough that listeners explore their cluster.
LOYALTY_LOW, LOYALTY_RANGE = 0.05, 0.4
# Of the plays that are not a favourite's: this share from the listener's cluster, this from
# their genre, the rest from the whole catalogue by global popularity (which keeps stars popular).
SHARE_CLUSTER = 0.75
SHARE_GENRE = 0.1
# About one cluster per this many artists; sqrt(artists) members each (44 at 200k events, 141 at 10M).
ARTISTS_PER_CLUSTER = 20
# Share of clusters that span a second genre.
TWO_GENRE_SHARE = 0.4
# A cluster's genres are drawn by genre popularity to this power: with the plain popularity the
# genre that happens to hold the top few stars takes a third of all clusters, and the clusters
# inside it, sharing those stars, become hard to tell apart.
GENRE_FLATTEN = 0.5
# Members are drawn by popularity to this power: stars sit in many clusters, the rest is the
# cluster's own.
MEMBER_EXPONENT = 0.3
# Inside a cluster an artist weighs popularity**LIKING_EXPONENT times a log-normal liking of
# spread LIKING_SPREAD: each cluster has its own favourites.
LIKING_EXPONENT = 0.5
LIKING_SPREAD = 0.8
# Clusters' audiences are Zipf-like with this exponent: a few mainstream tastes, many niche ones.
CLUSTER_AUDIENCE_EXPONENT = 0.7

_ONSETS = ["", "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p"]
_ONSETS += ["qu", "r", "s", "sh", "sl", "st", "t", "tr", "v", "w", "z"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "l", "x", "th", "m", "nd", "ck"]
_PREFIXES = ["The ", "DJ ", "MC ", "Lil ", "Los ", "Big ", "Saint ", "Dr. "]
_SUFFIXES = [" Band", " Trio", " Collective", " Orchestra", " & The Waves", " Project", " Quartet"]

# Tricky mode: names that exercise UTF-8, RFC 4180 quoting and collation. Plain ASCII is replaced by
# these for some artists, including the most popular ones so they reach top songs and trending.
_TRICKY_NAMES = [
    "Crosby, Stills & Nash",
    'The "Quoted" Ones',
    "Sigur Rós",
    "Mötley Crüe",
    "Beyoncé",
    "坂本龍一",
    "Ólafur Arnalds",
    'Zoë, "Z" & Ünal',
    "Ångström",
    "Ελένη",
    "Мумий Тролль",
    "🎸 Emoji Band",
    'Say "Hi", Then Leave',
    "a, b, c",
    "Ça Va",
]


@dataclass(frozen=True)
class Cardinalities:
    users: int
    songs: int
    artists: int
    genres: int
    clusters: int  # taste clusters
    cluster_size: int  # artists per taste cluster (fewer if its genres have fewer)


def _cardinalities(events: int) -> Cardinalities:
    """About 200k users, 400k songs and 20k artists at 10M events; sub-linear below (catalogues and
    audiences do not shrink in proportion to a shorter log), never more than there are events."""
    r = max(events, 1) / REFERENCE_EVENTS
    n = max(events, 1)
    artists = max(1, min(n, round(REFERENCE_ARTISTS * r**0.6)))
    songs = max(artists, min(n, round(REFERENCE_SONGS * r**0.7)))
    users = max(1, min(n, round(REFERENCE_USERS * r**0.75)))
    genres = max(1, min(24, round(math.sqrt(artists) / 4)))
    clusters = max(1, min(users, round(artists / ARTISTS_PER_CLUSTER)))
    cluster_size = max(1, round(math.sqrt(artists)))
    return Cardinalities(
        users=users, songs=songs, artists=artists, genres=genres, clusters=clusters, cluster_size=cluster_size
    )


def _csv_field(value: str) -> str:
    """RFC 4180: quote a field only when it holds a comma, quote or line break; double inner quotes."""
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _artist_names(rng: np.random.Generator, count: int) -> list[str]:
    """Unique, pronounceable ASCII names built from syllables ("The Kraith", "Velou Marn")."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        batch = count - len(names)
        parts = [
            rng.integers(0, len(_ONSETS), (batch, 3)),
            rng.integers(0, len(_NUCLEI), (batch, 3)),
            rng.integers(0, len(_CODAS), (batch, 3)),
        ]
        shape = rng.random((batch, 4))
        for i in range(batch):
            n_syll = 1 + int(shape[i, 0] * 2.2)  # 1-3 syllables, mostly 1-2
            word = "".join(
                _ONSETS[parts[0][i, k]] + _NUCLEI[parts[1][i, k]] + _CODAS[parts[2][i, k]] for k in range(n_syll)
            ).capitalize()
            if shape[i, 1] < 0.45:  # a two-word name: a second, shorter word
                k = 2
                word += " " + (_ONSETS[parts[0][i, k]] + _NUCLEI[parts[1][i, k]] + _CODAS[parts[2][i, 0]]).capitalize()
            if shape[i, 2] < 0.12:
                word = _PREFIXES[int(shape[i, 3] * len(_PREFIXES))] + word
            elif shape[i, 2] > 0.93:
                word += _SUFFIXES[int(shape[i, 3] * len(_SUFFIXES))]
            if len(word) >= 2 and word not in seen:
                seen.add(word)
                names.append(word)
    return names


@dataclass
class _Catalogue:
    users: pa.Array  # rendered user ids, by user index
    songs: pa.Array  # rendered song ids, by song index (songs are grouped by artist)
    song_artist: pa.Array  # rendered (CSV-quoted) artist name, by song index
    song_length: np.ndarray  # seconds, by song index
    artist_first_song: np.ndarray  # per artist: index of its first song
    artist_n_songs: np.ndarray  # per artist: number of songs
    # One cumulative weight table for every way of picking an artist: first the whole catalogue
    # ordered by genre (global popularity), then each taste cluster's members (weights inside the
    # cluster). A pick is a [lo, hi) range of it and one searchsorted.
    pick_cum: np.ndarray
    pick_artist: np.ndarray  # artist index at each position of pick_cum
    genre_lo: np.ndarray  # per genre: [lo, hi) range in pick_cum
    genre_hi: np.ndarray
    cluster_lo: np.ndarray  # per taste cluster: [lo, hi) range in pick_cum
    cluster_hi: np.ndarray
    user_cum: np.ndarray  # cumulative user activity
    user_loyalty: np.ndarray  # share of a user's plays that go to their favourites
    user_cluster: np.ndarray
    user_genre: np.ndarray  # the cluster's main genre
    user_favourites: np.ndarray  # (users, FAVOURITES) artist indices, most loved first


FAVOURITES = 6


def _catalogue(events: int, seed: int, tricky: bool) -> _Catalogue:
    card = _cardinalities(events)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA7A]))
    n_a, n_s, n_u, n_g = card.artists, card.songs, card.users, card.genres

    # Artists: Zipf popularity (exponent 1) assigned in random order, so names and ranks are unrelated.
    artist_w = 1.0 / (rng.permutation(n_a) + 1.0) ** 1.05
    artist_genre = rng.integers(0, n_g, n_a)
    names = _artist_names(rng, n_a)
    if tricky:
        # The most popular artists get tricky names first, then a sprinkle of others.
        by_pop = np.argsort(-artist_w, kind="stable")
        chosen = list(by_pop[: min(5, n_a)]) + list(rng.choice(n_a, size=min(n_a, 40), replace=False))
        taken = set(names)
        k = 0
        for a in chosen:
            if names[a] in _TRICKY_NAMES or k >= len(_TRICKY_NAMES) * 3:
                continue
            base = _TRICKY_NAMES[k % len(_TRICKY_NAMES)]
            name = base if k < len(_TRICKY_NAMES) else f"{base} {k // len(_TRICKY_NAMES) + 1}"
            k += 1
            if name not in taken:
                taken.add(name)
                names[a] = name

    # Songs per artist grow with the square root of popularity; every artist has at least one.
    share = np.sqrt(artist_w) / np.sqrt(artist_w).sum()
    n_songs = 1 + np.floor(share * (n_s - n_a)).astype(np.int64)
    first = np.concatenate(([0], np.cumsum(n_songs)[:-1]))
    total_songs = int(n_songs.sum())
    # Song ids are a random permutation so that "song_0000001" is not the biggest hit.
    song_numbers = rng.permutation(total_songs) + 1
    width = max(7, len(str(total_songs)))
    songs = pa.array([f"song_{k:0{width}d}" for k in song_numbers.tolist()])
    rendered = pa.array([_csv_field(n) for n in names])
    song_artist = rendered.take(pa.array(np.repeat(np.arange(n_a), n_songs)))
    song_length = np.clip(np.round(rng.lognormal(math.log(215.0), 0.33, total_songs)), 45, 720).astype(np.int64)

    # Artists ordered by genre: the first n_a entries of the pick table hold their cumulative
    # global popularity, so a genre is a sub-range and the whole catalogue the full range.
    artist_by_genre = np.argsort(artist_genre, kind="stable")
    sorted_genres = artist_genre[artist_by_genre]
    genre_lo = np.searchsorted(sorted_genres, np.arange(n_g), side="left")
    genre_hi = np.searchsorted(sorted_genres, np.arange(n_g), side="right")
    genre_pop = np.bincount(artist_genre, weights=artist_w, minlength=n_g)

    # Taste clusters, each a set of artists from one genre or two, members drawn by flattened
    # popularity (stars sit in many clusters, so they stay popular overall; the rest of a cluster
    # is its own) and weighted inside the cluster by popularity times a cluster-specific liking.
    n_c = card.clusters
    # A genre with no artist (possible for tiny inputs) has weight 0, so no cluster draws it.
    genre_p = genre_pop**GENRE_FLATTEN / (genre_pop**GENRE_FLATTEN).sum()
    main_genre = rng.choice(n_g, size=n_c, p=genre_p)
    other_genre = np.where(rng.random(n_c) < TWO_GENRE_SHARE, rng.choice(n_g, size=n_c, p=genre_p), main_genre)
    log_w = np.log(artist_w)
    members: list[np.ndarray] = []
    liking: list[np.ndarray] = []
    for c in range(n_c):
        pool = artist_by_genre[genre_lo[main_genre[c]] : genre_hi[main_genre[c]]]
        if other_genre[c] != main_genre[c]:
            pool = np.concatenate((pool, artist_by_genre[genre_lo[other_genre[c]] : genre_hi[other_genre[c]]]))
        size = min(pool.size, card.cluster_size)
        # Weighted sampling without replacement (Gumbel top-k); sorted, since the order argpartition
        # leaves is an implementation detail and the output must not depend on it.
        keys = MEMBER_EXPONENT * log_w[pool] + rng.gumbel(size=pool.size)
        chosen = pool[np.sort(np.argpartition(-keys, size - 1)[:size])]
        members.append(chosen)
        liking.append(artist_w[chosen] ** LIKING_EXPONENT * rng.lognormal(0.0, LIKING_SPREAD, size))
    member_flat = np.concatenate(members)
    sizes = np.array([m.size for m in members], dtype=np.int64)
    cluster_lo = n_a + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    cluster_hi = cluster_lo + sizes
    pick_artist = np.concatenate((artist_by_genre, member_flat))
    pick_cum = np.cumsum(np.concatenate((artist_w[artist_by_genre], np.concatenate(liking))))

    # Users: log-normal activity (a few heavy listeners, a long tail of light ones).
    width_u = max(6, len(str(n_u - 1)))
    users = pa.array([f"user_{k:0{width_u}d}" for k in range(n_u)])
    user_cum = np.cumsum(rng.lognormal(0.0, 1.2, n_u))
    user_loyalty = LOYALTY_LOW + LOYALTY_RANGE * rng.beta(5.0, 4.0, n_u)
    # Some tastes are mainstream, most are niche: clusters get Zipf-like audiences.
    cluster_w = 1.0 / (rng.permutation(n_c) + 1.0) ** CLUSTER_AUDIENCE_EXPONENT
    user_cluster = rng.choice(n_c, size=n_u, p=cluster_w / cluster_w.sum())
    user_genre = main_genre[user_cluster]
    # Favourites: from the cluster, by the cluster's own weights.
    user_favourites = _pick(
        rng,
        pick_cum,
        pick_artist,
        np.repeat(cluster_lo[user_cluster], FAVOURITES),
        np.repeat(cluster_hi[user_cluster], FAVOURITES),
    ).reshape(n_u, FAVOURITES)

    return _Catalogue(
        users=users,
        songs=songs,
        song_artist=song_artist,
        song_length=song_length,
        artist_first_song=first,
        artist_n_songs=n_songs,
        pick_cum=pick_cum,
        pick_artist=pick_artist,
        genre_lo=genre_lo,
        genre_hi=genre_hi,
        cluster_lo=cluster_lo,
        cluster_hi=cluster_hi,
        user_cum=user_cum,
        user_loyalty=user_loyalty,
        user_cluster=user_cluster,
        user_genre=user_genre,
        user_favourites=user_favourites,
    )


def _time_warp() -> tuple[np.ndarray, np.ndarray]:
    """Cumulative listening intensity per minute over the span: evenings busier than early mornings,
    weekends a little busier. Mapping uniform "virtual time" through its inverse gives the daily cycle."""
    # Two spare days past the span: the last arrivals may overshoot the expected end a little, and
    # np.interp would otherwise pile them up on one clamped timestamp.
    minutes = np.arange((SPAN_DAYS + 2) * 24 * 60 + 1, dtype=np.float64)
    hours = (minutes / 60.0) % 24.0
    day = (minutes // (24 * 60)).astype(np.int64)
    weekday = (day + 3) % 7  # 2026-01-01 is a Thursday (0 = Monday)
    intensity = (1.0 + 0.6 * np.cos(2 * np.pi * (hours - 20.0) / 24.0)) * np.where(weekday >= 5, 1.15, 1.0)
    cum = np.concatenate(([0.0], np.cumsum(intensity[:-1])))
    return cum, minutes * 60.0


def _pick(rng: np.random.Generator, cum: np.ndarray, artist: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Artists by weight within [lo, hi) ranges of a cumulative weight table."""
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    target = base + rng.random(lo.size) * (cum[hi - 1] - base)
    pos = np.clip(np.searchsorted(cum, target, side="right"), lo, hi - 1)
    return artist[pos]


def _chunk(
    seed: int, index: int, rows: int, cat: _Catalogue, t0: float, gap: float, warp: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, np.ndarray], float]:
    """Draw one chunk of events; returns the columns and the virtual time the next chunk starts at."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE7E7, index]))
    user = np.searchsorted(cat.user_cum, rng.random(rows) * cat.user_cum[-1], side="right")
    user = np.minimum(user, cat.user_cum.size - 1)

    # Which kind of play: a favourite, something from the user's taste cluster, something from
    # their genre or anything popular.
    mode = rng.random(rows)
    loyalty = cat.user_loyalty[user]
    fav = mode < loyalty
    rest = (mode - loyalty) / (1.0 - loyalty)
    cluster = ~fav & (rest < SHARE_CLUSTER)
    genre = ~fav & ~cluster & (rest < SHARE_CLUSTER + SHARE_GENRE)
    n_art = cat.artist_first_song.size
    c, g = cat.user_cluster[user], cat.user_genre[user]
    lo = np.where(cluster, cat.cluster_lo[c], np.where(genre, cat.genre_lo[g], 0))
    hi = np.where(cluster, cat.cluster_hi[c], np.where(genre, cat.genre_hi[g], n_art))
    artist = _pick(rng, cat.pick_cum, cat.pick_artist, lo, hi)
    # The first favourite gets the most plays: index skewed towards 0.
    fav_slot = (FAVOURITES * rng.random(rows) ** 2.0).astype(np.int64)
    artist = np.where(fav, cat.user_favourites[user, fav_slot], artist)

    # A song of that artist, with the artist's hits (lowest offsets) played far more.
    offset = (cat.artist_n_songs[artist] * rng.random(rows) ** 3.5).astype(np.int64)
    song = cat.artist_first_song[artist] + offset

    # Played seconds: full track most of the time, otherwise skipped part way.
    length = cat.song_length[song]
    skipped = rng.random(rows) < 0.25
    played = np.maximum(1, np.round(length * rng.uniform(0.05, 1.0, rows))).astype(np.int64)
    duration = np.where(skipped, played, length)

    # Poisson arrivals in virtual time, mapped through the daily-cycle warp (monotone, so the
    # floored seconds never decrease, also across chunk boundaries).
    vt = t0 + np.cumsum(rng.exponential(gap, rows))
    cum, seconds = warp
    t = np.floor(np.interp(vt, cum, seconds)).astype(np.int64)
    return {"user": user, "song": song, "duration": duration, "t": t}, float(vt[-1])


class _Renderer:
    """Turns index columns into CSV bytes with Arrow string kernels (no per-row Python)."""

    def __init__(self, newline: str) -> None:
        days = [str(START_EPOCH.astype("datetime64[D]") + d) + "T" for d in range(SPAN_DAYS + 3)]
        self.days = pa.array(days)
        self.hms = pa.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z{newline}" for s in range(86400)])

    def render(self, cat: _Catalogue, cols: dict[str, np.ndarray]) -> pa.Buffer:
        song = pa.array(cols["song"])
        t = cols["t"]
        ts = pc.binary_join_element_wise(self.days.take(pa.array(t // 86400)), self.hms.take(pa.array(t % 86400)), "")
        lines = pc.binary_join_element_wise(
            cat.users.take(pa.array(cols["user"])),
            cat.songs.take(song),
            cat.song_artist.take(song),
            pc.cast(pa.array(cols["duration"]), pa.string()),
            ts,
            ",",
        )
        # The joined array's data buffer is exactly the concatenated lines.
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
        return lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]


def taste_clusters(events: int, seed: int, *, tricky: bool = False) -> pa.Table:
    """Each listener's taste cluster and its main genre, as ``generate`` with the same arguments
    draws them (user_id, cluster, genre; every listener of the catalogue, played or not): the
    ground truth for checking that the structure is in the events."""
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if events == 0:
        return pa.table(
            {
                "user_id": pa.array([], pa.string()),
                "cluster": pa.array([], pa.int32()),
                "genre": pa.array([], pa.int32()),
            }
        )
    cat = _catalogue(events, seed, tricky)
    return pa.table(
        {
            "user_id": cat.users,
            "cluster": pa.array(cat.user_cluster.astype(np.int32)),
            "genre": pa.array(cat.user_genre.astype(np.int32)),
        }
    )


def generate(path: str | Path, events: int, seed: int, *, tricky: bool = False, crlf: bool = False) -> None:
    """Write ``events`` synthetic listening events to ``path`` as CSV (header included).

    ``tricky`` gives some artists (including the most popular) non-ASCII names and names with
    commas and quotes, RFC 4180 quoted; ``crlf`` ends lines with CRLF. Both are for tests; the
    default output is plain ASCII with no quoting.
    """
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    newline = "\r\n" if crlf else "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as out:
        out.write((HEADER + newline).encode())
        if events:
            cat = _catalogue(events, seed, tricky)
            renderer = _Renderer(newline)
            warp = _time_warp()
            # Mean virtual gap such that the expected last event lands at the end of the span.
            gap = warp[0][SPAN_DAYS * 24 * 60] / events
            vt = 0.0
            for index, start in enumerate(range(0, events, CHUNK_ROWS)):
                rows = min(CHUNK_ROWS, events - start)
                cols, vt = _chunk(seed, index, rows, cat, vt, gap, warp)
                out.write(renderer.render(cat, cols))
    # Atomic: a cache never sees a half-written file.
    tmp.replace(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``music-analytics generate``."""
    parser.add_argument("--events", type=int, required=True, help="number of events (rows) to write")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes")
    parser.add_argument("--out", required=True, help="output CSV path")
    parser.add_argument("--tricky", action="store_true", help="add non-ASCII names, commas and quotes")
    parser.add_argument("--crlf", action="store_true", help="end lines with CRLF")


def main(args: argparse.Namespace) -> int:
    """Run ``music-analytics generate`` with parsed ``args``; returns the exit code."""
    if args.events < 0:
        print(f"error: --events must be >= 0, got {args.events}", file=sys.stderr)
        return 2
    try:
        generate(args.out, args.events, args.seed, tricky=args.tricky, crlf=args.crlf)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
