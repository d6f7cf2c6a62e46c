"""How many examples the fuzz tests run: a bounded number in `make test`, far more in `make fuzz`.

Each property names its example count for `make test`. MUSIC_ANALYTICS_FUZZ_EXAMPLES=N (what
`make fuzz` sets) runs N examples of each property instead, or ``share`` of N for a slower one
(the streams through real services).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES_ENV = "MUSIC_ANALYTICS_FUZZ_EXAMPLES"


def fuzz_examples(ci_examples: int, share: float = 1.0) -> int:
    """``ci_examples`` in `make test`; ``share`` of MUSIC_ANALYTICS_FUZZ_EXAMPLES when that is set."""
    raw = os.environ.get(FUZZ_EXAMPLES_ENV, "").strip()
    if not raw:
        return ci_examples
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{FUZZ_EXAMPLES_ENV} must be a positive whole number, got {raw!r}")
    return max(1, round(int(raw) * share))


def fuzz_settings(ci_examples: int, *, deadline_ms: int, share: float = 1.0) -> settings:
    """Settings of one fuzz property. The deadline is far above an example's usual time (a loaded
    2-core machine is slow) yet fails a hang quickly; examples are small by construction, so the
    size and speed health checks would only report the strategies' deliberate oversized cases."""
    return settings(
        max_examples=fuzz_examples(ci_examples, share),
        deadline=deadline_ms,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        print_blob=True,
    )
