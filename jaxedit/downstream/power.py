"""Downstream scores that resolve small changes: per-item likelihood predictions over every test
item, bootstrap intervals over items, and paired comparisons with the unedited model.

`item_scores(labels, preds)` gives accuracy, weighted F1 and MCC with 95 % percentile bootstrap
intervals (the unit: the test item, resampled jointly for labels and predictions).
`paired_scores(labels, preds, base_preds)` adds, on the *same* resampled items, the interval of
each metric's difference from the unedited model's predictions (`significant` when it excludes
0), and McNemar's exact test on per-item correctness (b = items only the edited model gets right,
c = items only the unedited model gets right).
"""

from __future__ import annotations

import numpy as np

from jaxedit import uncertainty
from jaxedit.downstream.scoring import f1_weighted, matthews_corrcoef

__all__ = ["METRICS", "item_scores", "paired_scores"]


def _acc(y, p) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(p)))


METRICS = {"accuracy": _acc, "f1": f1_weighted, "mcc": matthews_corrcoef}


def item_scores(labels, preds, *, seed: int = 0, n_boot: int = uncertainty.N_BOOT) -> dict:
    """{metric: {"value", "ci"}} over the test items, plus "n" and the bootstrap settings."""
    y, p = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    out: dict = {"n": len(y), "unit": "item", "n_boot": n_boot, "seed": seed}
    for name, fn in METRICS.items():
        res = uncertainty.bootstrap_stat(fn, y, p, seed=seed, n_boot=n_boot)
        out[name] = {"value": res["value"], "ci": res["ci"]}
    return out


def paired_scores(
    labels, preds, base_preds, *, seed: int = 0, n_boot: int = uncertainty.N_BOOT
) -> dict:
    """`item_scores` of `preds`, and per metric the paired difference from `base_preds` (same
    items), and McNemar's exact p-value on correctness."""
    y = np.asarray(labels, np.int64)
    p, q = np.asarray(preds, np.int64), np.asarray(base_preds, np.int64)
    if not (len(y) == len(p) == len(q)):
        raise ValueError("labels and both models' predictions must cover the same items")
    out = item_scores(y, p, seed=seed, n_boot=n_boot)
    out["difference"] = {}
    for name, fn in METRICS.items():
        d = uncertainty.paired_difference(fn, [y, p], [y, q], seed=seed, n_boot=n_boot)
        out["difference"][name] = {k: d[k] for k in ("value", "ci", "significant")}
    right, base_right = p == y, q == y
    b, c = int(np.sum(right & ~base_right)), int(np.sum(~right & base_right))
    out["mcnemar"] = {"b": b, "c": c, "p": uncertainty.mcnemar_exact(b, c)}
    return out
