"""Personalised artist recommendations from implicit feedback (play counts per user and artist).

Pure computation: numpy, scipy.sparse and the ``implicit`` library, no gRPC and no Arrow. The
Recommendation service and ``music-analytics evaluate`` both train and score with this module, so
what is measured offline is what is served.

Callers code users and artists densely, in name order (sorted strings): the same input then gives
the same matrix whatever order its rows arrived in, and with it the same recommendations.

Algorithms:

* ``bm25``, ``tfidf``, ``cosine``: item-based nearest neighbours. Each artist keeps its
  ``neighbours`` most similar artists (implicit's all-pairs kNN over the weighted play matrix); a
  user's score for an artist is the sum, over the artists they played, of their weight times the
  similarity. An artist no played artist is a neighbour of gets no score: users with too little
  history get fewer candidates than asked for and are filled from the popularity ranking.
* ``als``, ``bpr``: matrix factorisation; every unplayed artist gets a score.
* ``popularity`` and ``random``: controls for evaluation, not models. ``popularity`` is the
  baseline every model is compared with; ``random`` ranks unplayed artists at random, which a
  sound evaluation must score far below every model.

Every list holds exactly ``min(n, artists the user has not played)`` artists, never one the user
has played, best first. Results are deterministic for a given matrix and configuration (seed
included) and do not depend on the number of threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse

NEIGHBOUR_ALGORITHMS: tuple[str, ...] = ("bm25", "tfidf", "cosine")
FACTOR_ALGORITHMS: tuple[str, ...] = ("als", "bpr")
ALGORITHMS: tuple[str, ...] = (*NEIGHBOUR_ALGORITHMS, *FACTOR_ALGORITHMS)
CONTROLS: tuple[str, ...] = ("popularity", "random")
DEFAULT_ALGORITHM = "bm25"
# The history weights a neighbour model scores with: the play counts as they are, their
# logarithm (a user's hundredth play of an artist says less than their first), or 1 per artist.
HISTORY_WEIGHTS: tuple[str, ...] = ("plays", "log", "binary")

# The matrix factorisations' settings where a configuration leaves them unset: the best of each
# measured by bench/recommender_candidates.py.
FACTOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "als": {"factors": 32, "iterations": 15, "regularization": 0.1},
    "bpr": {"factors": 64, "iterations": 100, "regularization": 0.05},
}

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

# Users scored per slice: bounds the per-user arrays held at once.
_ROWS_PER_TASK = 4096


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup (v2) CPU quota.

    A container limited to 2 CPUs on a 64-core node sees 64 in its affinity mask; threads beyond
    its quota only queue for it.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return cpus
    if not fields or fields[0] == "max":
        return cpus
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return cpus
    if quota <= 0 or period <= 0:
        return cpus
    return max(1, min(cpus, math.ceil(quota / period)))


@dataclass(frozen=True)
class ModelConfig:
    """How to train. The defaults are the shipped model (bench/recommender_candidates.py measures
    the alternatives)."""

    algorithm: str = DEFAULT_ALGORITHM
    # bm25, tfidf, cosine: similar artists kept per artist. Scoring time grows with it: 30 is
    # within 0.05 of 50's NDCG ratio on both benchmark inputs at 70% of its scoring time.
    neighbours: int = 30
    bm25_k1: float = 30.0  # bm25: saturation of a listener's plays (higher = less saturation)
    bm25_b: float = 0.25  # bm25: normalisation by how many plays an artist has in all (0 to 1)
    history_weight: str = "plays"  # bm25, tfidf, cosine: see HISTORY_WEIGHTS
    # als, bpr: None = the algorithm's own (FACTOR_DEFAULTS)
    factors: int | None = None
    iterations: int | None = None
    regularization: float | None = None
    alpha: float = 1.0  # als: confidence scale of the (BM25-weighted) plays
    learning_rate: float = 0.01  # bpr
    seed: int = 0  # als, bpr, random
    threads: int = 0  # fitting, and scoring by factors (0 = available_cpus()); neighbour scoring uses one

    def __post_init__(self) -> None:
        known = (*ALGORITHMS, *CONTROLS)
        if self.algorithm not in known:
            raise ValueError(f"algorithm: unknown {self.algorithm!r}; expected one of {', '.join(known)}")
        if self.history_weight not in HISTORY_WEIGHTS:
            raise ValueError(
                f"history_weight: unknown {self.history_weight!r}; expected one of {', '.join(HISTORY_WEIGHTS)}"
            )
        for name in ("neighbours", "factors", "iterations"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads: must be 0 (all available) or more, got {self.threads}")
        if not 0.0 <= self.bm25_b <= 1.0:
            raise ValueError(f"bm25_b: must be between 0 and 1, got {self.bm25_b}")
        for name in ("bm25_k1", "regularization"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0.0:  # also refuses NaN
                raise ValueError(f"{name}: must be 0 or more, got {getattr(self, name)}")
        for name in ("alpha", "learning_rate"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name}: must be more than 0, got {getattr(self, name)}")

    def resolved_threads(self) -> int:
        return self.threads or available_cpus()

    def factor_setting(self, name: str) -> Any:
        """factors, iterations or regularization: as set, else the algorithm's default."""
        value = getattr(self, name)
        return FACTOR_DEFAULTS[self.algorithm][name] if value is None else value


class PlayMatrix:
    """Play counts, users x artists, as a float32 CSR matrix (canonical: sorted, no duplicates)."""

    def __init__(self, csr: scipy.sparse.csr_matrix) -> None:
        self.csr = csr

    @classmethod
    def from_codes(
        cls,
        user_codes: np.ndarray,
        artist_codes: np.ndarray,
        plays: np.ndarray,
        n_users: int,
        n_artists: int,
    ) -> PlayMatrix:
        """The matrix of ``plays`` at (user, artist); duplicate pairs are summed. Raises ValueError
        for codes out of range or plays that are not positive finite numbers."""
        import scipy.sparse

        user_codes, artist_codes, plays = (np.asarray(a).ravel() for a in (user_codes, artist_codes, plays))
        if not (len(user_codes) == len(artist_codes) == len(plays)):
            raise ValueError(
                f"user_codes, artist_codes and plays differ in length "
                f"({len(user_codes)}, {len(artist_codes)}, {len(plays)})"
            )
        if n_users < 0 or n_artists < 0:
            raise ValueError(f"n_users and n_artists must be 0 or more, got {n_users} and {n_artists}")
        for name, codes, bound in (("user_codes", user_codes, n_users), ("artist_codes", artist_codes, n_artists)):
            if not np.issubdtype(codes.dtype, np.integer) and len(codes):
                raise ValueError(f"{name}: expected integer codes, got {codes.dtype}")
            if len(codes) and (codes.min() < 0 or codes.max() >= bound):
                bad = codes[(codes < 0) | (codes >= bound)][0]
                raise ValueError(f"{name}: code {bad} outside 0..{bound - 1}")
        values = plays.astype(np.float32)
        if len(values) and not (np.isfinite(values).all() and values.min() > 0):
            bad = plays[~(np.isfinite(values) & (values > 0))][0]
            raise ValueError(f"plays: every count must be a finite number above 0, got {bad}")
        coo = scipy.sparse.coo_matrix(
            (values, (user_codes.astype(np.int32), artist_codes.astype(np.int32))),
            shape=(n_users, n_artists),
            dtype=np.float32,
        )
        csr = coo.tocsr()  # sums duplicates, sorts indices
        csr.indptr = csr.indptr.astype(np.int32, copy=False)
        csr.indices = csr.indices.astype(np.int32, copy=False)
        return cls(csr)

    @property
    def n_users(self) -> int:
        return int(self.csr.shape[0])

    @property
    def n_artists(self) -> int:
        return int(self.csr.shape[1])

    def listeners(self) -> np.ndarray:
        """Distinct listeners per artist (int64)."""
        return np.bincount(self.csr.indices, minlength=self.n_artists)

    def played(self, row: int) -> np.ndarray:
        """The artist codes user ``row`` played, ascending."""
        return self.csr.indices[self.csr.indptr[row] : self.csr.indptr[row + 1]]


def popularity(matrix: PlayMatrix) -> np.ndarray:
    """Every artist code, most listeners first (distinct listeners desc, ties by code asc)."""
    # A stable sort of the negated counts keeps equal counts in code order.
    return np.argsort(-matrix.listeners(), kind="stable").astype(np.int32)


@dataclass
class Recommendations:
    """Per-user lists, concatenated in the order the users were asked for.

    User i's artists are ``artists[ends[i-1]:ends[i]]`` (``ends[-1]`` = 0), best first, with their
    ``scores``. The first ``from_model[i]`` entries are the model's; the rest, if any, came from
    the popularity ranking (the model had too few candidates, or the model is the popularity
    control), popular first, scored below the model's lowest. ``by_popularity[i]`` says whether
    user i has any such entry.
    """

    ends: np.ndarray  # uint32, cumulative entry count per user
    artists: np.ndarray  # int32 artist codes
    scores: np.ndarray  # float32, non-increasing within each user
    by_popularity: np.ndarray  # bool per user
    from_model: np.ndarray  # uint32 per user: how many of its entries the model gave
    # Per user, how many of the entries (the first ones) are the model's own; the rest are popular
    # artists filled in. Equal to the user's count when by_popularity is False.
    from_model: np.ndarray | None = None

    def user(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start = int(self.ends[i - 1]) if i else 0
        end = int(self.ends[i])
        return self.artists[start:end], self.scores[start:end]

    def counts(self) -> np.ndarray:
        return np.diff(self.ends, prepend=np.uint32(0)).astype(np.int64)


class Model:
    """A trained model: ``recommend(rows, n)`` for any batch of user codes of its matrix."""

    def __init__(
        self, matrix: PlayMatrix, config: ModelConfig, score: Callable[[np.ndarray, int], tuple[Any, Any, Any]]
    ) -> None:
        self.matrix = matrix
        self.config = config
        self._score = score  # rows, n -> (counts per user, artists, scores): the model's own candidates
        self._ranking = popularity(matrix)
        self._share = (matrix.listeners() / max(matrix.n_users, 1)).astype(np.float32)

    def recommend(self, rows: np.ndarray, n: int) -> Recommendations:
        """The top ``n`` unplayed artists of each user in ``rows`` (user codes); see Recommendations."""
        rows = np.asarray(rows)
        if rows.ndim != 1:
            raise ValueError(f"rows: expected a 1-D array of user codes, got shape {rows.shape}")
        if len(rows) and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows: expected integer user codes, got {rows.dtype}")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.matrix.n_users):
            bad = rows[(rows < 0) | (rows >= self.matrix.n_users)][0]
            raise ValueError(f"rows: user code {bad} outside 0..{self.matrix.n_users - 1}")
        if n < 0:
            raise ValueError(f"n: must be 0 or more, got {n}")
        rows = rows.astype(np.int64)
        played = np.diff(self.matrix.csr.indptr)[rows]
        wanted = np.minimum(n, self.matrix.n_artists - played)
        if n == 0 or len(rows) == 0:
            counts, artists, scores = np.zeros(len(rows), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        else:
            counts, artists, scores = self._score(rows, n)
        return self._fill(rows, wanted, counts, np.asarray(artists, np.int32), np.asarray(scores, np.float32))

    def _fill(
        self, rows: np.ndarray, wanted: np.ndarray, counts: np.ndarray, artists: np.ndarray, scores: np.ndarray
    ) -> Recommendations:
        """Top up each user short of ``wanted`` from the popularity ranking."""
        short = np.flatnonzero(counts < wanted)
        if len(short) == 0:
            ends = np.cumsum(counts).astype(np.uint32)
            return Recommendations(ends, artists, scores, np.zeros(len(rows), bool), counts.astype(np.uint32))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        extra_artists: list[np.ndarray] = []
        extra_scores: list[np.ndarray] = []
        for i in short:
            own = artists[starts[i] : starts[i] + counts[i]]
            excluded = np.concatenate((self.matrix.played(int(rows[i])), own))
            need = int(wanted[i] - counts[i])
            # The first need + |excluded| of the ranking hold at least ``need`` not excluded.
            head = self._ranking[: need + len(excluded)]
            chosen = head[~np.isin(head, excluded)][:need]
            lowest = float(scores[starts[i] + counts[i] - 1]) if counts[i] else 1.0
            share = self._share[chosen]
            # Below the model's own entries and in popularity order: a fraction of its lowest
            # score (scores of the neighbour models are positive), or under it when not positive.
            extra_scores.append(share * lowest if lowest > 0 else lowest - (1 - share))
            extra_artists.append(chosen)
        # Splice each short user's extra entries in after their own.
        total = counts.copy()
        total[short] += [len(a) for a in extra_artists]
        ends = np.cumsum(total)
        out_artists = np.empty(int(ends[-1]), np.int32)
        out_scores = np.empty(int(ends[-1]), np.float32)
        is_extra = np.zeros(int(ends[-1]), bool)
        new_starts = ends - total
        for i, extra in zip(short, extra_artists, strict=True):
            begin = new_starts[i] + counts[i]
            is_extra[begin : begin + len(extra)] = True
        out_artists[is_extra] = np.concatenate(extra_artists)
        out_scores[is_extra] = np.concatenate(extra_scores).astype(np.float32)
        out_artists[~is_extra] = artists
        out_scores[~is_extra] = scores
        by_popularity = np.zeros(len(rows), bool)
        by_popularity[short] = True
        return Recommendations(ends.astype(np.uint32), out_artists, out_scores, by_popularity, counts.astype(np.uint32))


def train(matrix: PlayMatrix, config: ModelConfig) -> Model:
    """Fit ``config.algorithm`` to ``matrix``."""
    if config.algorithm in NEIGHBOUR_ALGORITHMS:
        return _train_neighbours(matrix, config)
    if config.algorithm in FACTOR_ALGORITHMS:
        return _train_factors(matrix, config)
    if config.algorithm == "random":
        return Model(matrix, config, _random_scorer(matrix, config.seed))
    return Model(matrix, config, _no_candidates)


def _no_candidates(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(len(rows), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)


# ---------------------------------------------------------------------------------------------
# Item-based nearest neighbours
# ---------------------------------------------------------------------------------------------


def _weighted_for_similarity(matrix: PlayMatrix, config: ModelConfig) -> scipy.sparse.csr_matrix:
    """The users x artists matrix the artist similarities are computed from (implicit's weightings)."""
    from implicit.nearest_neighbours import bm25_weight, normalize, tfidf_weight

    counts = matrix.csr.astype(np.float64)
    if config.algorithm == "bm25":
        weighted = bm25_weight(counts.T, config.bm25_k1, config.bm25_b).T
    elif config.algorithm == "tfidf":
        weighted = normalize(tfidf_weight(counts.T)).T
    else:
        weighted = normalize(counts.T).T
    return weighted.tocsr()


def _history(matrix: PlayMatrix, weight: str) -> np.ndarray:
    """The weight of each stored (user, artist) entry when scoring, aligned with csr.data."""
    # float32: the scorer sums in float64 whatever it is given; this copy lives as long as the model.
    plays = matrix.csr.data
    if weight == "plays":
        return plays.astype(np.float32)
    if weight == "log":
        return np.log1p(plays, dtype=np.float32)
    return np.ones_like(plays, dtype=np.float32)


def _train_neighbours(matrix: PlayMatrix, config: ModelConfig) -> Model:
    from implicit._nearest_neighbours import all_pairs_knn

    threads = config.resolved_threads()
    if matrix.n_artists and matrix.csr.nnz:
        weighted = _weighted_for_similarity(matrix, config)
        # Each artist's neighbours are computed independently of the others, the same way on any
        # number of threads.
        similarity = all_pairs_knn(weighted, config.neighbours, num_threads=threads, show_progress=False).tocsr()
        similarity.eliminate_zeros()  # implicit leaves a zero entry for each unfilled neighbour slot
    else:
        import scipy.sparse

        similarity = scipy.sparse.csr_matrix((matrix.n_artists, matrix.n_artists), dtype=np.float64)
    similarity.indptr = similarity.indptr.astype(np.int32, copy=False)
    similarity.indices = similarity.indices.astype(np.int32, copy=False)
    similarity.data = similarity.data.astype(np.float64, copy=False)
    history = _history(matrix, config.history_weight)
    scorer = _NeighbourScorer(matrix, similarity, history)
    return Model(matrix, config, scorer)


class _NeighbourScorer:
    """Scores users one by one with implicit's NearestNeighboursScorer, in one thread.

    Threads do not pay here: a call holds the GIL for about a third of its ~10 us (argument
    checks, result arrays), and handing the GIL over between two threads at every call costs as
    much as the work released; two threads with a scorer each ran no faster than one
    (bench/recommender_candidates.py). Fitting, the larger cost, runs on every thread.
    """

    def __init__(self, matrix: PlayMatrix, similarity: Any, history: np.ndarray) -> None:
        from implicit._nearest_neighbours import NearestNeighboursScorer

        self.indptr = matrix.csr.indptr
        self.indices = matrix.csr.indices
        self.history = history
        self.scorer = NearestNeighboursScorer(similarity)

    def __call__(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # In slices: the per-user arrays of one slice at a time, not of every user.
        parts = [self._score_task(rows[i : i + _ROWS_PER_TASK], n) for i in range(0, len(rows), _ROWS_PER_TASK)]
        counts = np.concatenate([p[0] for p in parts])
        artists = np.concatenate([p[1] for p in parts])
        scores = np.concatenate([p[2] for p in parts])
        return counts, artists, scores

    def _score_task(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scorer = self.scorer
        indptr, indices, history = self.indptr, self.indices, self.history
        found_ids: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        for row in rows.tolist():
            ids, scores = scorer.recommend(indptr[row : row + 2], indices, history, K=n, remove_own_likes=True)
            found_ids.append(ids)
            found_scores.append(scores)
        lengths = np.fromiter(map(len, found_ids), np.int64, len(rows))
        ids = np.concatenate(found_ids).astype(np.int32)
        scores = np.concatenate(found_scores).astype(np.float32)
        owner = np.repeat(np.arange(len(rows)), lengths)
        # The scorer zeroes the artists the user played but may still list them (score 0) when it
        # has fewer than n others; only positive scores are the model's candidates.
        keep = scores > 0
        ids, scores, owner = ids[keep], scores[keep], owner[keep]
        # The scorer puts equal scores in descending artist order, and scores equal in float32
        # may differ in its float64: order each user's list by score desc, then artist asc.
        tied = (owner[1:] == owner[:-1]) & (scores[1:] == scores[:-1])
        if tied.any():
            order = np.lexsort((ids, -scores, owner))
            ids, scores, owner = ids[order], scores[order], owner[order]
        counts = np.bincount(owner, minlength=len(rows)).astype(np.int64)
        return counts, ids, scores


# ---------------------------------------------------------------------------------------------
# Matrix factorisation
# ---------------------------------------------------------------------------------------------


def _train_factors(matrix: PlayMatrix, config: ModelConfig) -> Model:
    from implicit.nearest_neighbours import bm25_weight
    from threadpoolctl import threadpool_limits

    threads = config.resolved_threads()
    # BLAS's own threads fight implicit's (implicit warns of 10x slowdowns): one BLAS thread,
    # and implicit's threads do the parallel work.
    with threadpool_limits(1, "blas"):
        if config.algorithm == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            model = AlternatingLeastSquares(
                factors=config.factor_setting("factors"),
                regularization=config.factor_setting("regularization"),
                alpha=config.alpha,
                iterations=config.factor_setting("iterations"),
                num_threads=threads,
                random_state=config.seed,
            )
            confidence = bm25_weight(matrix.csr.astype(np.float64), config.bm25_k1, config.bm25_b).tocsr()
            model.fit(confidence.astype(np.float32), show_progress=False)
        else:
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            # BPR's threads update shared factors without locks (Hogwild): the result would depend
            # on the thread count and timing. One thread keeps it a function of the seed.
            model = BayesianPersonalizedRanking(
                factors=config.factor_setting("factors"),
                learning_rate=config.learning_rate,
                regularization=config.factor_setting("regularization"),
                iterations=config.factor_setting("iterations"),
                num_threads=1,
                random_state=config.seed,
            )
            model.fit(matrix.csr, show_progress=False)
    model.num_threads = threads
    return Model(matrix, config, _FactorScorer(matrix, model))


class _FactorScorer:
    def __init__(self, matrix: PlayMatrix, model: Any) -> None:
        self.matrix = matrix
        self.model = model

    def __call__(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from threadpoolctl import threadpool_limits

        csr = self.matrix.csr
        counts_parts, id_parts, score_parts = [], [], []
        with threadpool_limits(1, "blas"):
            for start in range(0, len(rows), _ROWS_PER_TASK):
                batch = rows[start : start + _ROWS_PER_TASK]
                ids, scores = self.model.recommend(batch, csr[batch], N=min(n, csr.shape[1]))
                ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
                # Played artists come back (scored the lowest float) when a user has fewer than n
                # others; a user with no history has only zero-vector scores: no candidates.
                keep = scores > np.finfo(scores.dtype).min
                keep &= (np.diff(csr.indptr)[batch] > 0)[:, None]
                counts_parts.append(keep.sum(axis=1))
                id_parts.append(ids[keep])
                score_parts.append(scores[keep])
        return (
            np.concatenate(counts_parts).astype(np.int64),
            np.concatenate(id_parts).astype(np.int32),
            np.concatenate(score_parts).astype(np.float32),
        )


# ---------------------------------------------------------------------------------------------
# Random control
# ---------------------------------------------------------------------------------------------


def _random_scorer(matrix: PlayMatrix, seed: int) -> Callable[[np.ndarray, int], tuple[Any, Any, Any]]:
    def score(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.zeros(len(rows), np.int64)
        id_parts, score_parts = [], []
        for i, row in enumerate(rows.tolist()):
            # A generator per user: a user's list does not depend on who else is in the batch.
            rng = np.random.default_rng((seed, row))
            played = matrix.played(row)
            draw = rng.choice(matrix.n_artists, size=min(matrix.n_artists, n + len(played)), replace=False)
            chosen = draw[~np.isin(draw, played)][:n]
            counts[i] = len(chosen)
            id_parts.append(chosen.astype(np.int32))
            score_parts.append(((len(chosen) - np.arange(len(chosen))) / len(chosen)).astype(np.float32))
        return counts, np.concatenate(id_parts), np.concatenate(score_parts)

    return score
