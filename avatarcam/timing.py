"""Latency summaries shared by the benchmarks."""

from __future__ import annotations

import numpy as np


def percentiles_ms(values_ms: list[float]) -> dict[str, float]:
    """p50 and p95 of a list of milliseconds, rounded to 0.01 (NaN for an empty list)."""
    if len(values_ms) == 0:
        return {"p50": float("nan"), "p95": float("nan")}
    a = np.asarray(values_ms, np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2)}
