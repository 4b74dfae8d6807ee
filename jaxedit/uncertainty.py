"""How sure a number is: seeded bootstrap confidence intervals, paired differences, McNemar's test.

Every interval here is a percentile bootstrap over *units* the caller names (documents for
held-out loss and drift, records for ES/PS/NS, test items for downstream scores): resample the
units with replacement `n_boot` times (numpy's PCG64 from `seed`, so a rerun gives the same
interval), recompute the statistic, and take the (α/2, 1 − α/2) quantiles.

- `bootstrap_mean(values)`: the mean of per-unit values.
- `bootstrap_ratio(numer, denom)`: Σ numer / Σ denom over the resampled units (per-token means
  over documents of different lengths: the document is the unit, the token count its weight).
- `bootstrap_stat(stat, *arrays)`: any statistic of aligned per-unit arrays (F1, MCC).
- `paired_difference(stat, a, b, ...)`: stat(a) − stat(b) on the *same* resampled units, so the
  interval of a difference between two models scored on the same items is as narrow as the data
  allow; `significant` = the interval excludes zero.
- `mcnemar_exact(b, c)`: the exact two-sided McNemar p-value for paired correct/incorrect
  outcomes (b = only the first right, c = only the second right).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "LEVEL",
    "N_BOOT",
    "bootstrap_mean",
    "bootstrap_ratio",
    "bootstrap_stat",
    "mcnemar_exact",
    "paired_difference",
]

N_BOOT = 1000
LEVEL = 0.95


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("a bootstrap needs at least one unit")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray, level: float) -> list[float]:
    alpha = 1.0 - level
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def bootstrap_stat(
    stat: Callable[..., float],
    *arrays: Sequence[Any] | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """{"value": stat(*arrays), "ci": [lo, hi], "n": units, "level", "n_boot", "seed"} with the
    percentile interval of `stat` over units resampled jointly across the aligned `arrays`."""
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("bootstrap arrays must be aligned (one entry per unit)")
    idx = _indices(n, n_boot, seed)
    samples = np.array([stat(*(a[i] for a in arrs)) for i in idx], dtype=np.float64)
    return {
        "value": float(stat(*arrs)),
        "ci": _interval(samples, level),
        "n": n,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
    }


def bootstrap_mean(values, **kw) -> dict[str, Any]:
    """The mean of per-unit values with its bootstrap interval (vectorised)."""
    v = np.asarray(values, np.float64)
    n_boot, seed, level = kw.get("n_boot", N_BOOT), kw.get("seed", 0), kw.get("level", LEVEL)
    samples = v[_indices(len(v), n_boot, seed)].mean(axis=1)
    return {
        "value": float(v.mean()),
        "ci": _interval(samples, level),
        "n": len(v),
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
    }


def bootstrap_ratio(numer, denom, **kw) -> dict[str, Any]:
    """Σ numer / Σ denom (e.g. total NLL / total tokens) with the interval over resampled units."""
    a, b = np.asarray(numer, np.float64), np.asarray(denom, np.float64)
    if a.shape != b.shape:
        raise ValueError("numerator and denominator must be aligned (one entry per unit)")
    n_boot, seed, level = kw.get("n_boot", N_BOOT), kw.get("seed", 0), kw.get("level", LEVEL)
    idx = _indices(len(a), n_boot, seed)
    samples = a[idx].sum(axis=1) / np.maximum(b[idx].sum(axis=1), 1e-300)
    return {
        "value": float(a.sum() / b.sum()),
        "ci": _interval(samples, level),
        "n": len(a),
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
    }


def paired_difference(
    stat: Callable[..., float],
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """stat(*a) − stat(*b) where `a` and `b` are per-unit arrays of two models on the same units,
    resampled together; `significant` when the interval excludes 0."""
    aa, bb = [np.asarray(x) for x in a], [np.asarray(x) for x in b]
    n = len(aa[0])
    if any(len(x) != n for x in (*aa, *bb)):
        raise ValueError("paired arrays must be aligned (the same units for both models)")
    idx = _indices(n, n_boot, seed)
    diffs = np.array(
        [stat(*(x[i] for x in aa)) - stat(*(x[i] for x in bb)) for i in idx], dtype=np.float64
    )
    ci = _interval(diffs, level)
    return {
        "value": float(stat(*aa) - stat(*bb)),
        "ci": ci,
        "significant": bool(ci[0] > 0 or ci[1] < 0),
        "n": n,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
    }


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: under H0 the b + c discordant pairs split Binomial(n, ½);
    p = min(1, 2 · P[X ≤ min(b, c)])."""
    if b < 0 or c < 0:
        raise ValueError("McNemar counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))
