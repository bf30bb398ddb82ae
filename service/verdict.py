"""E-P2.6's one definition of the overhead, its quantiles and its verdict, used by the gateway (`/v1/overhead`),
the paired benchmark (`benchmarks/overhead.py`) and the load test (`loadtest/verdict.py`).

- overhead = hybrid / vlm − 1: how much longer the hybrid pipeline takes than the VLM-only baseline;
- every quantile is `numpy.quantile` with one method (linear interpolation, numpy's default), so a p95 here is
  the p95 there;
- the verdict against the budget uses the estimate's interval when it has one: within the budget only when the
  whole interval is, over it only when the whole interval is, inconclusive otherwise. An estimate without an
  interval (the load test's p50/p95 of one run) is judged on its value.

Only numpy: the load-test image and the benchmarks import this without the gateway's dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Final, overload

import numpy as np

BUDGET = 0.25
"""The seed's E-P2.6 question: does adding DINOv2 + fusion keep the latency within 25% of the VLM-only pipeline?"""

QUANTILE_METHOD: Final = "linear"


class Verdict(str, Enum):
    WITHIN = "within_budget"
    OVER = "over_budget"
    INCONCLUSIVE = "inconclusive"  # the interval straddles the budget
    INSUFFICIENT = "insufficient_samples"  # nothing to compare yet


@overload
def quantile(values: Sequence[float] | np.ndarray, q: float, axis: None = None) -> float: ...
@overload
def quantile(values: Sequence[float] | np.ndarray, q: float, axis: int) -> np.ndarray: ...
def quantile(values: Sequence[float] | np.ndarray, q: float, axis: int | None = None) -> float | np.ndarray:
    """`numpy.quantile` with the project's one method; NaN for no values. With `axis`, an array of quantiles."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan
    result = np.quantile(array, q, axis=axis, method=QUANTILE_METHOD)
    return float(result) if axis is None else result


def overhead_ratio(hybrid: float | None, vlm: float | None) -> float:
    """hybrid / vlm − 1; NaN when either is missing or NaN, or vlm is not positive (no meaningful ratio)."""
    if hybrid is None or vlm is None or math.isnan(hybrid) or math.isnan(vlm) or vlm <= 0:
        return math.nan
    return hybrid / vlm - 1.0


def judge(ratio: float, budget: float = BUDGET, interval: tuple[float, float] | None = None) -> Verdict:
    """The verdict of one overhead estimate (see the module docstring)."""
    if math.isnan(ratio):
        return Verdict.INSUFFICIENT
    if interval is None:
        return Verdict.WITHIN if ratio <= budget else Verdict.OVER
    low, high = interval
    if math.isnan(low) or math.isnan(high):
        return Verdict.INSUFFICIENT
    if high <= budget:
        return Verdict.WITHIN
    return Verdict.OVER if low > budget else Verdict.INCONCLUSIVE


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Several estimates (scopes, quantiles) together: over if any is over; else not yet decided if any is not;
    within only when every one is."""
    found = set(verdicts)
    for verdict in (Verdict.OVER, Verdict.INSUFFICIENT, Verdict.INCONCLUSIVE):
        if verdict in found:
            return verdict
    return Verdict.WITHIN if found else Verdict.INSUFFICIENT
