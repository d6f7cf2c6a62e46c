"""Offline evaluation of the artist recommender: ``music-analytics evaluate``.

The input is read as the pipeline reads it (any supported format) and reduced to play counts per
(user, artist): a row's ``plays`` where the input has that column, else one play per row. The
model (services/recommendation/model.py, the code the Recommendation service serves with) is
trained on one part and asked for each user's top K unplayed artists; those are compared with the
artists the user played in the other part. The most-popular ranking (artists by distinct
listeners, the user's played ones left out) is scored the same way beside it.

Held-out pairs: without ``--test``, ``--split`` of the (user, artist) pairs, drawn with
``numpy.random.default_rng(--seed)`` from the pairs in (user, artist) name order, so a given input
and seed always hold out the same pairs. With ``--test``, that file's pairs, less those the user
already has in the training data (nobody is recommended what they played).

Who counts: a user with at least one held-out artist who is in the training data (a user the
model has never seen cannot be scored; they are counted and left out). A held-out artist nobody
played in the training data stays among the user's held-out artists though no model can
recommend it: the counts say how many there were.

Metrics, averaged over the users evaluated, with binary relevance:

* NDCG@K: sum over hits of 1/log2(rank + 1) (rank from 1), divided by the same sum for a perfect
  list (min(K, held-out artists) hits at the top);
* HR@K: the share of users with at least one hit;
* precision@K: hits / K; recall@K: hits / held-out artists;
* coverage: distinct artists recommended to anyone / artists in the training data.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.recommendation.model import (
    ALGORITHMS,
    CONTROLS,
    DEFAULT_ALGORITHM,
    ModelConfig,
    PlayMatrix,
    Recommendations,
    train,
)

EXIT_OK, EXIT_INPUT, EXIT_BAD_ROW = 0, 2, 3
DEFAULT_K = 10
DEFAULT_SPLIT = 0.2
METRICS = ("ndcg", "hit_rate", "precision", "recall", "coverage")
# Per-chunk sums are merged once they hold this many rows, and after that each time they have
# doubled since the last merge: memory stays near the number of distinct pairs, and merging stays
# linear in the input.
_MERGE_ROWS = 4_000_000


class EvaluationError(Exception):
    """Nothing sensible to evaluate (no held-out artists, no users in common...). Exit code 2."""


@dataclass
class Pairs:
    """Play counts per (user, artist), one row per pair: user_id, artist (strings), plays (int64)."""

    table: pa.Table
    rows_rejected: int = 0
    first_rejection: str | None = None


def read_pairs(spec: str, *, format: str | None = None, user: str | None = None, strict: bool = False) -> Pairs:
    """Every (user, artist) pair of an input with its total plays, in (user, artist) name order.
    Raises the sources' InputError (unusable input) or BadRowError (a bad row under ``strict``)."""
    from music_analytics.client.sources import open_source

    source = open_source(spec, format=format, user=user)
    users, artists = _Names(), _Names()
    keys: list[np.ndarray] = []  # user code << 32 | artist code, codes in order of first sight
    plays: list[np.ndarray] = []
    held, merge_at = 0, _MERGE_ROWS
    result = Pairs(_empty_pairs())
    for chunk in source.chunks(strict=strict):
        if chunk.rejected:
            if result.first_rejection is None:
                result.first_rejection = chunk.rejected[0].describe(str(spec))
            result.rows_rejected += len(chunk.rejected)
        table = chunk.table
        if table.num_rows == 0:
            continue
        keys.append(users.codes(table["user_id"]) << 32 | artists.codes(table["artist"]))
        plays.append(
            table["plays"].to_numpy().astype(np.int64)
            if "plays" in table.column_names
            else np.ones(table.num_rows, np.int64)
        )
        held += table.num_rows
        if held > merge_at:
            key, total = _sum_by_key(keys, plays)
            keys, plays = [key], [total]
            held = len(key)
            merge_at = max(_MERGE_ROWS, 2 * held)
    if not keys:
        return result
    key, total = _sum_by_key(keys, plays)
    del keys, plays
    # Codes in name order: the rank of each name among the sorted names.
    user_rank, artist_rank = users.ranks(), artists.ranks()
    key = user_rank[key >> 32] << 32 | artist_rank[key & 0xFFFFFFFF]
    order = np.argsort(key, kind="stable")
    key, total = key[order], total[order]
    result.table = pa.table(
        {
            "user_id": users.sorted().take(pa.array(key >> 32)),
            "artist": artists.sorted().take(pa.array(key & 0xFFFFFFFF)),
            "plays": pa.array(total),
        }
    )
    return result


class _Names:
    """Distinct strings, coded in order of first sight."""

    def __init__(self) -> None:
        self.values = pa.array([], pa.string())

    def codes(self, column: pa.ChunkedArray) -> np.ndarray:
        array = column.combine_chunks()
        if pa.types.is_dictionary(array.type):
            # Look up each distinct value once, then spread to the rows.
            return self._codes_of(array.dictionary.cast(pa.string()))[array.indices.to_numpy(zero_copy_only=False)]
        return self._codes_of(array)

    def _codes_of(self, values: pa.Array) -> np.ndarray:
        found = pc.index_in(values, value_set=self.values)
        if found.null_count:
            unseen = pc.unique(values.filter(pc.is_null(found)))
            self.values = pa.concat_arrays([self.values, unseen])
            found = pc.index_in(values, value_set=self.values)
        return found.to_numpy(zero_copy_only=False).astype(np.int64)

    def ranks(self) -> np.ndarray:
        ranks = np.empty(len(self.values), np.int64)
        ranks[pc.sort_indices(self.values).to_numpy()] = np.arange(len(self.values))
        return ranks

    def sorted(self) -> pa.Array:
        # Arrow orders strings by their bytes: for UTF-8, code point order, as Python's sorted().
        return self.values.take(pc.sort_indices(self.values))


def _sum_by_key(keys: list[np.ndarray], plays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    key, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    # float64 sums of whole numbers are exact up to 2^53: far beyond any play count.
    return key, np.bincount(inverse, weights=np.concatenate(plays), minlength=len(key)).astype(np.int64)


def _empty_pairs() -> pa.Table:
    return pa.table(
        {"user_id": pa.array([], pa.string()), "artist": pa.array([], pa.string()), "plays": pa.array([], pa.int64())}
    )


def split_pairs(pairs: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test): round(fraction x pairs) pairs held out at random, the rest kept. The pairs are
    taken in (user, artist) name order, so the same pairs in any order split the same way."""
    users, artists = _sorted_unique(pairs["user_id"]), _sorted_unique(pairs["artist"])
    order = np.lexsort((_codes(pairs["artist"], artists), _codes(pairs["user_id"], users)))
    # read_pairs gives them in that order already: no copy then.
    ordered = pairs if np.array_equal(order, np.arange(len(order))) else pairs.take(pa.array(order))
    held_out = np.zeros(ordered.num_rows, bool)
    held_out[np.random.default_rng(seed).permutation(ordered.num_rows)[: round(fraction * ordered.num_rows)]] = True
    mask = pa.array(held_out)
    return ordered.filter(pc.invert(mask)), ordered.filter(mask)


@dataclass
class Scores:
    ndcg: float
    hit_rate: float
    precision: float
    recall: float
    coverage: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in METRICS}


@dataclass
class Evaluation:
    algorithm: str
    k: int
    counts: dict[str, int]
    model: Scores
    popularity: Scores
    seconds: dict[str, float]
    users: pa.Array = field(repr=False)  # names of the users evaluated, in name order
    artists: pa.Array = field(repr=False)  # artist names by code
    recommendations: Recommendations = field(repr=False)  # the model's, one list per user evaluated

    def summary(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "k": self.k,
            "counts": self.counts,
            "model": self.model.as_dict(),
            "popularity": self.popularity.as_dict(),
            "seconds": self.seconds,
        }


def evaluate(train_pairs: pa.Table, test_pairs: pa.Table, k: int, config: ModelConfig) -> Evaluation:
    """Train ``config`` on ``train_pairs``, score its top ``k`` and the most-popular baseline's
    against ``test_pairs``. Raises EvaluationError when no user can be evaluated."""
    if train_pairs.num_rows == 0:
        raise EvaluationError("the training data holds no (user, artist) pair")
    users = _sorted_unique(train_pairs["user_id"])
    artists = _sorted_unique(train_pairs["artist"])
    n_artists = len(artists)
    matrix = PlayMatrix.from_codes(
        _codes(train_pairs["user_id"], users),
        _codes(train_pairs["artist"], artists),
        train_pairs["plays"].to_numpy(),
        len(users),
        n_artists,
    )

    test_user = pc.index_in(test_pairs["user_id"], value_set=users)
    test_artist = pc.index_in(test_pairs["artist"], value_set=artists)
    known_user = pc.is_valid(test_user).to_numpy(zero_copy_only=False)
    counts = {
        "train_users": len(users),
        "train_artists": n_artists,
        "train_pairs": train_pairs.num_rows,
        "test_pairs": test_pairs.num_rows,
        "test_users": len(pc.unique(test_pairs["user_id"])),
        "test_users_not_in_train": len(pc.unique(test_pairs["user_id"].filter(pa.array(~known_user)))),
    }
    rows = test_user.filter(pa.array(known_user)).to_numpy(zero_copy_only=False).astype(np.int64)
    artist_codes = (
        test_artist.filter(pa.array(known_user)).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    if len(rows) == 0 and test_pairs.num_rows:
        raise EvaluationError(f"none of the {counts['test_users']} users of the held-out pairs is in the training data")
    # A held-out artist the user already played in training is not something to find.
    train_keys = np.repeat(np.arange(matrix.n_users, dtype=np.int64), np.diff(matrix.csr.indptr)) * n_artists
    train_keys += matrix.csr.indices
    known_artist = artist_codes >= 0
    already = np.zeros(len(rows), bool)
    already[known_artist] = np.isin(rows[known_artist] * n_artists + artist_codes[known_artist], train_keys)
    counts["test_pairs_played_in_train"] = int(already.sum())
    rows, artist_codes = rows[~already], artist_codes[~already]
    eval_rows, held_per_user = np.unique(rows, return_counts=True)
    if len(eval_rows) == 0:
        raise EvaluationError("no user has a held-out artist they did not play in the training data")
    counts["users_evaluated"] = len(eval_rows)
    counts["pairs_evaluated"] = len(rows)
    counts["pairs_evaluated_artist_not_in_train"] = int((artist_codes < 0).sum())
    relevant = np.sort(rows[artist_codes >= 0] * n_artists + artist_codes[artist_codes >= 0])

    started = time.perf_counter()
    model = train(matrix, config)
    fitted = time.perf_counter()
    recommendations = model.recommend(eval_rows, k)
    scored = time.perf_counter()
    baseline = train(matrix, ModelConfig(algorithm="popularity")).recommend(eval_rows, k)
    counts["users_given_popular_artists"] = int(recommendations.by_popularity.sum())
    return Evaluation(
        algorithm=config.algorithm,
        k=k,
        counts=counts,
        model=score(recommendations, eval_rows, held_per_user, relevant, n_artists, k),
        popularity=score(baseline, eval_rows, held_per_user, relevant, n_artists, k),
        seconds={"fit": fitted - started, "recommend": scored - fitted},
        users=users.take(pa.array(eval_rows)),
        artists=artists,
        recommendations=recommendations,
    )


def score(
    recommendations: Recommendations,
    rows: np.ndarray,
    held_per_user: np.ndarray,
    relevant: np.ndarray,
    n_artists: int,
    k: int,
) -> Scores:
    """The metrics of one list per user in ``rows``; ``held_per_user``: how many held-out artists
    each has (those unknown to training included); ``relevant``: sorted keys row x n_artists +
    artist of the held-out artists known to training."""
    counts = recommendations.counts()
    owner = np.repeat(np.arange(len(rows)), counts)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0-based
    top = rank < k
    owner, rank, artists = owner[top], rank[top], recommendations.artists[top].astype(np.int64)
    hit = np.isin(rows[owner] * n_artists + artists, relevant)
    hits = np.bincount(owner[hit], minlength=len(rows))
    dcg = np.bincount(owner[hit], weights=1.0 / np.log2(rank[hit] + 2.0), minlength=len(rows))
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))[np.minimum(k, held_per_user) - 1]
    return Scores(
        ndcg=float(np.mean(dcg / ideal)),
        hit_rate=float(np.mean(hits > 0)),
        precision=float(np.mean(hits / k)),
        recall=float(np.mean(hits / held_per_user)),
        coverage=len(np.unique(artists)) / n_artists,
    )


def _sorted_unique(column: pa.ChunkedArray) -> pa.Array:
    values = pc.unique(column)
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    # Arrow orders strings by their bytes: for UTF-8, code point order, as Python's sorted().
    return values.take(pc.sort_indices(values))


def _codes(column: pa.ChunkedArray, values: pa.Array) -> np.ndarray:
    return pc.index_in(column, value_set=values).to_numpy(zero_copy_only=False).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from music_analytics.client.sources import FORMATS

    parser.add_argument(
        "--train",
        required=True,
        metavar="FILE",
        help="listening events or play counts in any supported format (a file, folder, glob or zip)",
    )
    parser.add_argument(
        "--test",
        metavar="FILE",
        help="the held-out listening, in any supported format (default: hold out --split of the training pairs)",
    )
    parser.add_argument(
        "--split",
        type=_fraction,
        metavar="FRACTION",
        help=f"without --test: the share of (user, artist) pairs held out at random (default {DEFAULT_SPLIT})",
    )
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the split and the model (default 0)")
    parser.add_argument("--k", type=_positive_int, default=DEFAULT_K, help=f"list length scored (default {DEFAULT_K})")
    parser.add_argument(
        "--algorithm",
        choices=(*ALGORITHMS, *CONTROLS),
        default=DEFAULT_ALGORITHM,
        help=f"the model (default {DEFAULT_ALGORITHM}); popularity and random are controls",
    )
    parser.add_argument("--threads", type=_non_negative_int, default=0, help="threads (default 0: every CPU available)")
    parser.add_argument(
        "--format", help=f"the inputs' format: {', '.join(FORMATS)} (default: told from the content of each)"
    )
    parser.add_argument("--user", metavar="NAME", help="the user of an export that does not name one")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad row (exit 3) instead of skipping it"
    )
    parser.add_argument(
        "--out", metavar="PATH", help='the model\'s lists as JSON Lines, {"user_id": ..., "artists": [...]} by user_id'
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    from music_analytics.client.csv_source import BadRowError, InputError

    if args.test is not None and args.split is not None:
        print("error: --split holds out part of --train; with --test the held-out pairs are given", file=sys.stderr)
        return EXIT_INPUT
    try:
        train_read = read_pairs(args.train, format=args.format, user=args.user, strict=args.strict)
        _warn_rejected("--train", args.train, train_read)
        if args.test is None:
            fraction = DEFAULT_SPLIT if args.split is None else args.split
            train_pairs, test_pairs = split_pairs(train_read.table, fraction, args.seed)
        else:
            test_read = read_pairs(args.test, format=args.format, user=args.user, strict=args.strict)
            _warn_rejected("--test", args.test, test_read)
            train_pairs, test_pairs = train_read.table, test_read.table
        config = ModelConfig(algorithm=args.algorithm, seed=args.seed, threads=args.threads)
        result = evaluate(train_pairs, test_pairs, args.k, config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BadRowError as exc:
        print(f"error: {exc} (--strict stops at the first bad row)", file=sys.stderr)
        return EXIT_BAD_ROW
    except EvaluationError as exc:
        print(f"error: nothing to evaluate: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.out:
        try:
            write_lists(result, Path(args.out))
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return EXIT_INPUT
    if args.json:
        sys.stdout.write(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_table(result, sys.stdout)
    return EXIT_OK


def _warn_rejected(option: str, spec: str, pairs: Pairs) -> None:
    if pairs.rows_rejected:
        print(
            f"warning: {option} {spec}: {pairs.rows_rejected} bad row(s) skipped, the first: {pairs.first_rejection}",
            file=sys.stderr,
        )


def write_lists(result: Evaluation, path: Path) -> None:
    """One JSON line per user evaluated, by user_id: the model's top K artists, best first."""
    names = result.artists.to_pylist()
    ends = result.recommendations.ends.tolist()
    codes = result.recommendations.artists.tolist()
    with path.open("wb") as out:
        start = 0
        for user, end in zip(result.users.to_pylist(), ends, strict=True):
            out.write(orjson.dumps({"user_id": user, "artists": [names[c] for c in codes[start:end]]}) + b"\n")
            start = end


def print_table(result: Evaluation, out: Any) -> None:
    c = result.counts
    k = result.k
    out.write(
        f"Trained on {c['train_pairs']:,} (user, artist) pairs: {c['train_users']:,} users, "
        f"{c['train_artists']:,} artists.\n"
        f"Evaluated {c['users_evaluated']:,} users on {c['pairs_evaluated']:,} held-out pairs"
        f" ({c['pairs_evaluated_artist_not_in_train']:,} of them an artist nobody played in training,"
        f" which no model can recommend).\n"
    )
    if c["test_users_not_in_train"]:
        out.write(f"Not evaluated: {c['test_users_not_in_train']:,} held-out users absent from training.\n")
    if c["test_pairs_played_in_train"]:
        out.write(f"Not counted: {c['test_pairs_played_in_train']:,} held-out pairs the user played in training.\n")
    if c["users_given_popular_artists"]:
        out.write(
            f"{c['users_given_popular_artists']:,} users had fewer than {k} candidates from the model and were "
            f"topped up with popular artists.\n"
        )
    labels = {
        "ndcg": f"NDCG@{k}",
        "hit_rate": f"HR@{k}",
        "precision": f"precision@{k}",
        "recall": f"recall@{k}",
        "coverage": "coverage",
    }
    model, baseline = result.model.as_dict(), result.popularity.as_dict()
    out.write(f"\n{'metric':<14}{result.algorithm:>12}{'popularity':>12}{'ratio':>9}\n")
    for name in METRICS:
        ratio = model[name] / baseline[name] if baseline[name] else math.inf
        ratio_text = f"{ratio:8.2f}x" if math.isfinite(ratio) else f"{'-':>9}"
        out.write(f"{labels[name]:<14}{model[name]:>12.4f}{baseline[name]:>12.4f}{ratio_text}\n")
    out.write(f"\nfit {result.seconds['fit']:.2f} s, recommend {result.seconds['recommend']:.2f} s\n")
