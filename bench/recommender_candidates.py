"""Which recommender to ship: quality and cost of the candidates, measured the way evaluate measures.

Quality: each input's (user, artist) pairs split 80/20 at random (``client.evaluate.split_pairs``,
one split per seed), each candidate trained on the 80% and scored on the 20% with K=10, and its
NDCG@10 given as a ratio to the most-popular baseline's on the same split. A candidate fit for
shipping holds its ratio on every seed and on both kinds of data, not just its best.

Cost: fit + top-10 for every user of a large input (the benchmark's 10M-event file: 200k users,
20k artists), with the threads given.

    python bench/recommender_candidates.py --playcounts user_artists.dat --events taste.csv \\
        [--seeds 0,1,2] [--scale-events events-10M.csv] [--threads 2] [--only bm25,als] [--out r.json]

``--playcounts``: a play-count file (HetRec 2011 Last.fm ``user_artists.dat``, or any file
``music-analytics evaluate`` reads); ``--events``: listening events (``music-analytics generate``).
Either may be left out; every input given is measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from music_analytics.client.evaluate import evaluate, read_pairs, split_pairs
from music_analytics.services.recommendation.model import ModelConfig, PlayMatrix, train

K = 10
SPLIT = 0.2


def candidates() -> dict[str, ModelConfig]:
    """Name -> configuration. Neighbour counts and BM25's K1/B around implicit's defaults and the
    values its Last.fm example uses (K1=100, B=0.8); the history weights the neighbour models score
    a user's artists with."""
    found: dict[str, ModelConfig] = {}
    for neighbours in (20, 30, 50, 100, 200):
        for k1, b in itertools.product((1.2, 3.0, 10.0, 30.0, 100.0), (0.25, 0.5, 0.75)):
            for weight in ("plays", "log", "binary"):
                found[f"bm25 n={neighbours} K1={k1:g} B={b:g} {weight}"] = ModelConfig(
                    algorithm="bm25", neighbours=neighbours, bm25_k1=k1, bm25_b=b, history_weight=weight
                )
    for algorithm in ("tfidf", "cosine"):
        for neighbours in (20, 50, 100, 200):
            for weight in ("plays", "log", "binary"):
                found[f"{algorithm} n={neighbours} {weight}"] = ModelConfig(
                    algorithm=algorithm, neighbours=neighbours, history_weight=weight
                )
    for factors in (32, 64, 128):
        for regularization in (0.01, 0.1):
            found[f"als f={factors} reg={regularization:g}"] = ModelConfig(
                algorithm="als", factors=factors, regularization=regularization, iterations=15
            )
    for factors in (64, 128):
        for learning_rate in (0.01, 0.05):
            found[f"bpr f={factors} lr={learning_rate:g}"] = ModelConfig(
                algorithm="bpr", factors=factors, learning_rate=learning_rate, iterations=100, regularization=0.05
            )
    found["random (control)"] = ModelConfig(algorithm="random")
    return found


def quality(spec: str, seeds: list[int], chosen: dict[str, ModelConfig], threads: int) -> dict[str, dict]:
    """Per candidate: the NDCG@10 ratio to most-popular on each seed's split, and the raw metrics."""
    pairs = read_pairs(spec).table
    print(f"{spec}: {pairs.num_rows:,} pairs", file=sys.stderr)
    splits = {seed: split_pairs(pairs, SPLIT, seed) for seed in seeds}
    found: dict[str, dict] = {}
    for name, config in chosen.items():
        ratios, ndcgs, baseline, fits = [], [], [], []
        for seed, (train_pairs, test_pairs) in splits.items():
            result = evaluate(train_pairs, test_pairs, K, replace(config, seed=seed, threads=threads))
            ratios.append(result.model.ndcg / result.popularity.ndcg)
            ndcgs.append(result.model.ndcg)
            baseline.append(result.popularity.ndcg)
            fits.append(result.seconds["fit"] + result.seconds["recommend"])
        found[name] = {
            "ratio": ratios,
            "ndcg": ndcgs,
            "popularity_ndcg": baseline,
            "seconds": statistics.mean(fits),
        }
        print(f"  {name:<40} ratio {_spread(ratios)}  ndcg {statistics.mean(ndcgs):.4f}", file=sys.stderr)
    return found


def scale(spec: str, chosen: dict[str, ModelConfig], threads: int) -> dict[str, dict]:
    """Fit + top-10 for every user of ``spec``, per candidate."""
    started = time.perf_counter()
    pairs = read_pairs(spec).table
    read = time.perf_counter() - started
    users, user_codes = np.unique(pairs["user_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    artists, artist_codes = np.unique(pairs["artist"].to_numpy(zero_copy_only=False), return_inverse=True)
    matrix = PlayMatrix.from_codes(user_codes, artist_codes, pairs["plays"].to_numpy(), len(users), len(artists))
    print(
        f"{spec}: {matrix.n_users:,} users, {matrix.n_artists:,} artists, {matrix.csr.nnz:,} pairs "
        f"(read in {read:.1f} s)",
        file=sys.stderr,
    )
    everyone = np.arange(matrix.n_users)
    found = {}
    for name, config in chosen.items():
        started = time.perf_counter()
        model = train(matrix, replace(config, threads=threads))
        fitted = time.perf_counter()
        model.recommend(everyone, K)
        done = time.perf_counter()
        found[name] = {"fit": fitted - started, "recommend": done - fitted}
        print(f"  {name:<40} fit {fitted - started:6.2f} s  recommend {done - fitted:6.2f} s", file=sys.stderr)
    return found


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.mean(values):.2f}x (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--playcounts", help="a play-count file, e.g. Last.fm HetRec 2011 user_artists.dat")
    parser.add_argument("--events", help="listening events, e.g. from music-analytics generate")
    parser.add_argument("--scale-events", help="a large events file to time fit + recommend on")
    parser.add_argument("--seeds", default="0,1,2", help="split seeds (default 0,1,2)")
    parser.add_argument("--threads", type=int, default=2, help="threads for fit and recommend (default 2)")
    parser.add_argument("--only", help="comma-separated name prefixes of the candidates to run")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args()
    chosen = candidates()
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(","))
        chosen = {name: config for name, config in chosen.items() if name.startswith(prefixes)}
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"k": K, "split": SPLIT, "seeds": seeds, "threads": args.threads, "configs": {}}
    report["configs"] = {name: asdict(config) for name, config in chosen.items()}
    for key, spec in (("playcounts", args.playcounts), ("events", args.events)):
        if spec:
            report[key] = {"input": Path(spec).name, "results": quality(spec, seeds, chosen, args.threads)}
    if args.scale_events:
        report["scale"] = {
            "input": Path(args.scale_events).name,
            "results": scale(args.scale_events, chosen, args.threads),
        }
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def print_table(report: dict) -> None:
    names = list(report["configs"])
    columns = [key for key in ("playcounts", "events") if key in report]
    header = f"{'candidate':<40}" + "".join(f"{report[key]['input'][:24]:>26}" for key in columns)
    if "scale" in report:
        header += f"{'fit+top10 (s)':>16}"
    print(header)
    for name in names:
        line = f"{name:<40}"
        for key in columns:
            ratios = report[key]["results"][name]["ratio"]
            line += f"{statistics.mean(ratios):>12.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        if "scale" in report:
            cost = report["scale"]["results"][name]
            line += f"{cost['fit'] + cost['recommend']:>16.1f}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
