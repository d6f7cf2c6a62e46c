"""Waiting for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout: float,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy and return that. An exception of a type in
    ``ignore`` counts as "not yet" (e.g. OSError while a server is still binding its port); any
    other exception propagates at once, so ``check`` can fail fast when waiting is hopeless (the
    process it waits for has exited). After ``timeout`` seconds: AssertionError naming ``what``
    and the last ignored error, if any."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except ignore as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)  # polling period, not a wait for elapsed time
