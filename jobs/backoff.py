"""Exponential backoff with equal jitter: how long to wait before another try."""

from __future__ import annotations

import random
from collections.abc import Callable

# Past this many doublings the delay is at its cap anyway; the bound keeps 2**n a small float.
_MAX_DOUBLINGS = 62


def backoff_delay(
    job_try: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before try `job_try + 1`: exponential from `base_s`, capped, with equal jitter.

    Try 1 failed: between base/2 and base; try 2: base..2*base; ... never more than `cap_s`. Half
    the delay is random so that jobs failed by one outage do not all come back at the same moment.
    """
    doublings = min(max(job_try - 1, 0), _MAX_DOUBLINGS)
    ceiling = min(cap_s, base_s * 2.0**doublings)
    return float(ceiling / 2 + ceiling / 2 * rand())
