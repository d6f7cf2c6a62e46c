"""The generator's listeners have taste: listeners of one taste cluster share far more artists with
each other than with anyone else, while global popularity stays heavy-tailed and reaches across
clusters (so most-popular remains a real baseline for a recommender to beat).

The events are read back from the CSV by DuckDB; the only thing taken from the generator is its
ground truth, which cluster and genre each listener was drawn in (taste_clusters)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from music_analytics.client.generate import generate, taste_clusters

# About 10k listeners, 1.9k artists and 96 clusters: every cluster has an audience of its own.
EVENTS, SEED = 200_000, 7
# Listeners with fewer distinct artists say little about their taste.
MIN_ARTISTS = 5
SAMPLED_PAIRS = 200_000


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    """A connection holding `plays` (user_id, artist, plays) read from the generated CSV and
    `clusters` (user_id, cluster, genre), the generator's ground truth."""
    path = tmp_path_factory.mktemp("taste") / "events.csv"
    generate(path, EVENTS, SEED)
    con = duckdb.connect()
    con.execute(
        f"""CREATE TABLE plays AS
            SELECT user_id, artist, count(*) AS plays
            FROM read_csv('{path}', header = true, auto_detect = false, delim = ',', quote = '"', escape = '"',
                          columns = {{'user_id': 'VARCHAR', 'song_id': 'VARCHAR', 'artist': 'VARCHAR',
                                      'duration': 'VARCHAR', 'timestamp': 'VARCHAR'}})
            GROUP BY user_id, artist"""
    )
    con.register("truth", taste_clusters(EVENTS, SEED))
    con.execute("CREATE TABLE clusters AS SELECT * FROM truth")
    return con


def mean_jaccard_by_relation(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Mean Jaccard similarity of two listeners' artist sets over random pairs of listeners,
    by how the pair is related: same cluster, same genre only, or neither."""
    users = con.execute(
        f"""SELECT user_id FROM plays GROUP BY user_id HAVING count(*) >= {MIN_ARTISTS} ORDER BY user_id"""
    ).fetchnumpy()["user_id"]
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, users.size, SAMPLED_PAIRS), rng.integers(0, users.size, SAMPLED_PAIRS)
    distinct = a != b
    con.register("pairs", pa.table({"a": users[a[distinct]], "b": users[b[distinct]]}))
    rows = con.execute(
        """WITH sizes AS (SELECT user_id, count(*) AS n FROM plays GROUP BY user_id),
           shared AS (
               SELECT p.a, p.b, count(*) AS k
               FROM pairs p JOIN plays x ON x.user_id = p.a JOIN plays y ON y.user_id = p.b AND y.artist = x.artist
               GROUP BY p.a, p.b)
           SELECT CASE WHEN ca.cluster = cb.cluster THEN 'cluster'
                       WHEN ca.genre = cb.genre THEN 'genre' ELSE 'neither' END AS relation,
                  count(*) AS pairs,
                  avg(coalesce(s.k, 0) / (na.n + nb.n - coalesce(s.k, 0))) AS jaccard
           FROM pairs p
           JOIN clusters ca ON ca.user_id = p.a JOIN clusters cb ON cb.user_id = p.b
           JOIN sizes na ON na.user_id = p.a JOIN sizes nb ON nb.user_id = p.b
           LEFT JOIN shared s ON s.a = p.a AND s.b = p.b
           GROUP BY relation"""
    ).fetchall()
    # Enough pairs of each kind for the means to be stable (the same cluster is the rarest).
    assert all(n >= 1_000 for _, n, _ in rows), rows
    return {relation: jaccard for relation, _, jaccard in rows}


def test_listeners_of_one_cluster_share_far_more_artists(plays: duckdb.DuckDBPyConnection) -> None:
    jaccard = mean_jaccard_by_relation(plays)
    assert set(jaccard) == {"cluster", "genre", "neither"}
    # A cluster is a taste, not just a genre: listeners sharing only the genre overlap much less.
    assert jaccard["cluster"] > 6 * jaccard["neither"], jaccard
    assert jaccard["cluster"] > 2 * jaccard["genre"], jaccard
    assert jaccard["genre"] > jaccard["neither"], jaccard


def test_every_listener_in_the_events_has_a_cluster(plays: duckdb.DuckDBPyConnection) -> None:
    missing, clusters, listeners = plays.execute(
        """SELECT count(*) FILTER (WHERE c.user_id IS NULL), count(DISTINCT c.cluster), count(DISTINCT p.user_id)
           FROM plays p LEFT JOIN clusters c USING (user_id)"""
    ).fetchone()
    assert missing == 0
    # Many clusters, each with an audience of its own (tens of listeners on average).
    assert 50 <= clusters <= listeners / 20, (clusters, listeners)


def test_global_popularity_stays_heavy_tailed(plays: duckdb.DuckDBPyConnection) -> None:
    total, artists = plays.execute("SELECT sum(plays), count(DISTINCT artist) FROM plays").fetchone()
    by_plays = plays.execute("SELECT sum(plays) AS s FROM plays GROUP BY artist ORDER BY s DESC").fetchnumpy()["s"]
    top_1pct = by_plays[: artists // 100].sum() / total
    top_10pct = by_plays[: artists // 10].sum() / total
    assert top_1pct > 0.2, top_1pct
    assert top_10pct > 0.5, top_10pct


def test_the_most_listened_artists_reach_across_clusters(plays: duckdb.DuckDBPyConnection) -> None:
    """Stars are heard in most clusters, and the ten of them with most listeners hold a share of
    all (listener, artist) pairs far above an even one: what most-popular recommends is often right."""
    reach = plays.execute(
        """WITH listeners AS (SELECT artist, count(*) AS n FROM plays GROUP BY artist),
           top AS (SELECT artist FROM listeners ORDER BY n DESC, artist LIMIT 10)
           SELECT top.artist, count(DISTINCT c.cluster) / (SELECT count(DISTINCT cluster) FROM clusters
                                                          WHERE user_id IN (SELECT user_id FROM plays))
           FROM top JOIN plays USING (artist) JOIN clusters c USING (user_id)
           GROUP BY top.artist"""
    ).fetchall()
    assert len(reach) == 10
    assert np.median([share for _, share in reach]) > 0.7, reach
    top_share, even_share = plays.execute(
        """WITH listeners AS (SELECT artist, count(*) AS n FROM plays GROUP BY artist)
           SELECT (SELECT sum(n) FROM (SELECT n FROM listeners ORDER BY n DESC LIMIT 10)) / sum(n), 10 / count(*)
           FROM listeners"""
    ).fetchone()
    assert top_share > 10 * even_share, (top_share, even_share)


def test_taste_clusters_refuses_a_negative_count_and_is_empty_for_none() -> None:
    with pytest.raises(ValueError, match="events must be >= 0, got -1"):
        taste_clusters(-1, SEED)
    empty = taste_clusters(0, SEED)
    assert empty.num_rows == 0
    assert empty.column_names == ["user_id", "cluster", "genre"]


def test_taste_clusters_names_the_generated_listeners(tmp_path: Path) -> None:
    """Small inputs too (one artist, one cluster): the ground truth names exactly the user ids
    the events can hold, and a tricky catalogue draws its own clusters."""
    for events in (1, 2, 999):
        path = tmp_path / f"n{events}.csv"
        generate(path, events, 1)
        seen = {line.split(",")[0] for line in path.read_text().splitlines()[1:]}
        truth = taste_clusters(events, 1)
        assert seen <= set(truth.column("user_id").to_pylist())
        assert truth.num_rows == len(set(truth.column("user_id").to_pylist()))
    plain = taste_clusters(30_000, 3).column("cluster")
    tricky = taste_clusters(30_000, 3, tricky=True).column("cluster")
    assert plain.equals(taste_clusters(30_000, 3).column("cluster"))
    assert not plain.equals(tricky)
