"""``music-analytics evaluate``: its metrics against SQL over the same files, the model against the
most-popular baseline on data with taste, determinism, play-count inputs and every error path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pytest

from music_analytics.client import evaluate as evaluate_module
from tests.conftest import cli
from tests.test_cli_errors import assert_clean_error

EVENTS_HEADER = ["user_id", "song_id", "artist", "duration", "timestamp"]

# The metrics of one list per user, from the lists (--out) and the files, in SQL. Relevant: the
# test file's distinct (user, artist) pairs of users in the training file, less the pairs the user
# has in training. Ranks from 1. Strings compare byte-wise (no collation), as the names sort in Python.
_ORACLE = """
CREATE TEMP TABLE train AS SELECT user_id, artist, count(*) AS plays FROM read_csv($train, header = true,
    auto_detect = false, delim = ',', quote = '"', escape = '"', columns = {COLUMNS}) GROUP BY ALL;
CREATE TEMP TABLE test AS SELECT DISTINCT user_id, artist FROM read_csv($test, header = true,
    auto_detect = false, delim = ',', quote = '"', escape = '"', columns = {COLUMNS});
CREATE TEMP TABLE relevant AS SELECT t.user_id, t.artist FROM test t
    WHERE t.user_id IN (SELECT user_id FROM train)
    AND NOT EXISTS (SELECT 1 FROM train p WHERE p.user_id = t.user_id AND p.artist = t.artist);
CREATE TEMP TABLE held AS SELECT user_id, count(*) AS n FROM relevant GROUP BY user_id;
CREATE TEMP TABLE ideal AS SELECT h.user_id, sum(1 / log2(i + 1)) AS idcg
    FROM held h, range(1, $k + 1) r(i) WHERE i <= h.n GROUP BY h.user_id;
CREATE TEMP TABLE model AS SELECT user_id, artist, rank FROM (
    SELECT user_id, unnest(artists) AS artist, generate_subscripts(artists, 1) AS rank
    FROM read_json($lists, columns = {'user_id': 'VARCHAR', 'artists': 'VARCHAR[]'}));
CREATE TEMP TABLE listeners AS SELECT artist, count(*) AS n FROM train GROUP BY artist;
CREATE TEMP TABLE popular AS SELECT user_id, artist, rank FROM (
    SELECT h.user_id, l.artist, row_number() OVER (PARTITION BY h.user_id ORDER BY l.n DESC, l.artist) AS rank
    FROM held h, listeners l
    WHERE NOT EXISTS (SELECT 1 FROM train p WHERE p.user_id = h.user_id AND p.artist = l.artist))
    WHERE rank <= $k;
"""

_METRICS = """
SELECT avg(coalesce(dcg, 0) / idcg), avg((coalesce(hits, 0) > 0)::DOUBLE), avg(coalesce(hits, 0) / $k),
       avg(coalesce(hits, 0) / h.n),
       (SELECT count(DISTINCT artist) FROM {LISTS}) / (SELECT count(DISTINCT artist) FROM train)
FROM held h JOIN ideal USING (user_id) LEFT JOIN (
    SELECT l.user_id, count(*) AS hits, sum(1 / log2(l.rank + 1)) AS dcg
    FROM {LISTS} l JOIN relevant r ON l.user_id = r.user_id AND l.artist = r.artist GROUP BY l.user_id
) USING (user_id)
"""

_COUNTS = {
    "users_evaluated": "SELECT count(*) FROM held",
    "pairs_evaluated": "SELECT count(*) FROM relevant",
    "pairs_evaluated_artist_not_in_train": (
        "SELECT count(*) FROM relevant WHERE artist NOT IN (SELECT artist FROM train)"
    ),
    "test_pairs_played_in_train": "SELECT count(*) FROM test t JOIN train p USING (user_id, artist)",
    "test_users_not_in_train": (
        "SELECT count(DISTINCT user_id) FROM test WHERE user_id NOT IN (SELECT user_id FROM train)"
    ),
    "train_pairs": "SELECT count(*) FROM train",
    "train_users": "SELECT count(DISTINCT user_id) FROM train",
    "train_artists": "SELECT count(DISTINCT artist) FROM train",
}


def oracle(train: Path, test: Path, lists: Path, k: int) -> tuple[dict, dict, dict]:
    """(model metrics, popularity metrics, counts) by SQL over the CSV files and the lists."""
    con = duckdb.connect()
    con.execute("SET default_collation = ''")
    columns = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in EVENTS_HEADER) + "}"
    params = {"train": str(train), "test": str(test), "lists": str(lists), "k": k}
    for statement in filter(str.strip, _ORACLE.replace("{COLUMNS}", columns).split(";")):
        con.execute(statement, {name: value for name, value in params.items() if f"${name}" in statement})
    names = ("ndcg", "hit_rate", "precision", "recall", "coverage")
    found = []
    for table in ("model", "popular"):
        row = con.execute(_METRICS.replace("{LISTS}", table), {"k": k}).fetchone()
        found.append(dict(zip(names, row, strict=True)))
    counts = {name: con.execute(query).fetchone()[0] for name, query in _COUNTS.items()}
    # Every user with a held-out artist has a list, and nobody else.
    assert con.execute("SELECT count(*) FROM (SELECT DISTINCT user_id FROM model) FULL JOIN held USING (user_id) "
                       "WHERE n IS NULL OR user_id NOT IN (SELECT user_id FROM model)").fetchone()[0] == 0  # fmt: skip
    return found[0], found[1], counts


def generate(path: Path, events: int, seed: int, *extra: str) -> Path:
    proc = cli("generate", "--events", str(events), "--seed", str(seed), "--out", str(path), *extra)
    assert proc.returncode == 0, proc.stderr
    return path


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def write_rows(path: Path, rows: list[list[str]], header: list[str] = EVENTS_HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def evaluate(*args: str) -> tuple[dict, str]:
    proc = cli("evaluate", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def taste(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("taste") / "taste.csv", 60_000, 7, "--tricky")


@pytest.fixture(scope="module")
def in_time_order(taste: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The events cut in time: the first 80% to train on, the rest to test with. A few users and
    artists of the later part are new, and some later pairs repeat earlier ones."""
    rows = read_rows(taste)
    cut = len(rows) * 4 // 5
    later = [*rows[cut:], ["newcomer", "s1", 'Rare, "New" Band', "200", "2026-02-01T00:00:00Z"]]
    later.append([rows[0][0], "s2", 'Rare, "New" Band', "100", "2026-02-01T00:00:00Z"])
    folder = tmp_path_factory.mktemp("in-time-order")
    return write_rows(folder / "train.csv", rows[:cut]), write_rows(folder / "test.csv", later)


# ---------------------------------------------------------------------------------------------
# The metrics, against SQL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm,k", [("bm25", 10), ("als", 5)])
def test_metrics_and_counts_match_sql_over_the_same_files(in_time_order, tmp_path, algorithm, k):
    train, test = in_time_order
    lists = tmp_path / "lists.jsonl"
    summary, _ = evaluate("--train", str(train), "--test", str(test), "--out", str(lists),
                          "--algorithm", algorithm, "--k", str(k))  # fmt: skip
    model, popular, counts = oracle(train, test, lists, k)
    assert summary["k"] == k and summary["algorithm"] == algorithm
    assert summary["model"] == pytest.approx(model, rel=1e-9)
    assert summary["popularity"] == pytest.approx(popular, rel=1e-9)
    assert {name: summary["counts"][name] for name in counts} == counts
    assert counts["test_users_not_in_train"] >= 1 and counts["pairs_evaluated_artist_not_in_train"] >= 1
    assert counts["test_pairs_played_in_train"] > 0
    lines = [json.loads(line) for line in lists.read_text(encoding="utf-8").splitlines()]
    users = [line["user_id"] for line in lines]
    assert users == sorted(users) and all(len(line["artists"]) == k for line in lines)


def test_the_table_shows_both_columns_and_the_counts(in_time_order):
    train, test = in_time_order
    proc = cli("evaluate", "--train", str(train), "--test", str(test))
    assert proc.returncode == 0, proc.stderr
    summary, _ = evaluate("--train", str(train), "--test", str(test))
    out = proc.stdout
    assert f"Evaluated {summary['counts']['users_evaluated']:,} users" in out
    assert "held-out users absent from training" in out and "an artist nobody played in training" in out
    ndcg = next(line.split() for line in out.splitlines() if line.startswith("NDCG@10"))
    assert ndcg[1:3] == [f"{summary['model']['ndcg']:.4f}", f"{summary['popularity']['ndcg']:.4f}"]


# ---------------------------------------------------------------------------------------------
# Quality: a wide margin over most-popular on data with taste; a broken model has none
# ---------------------------------------------------------------------------------------------


def test_the_model_beats_most_popular_on_data_with_taste_and_random_does_not(taste):
    summary, _ = evaluate("--train", str(taste), "--seed", "3")
    assert summary["model"]["ndcg"] >= 1.6 * summary["popularity"]["ndcg"], summary
    assert summary["model"]["recall"] >= 1.4 * summary["popularity"]["recall"], summary
    control, _ = evaluate("--train", str(taste), "--seed", "3", "--algorithm", "random")
    assert control["popularity"] == summary["popularity"]
    assert control["model"]["ndcg"] <= 0.25 * control["popularity"]["ndcg"], control


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_output_whatever_the_threads_or_row_order(taste, tmp_path):
    shuffled = read_rows(taste)[::-1]
    reordered = write_rows(tmp_path / "reordered.csv", shuffled[1::2] + shuffled[::2])
    outputs = []
    for data, threads in ((taste, "1"), (taste, "2"), (reordered, "2")):
        out = tmp_path / f"lists-{len(outputs)}.jsonl"
        summary, _ = evaluate("--train", str(data), "--seed", "5", "--threads", threads, "--out", str(out))
        outputs.append((out.read_bytes(), summary["model"], summary["popularity"], summary["counts"]))
    assert outputs[0] == outputs[1] == outputs[2]
    other, _ = evaluate("--train", str(taste), "--seed", "6")
    assert other["model"] != outputs[0][1]


def test_split_holds_out_the_fraction_asked(taste):
    pairs = (
        duckdb.connect()
        .execute("SELECT count(*) FROM (SELECT DISTINCT user_id, artist FROM read_csv($path, all_varchar = true))",
                 {"path": str(taste)})
        .fetchone()[0]
    )  # fmt: skip
    for fraction in ("0.1", "0.35"):
        summary, _ = evaluate("--train", str(taste), "--split", fraction)
        assert summary["counts"]["test_pairs"] == round(float(fraction) * pairs)
        assert summary["counts"]["train_pairs"] == pairs - summary["counts"]["test_pairs"]


# ---------------------------------------------------------------------------------------------
# Inputs with play counts
# ---------------------------------------------------------------------------------------------


def test_play_counts_events_with_plays_and_plain_events_evaluate_alike(tmp_path):
    pairs = {}
    for row in read_rows(generate(tmp_path / "g.csv", 8000, 4)):
        pairs[row[0], row[2]] = pairs.get((row[0], row[2]), 0) + 1
    expanded = [[u, "song", a, "180", "2026-01-01T00:00:00Z"] for (u, a), n in pairs.items() for _ in range(n)]
    plain = write_rows(tmp_path / "plain.csv", expanded)
    with_plays = write_rows(
        tmp_path / "plays.csv",
        [[u, "song", a, str(180 * n), "2026-01-01T00:00:00Z", str(n)] for (u, a), n in pairs.items()],
        [*EVENTS_HEADER, "plays"],
    )
    counts = tmp_path / "user_artists.dat"
    counts.write_text("userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{n}\n" for (u, a), n in pairs.items()))
    results = []
    for data in (plain, with_plays, counts):
        out = tmp_path / f"{data.stem}.jsonl"
        summary, _ = evaluate("--train", str(data), "--out", str(out))
        results.append((summary["model"], summary["popularity"], summary["counts"], out.read_bytes()))
    assert results[0] == results[1] == results[2]
    assert results[0][2]["train_pairs"] + results[0][2]["test_pairs"] == len(pairs)


@pytest.mark.parametrize("merge_rows", [10**9, 300])
def test_pairs_are_summed_and_in_name_order_however_often_merged(taste, tmp_path, monkeypatch, merge_rows):
    # A folder of six files is read as six chunks at least; with 300 the sums are merged between
    # them (with 10^9 only at the end).
    rows = read_rows(taste)
    for part in range(6):
        write_rows(tmp_path / f"part-{part}.csv", rows[part::6])
    monkeypatch.setattr(evaluate_module, "_MERGE_ROWS", merge_rows)
    got = evaluate_module.read_pairs(str(tmp_path)).table
    con = duckdb.connect()
    con.execute("SET default_collation = ''")
    columns = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in EVENTS_HEADER) + "}"
    want = con.execute(
        f"SELECT user_id, artist, count(*) FROM read_csv($path, header = true, auto_detect = false, delim = ',', "
        f"quote = '\"', escape = '\"', columns = {columns}) GROUP BY ALL ORDER BY user_id, artist",
        {"path": str(tmp_path / "part-*.csv")},
    ).fetchall()
    assert list(zip(*(got[c].to_pylist() for c in ("user_id", "artist", "plays")), strict=True)) == want


def test_bad_rows_are_skipped_with_a_warning_or_stop_a_strict_run(tmp_path):
    rows = read_rows(generate(tmp_path / "g.csv", 3000, 2))
    rows.insert(10, ["u", "s", "a", "not-a-number", "2026-01-01T00:00:00Z"])
    data = write_rows(tmp_path / "dirty.csv", rows)
    _, warnings = evaluate("--train", str(data))
    assert f"warning: --train {data}: 1 bad row(s) skipped, the first: {data}:12 field 'duration'" in warnings
    assert_clean_error(cli("evaluate", "--train", str(data), "--strict"), 3, f"{data}:12 field 'duration'")


# ---------------------------------------------------------------------------------------------
# Errors: one clear line, exit code 2 (3 for a bad row under --strict)
# ---------------------------------------------------------------------------------------------


def test_missing_files_exit_2(tmp_path, in_time_order):
    assert_clean_error(cli("evaluate", "--train", str(tmp_path / "nope.csv")), 2, "nope.csv: no such file")
    train, _ = in_time_order
    proc = cli("evaluate", "--train", str(train), "--test", str(tmp_path / "gone.csv"))
    assert_clean_error(proc, 2, "gone.csv: no such file")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--split", "0"], "--split: must be between 0 and 1 (both excluded), got 0"),
        (["--split", "1"], "must be between 0 and 1"),
        (["--split", "-0.2"], "must be between 0 and 1"),
        (["--split", "half"], "--split: expected a number between 0 and 1, got 'half'"),
        (["--k", "0"], "--k: must be at least 1, got 0"),
        (["--k", "-3"], "--k: must be at least 1, got -3"),
        (["--seed", "-1"], "--seed: must be 0 or more"),
        (["--threads", "x"], "--threads: expected a whole number, got 'x'"),
        (["--algorithm", "svd"], "--algorithm: invalid choice: 'svd'"),
        (["--format", "mp3"], "unknown format 'mp3'"),
    ],
)
def test_bad_options_exit_2(in_time_order, args, fragment):
    train, _ = in_time_order
    assert_clean_error(cli("evaluate", "--train", str(train), *args), 2, fragment)


def test_split_and_test_together_exit_2(in_time_order):
    train, test = in_time_order
    proc = cli("evaluate", "--train", str(train), "--test", str(test), "--split", "0.3")
    assert_clean_error(proc, 2, "--split holds out part of --train; with --test the held-out pairs are given")


def test_nothing_to_evaluate_exits_2(tmp_path):
    rows = read_rows(generate(tmp_path / "g.csv", 2000, 1))
    train = write_rows(tmp_path / "train.csv", rows)
    # Every held-out pair already played in training: nobody has anything to find.
    replay = write_rows(tmp_path / "replay.csv", rows[:50])
    assert_clean_error(
        cli("evaluate", "--train", str(train), "--test", str(replay)),
        2,
        "nothing to evaluate: no user has a held-out artist they did not play in the training data",
    )
    # Nobody of the test file is in the training data.
    strangers = write_rows(tmp_path / "strangers.csv", [["x" + r[0], *r[1:]] for r in rows[:50]])
    users = len({r[0] for r in rows[:50]})
    assert_clean_error(
        cli("evaluate", "--train", str(train), "--test", str(strangers)),
        2,
        f"nothing to evaluate: none of the {users} users of the held-out pairs is in the training data",
    )
    # No rows at all.
    empty = write_rows(tmp_path / "empty.csv", [])
    assert_clean_error(
        cli("evaluate", "--train", str(empty)), 2, "nothing to evaluate: the training data holds no (user, artist) pair"
    )
    assert_clean_error(
        cli("evaluate", "--train", str(train), "--test", str(empty)),
        2,
        "nothing to evaluate: no user has a held-out artist",
    )
    # One pair: a fifth of it rounds to nothing held out.
    single = write_rows(tmp_path / "single.csv", rows[:1])
    assert_clean_error(cli("evaluate", "--train", str(single)), 2, "nothing to evaluate")


def test_unwritable_lists_exit_2(in_time_order, tmp_path):
    train, test = in_time_order
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = cli("evaluate", "--train", str(train), "--test", str(test), "--out", str(blocker / "lists.jsonl"))
    assert_clean_error(proc, 2, f"cannot write {blocker / 'lists.jsonl'}")
