"""What one call costs in memory, against the bytes its state reports (``nbytes``).

The per-call limit (``--max-call-bytes``) is checked against ``peak_factor × nbytes``: the state
itself, plus the temporaries of merging sorted runs while ingesting and of building the answer
(the key strings, the per-user summaries). This measures that factor: for each service and
number of distinct keys, a fresh process feeds the analytics the same batches the service would
decode, and reads its peak RSS from the kernel (VmHWM, reset after the input is generated).

    python -m bench.call_memory [--distinct 100000,1000000] [--rows 4000000]

Prints one line per case; exits 1 if a measured factor exceeds the state's own ``peak_factor``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from music_analytics.services.mapreduce.analytics import PlayCounter
from music_analytics.services.userbehavior.analytics import UserStats

FACTORS = {"mapreduce": PlayCounter.peak_factor, "userbehavior": UserStats.peak_factor}

_CASE = r"""
import json, sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from music_analytics.services.mapreduce.analytics import PlayCounter
from music_analytics.services.userbehavior.analytics import UserStats

service, distinct, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

rng = np.random.default_rng(1)
batches = []
for start in range(0, rows, 65536):
    n = min(65536, rows - start)
    keys = rng.integers(0, distinct, n)
    batches.append((
        pc.dictionary_encode(pa.array([f"key-{k:09d}" for k in keys])),
        pc.dictionary_encode(pa.array([f"artist-{k % 5000}" for k in keys])),
        np.ones(n, dtype=np.uint32),
    ))
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on
base = status("VmRSS")
state = PlayCounter() if service == "mapreduce" else UserStats()
held = 0
for key, artist, duration in batches:
    if service == "mapreduce":
        state.add_columns(artist.dictionary, artist.indices.to_numpy(), key.dictionary, key.indices.to_numpy())
    else:
        # Users are the keys, each listening to songs of its own (as many songs as users) over a year.
        state.add_columns(
            key.dictionary, key.indices.to_numpy(), artist.dictionary, artist.indices.to_numpy(),
            key.dictionary, key.indices.to_numpy(), duration,
            1_700_000_000 + (key.indices.to_numpy().astype(np.int64) * 7919) % (365 * 86400),
        )  # fmt: skip
    held = max(held, state.nbytes)
if service == "mapreduce":
    state.top(10)
else:
    for _ in state.summaries(20000):
        pass
    state.top_users(5)
print(json.dumps({"nbytes": held, "peak_growth": status("VmHWM") - base}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", default="100000,1000000", help="distinct keys per case, comma-separated")
    parser.add_argument("--rows", type=int, default=4_000_000, help="events per case")
    args = parser.parse_args()
    over = []
    for service in ("mapreduce", "userbehavior"):
        for distinct in (int(d) for d in args.distinct.split(",")):
            out = subprocess.run([sys.executable, "-c", _CASE, service, str(distinct), str(args.rows)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            case = json.loads(out)
            factor = case["peak_growth"] / case["nbytes"]
            if factor > FACTORS[service]:
                over.append(f"{service} at {distinct:,} keys: {factor:.1f} over {FACTORS[service]}")
            state, peak = case["nbytes"] / 2**20, case["peak_growth"] / 2**20
            print(f"{service:<13} {distinct:>9,} distinct keys {args.rows:>11,} events: state {state:6.1f} MiB, "
                  f"peak RSS growth {peak:6.1f} MiB, factor {factor:4.1f}")  # fmt: skip
    print("factors assumed: " + ", ".join(f"{k} {v}" for k, v in FACTORS.items()))
    for line in over:
        print(f"over: {line}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
