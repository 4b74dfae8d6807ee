"""Downstream scores (reference §7), pure numerics over class indices: the weighted F1 and the
Matthews correlation with sklearn's semantics (no sklearn), and one task's counts and metrics.

A prediction of -1 means invalid (the generated text named no answer); it counts as an error.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

RESULT_KEYS = (
    "f1",
    "f1_new",
    "mcc",
    "correct",
    "correct_new",
    "incorrect",
    "invalid",
    "total",
    "num_few_shots",
    "gen_len",
    "quirks",
)


def _labels_union(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([y_true, y_pred]))


def f1_weighted(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """`sklearn.metrics.f1_score(y_true, y_pred, average="weighted")`.

    The label set is the union of both arrays (so an invalid -1 prediction is a label of its own,
    with zero support: it lowers the recall of the true class and adds no weight); per-label
    F1 = 2tp / (2tp + fp + fn), 0 when undefined; weights are the supports in `y_true`.
    """
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.shape != pred.shape:
        raise ValueError(f"y_true {true.shape} and y_pred {pred.shape} differ in shape")
    if true.size == 0:
        return 0.0
    total = 0.0
    for label in _labels_union(true, pred):
        t, p = true == label, pred == label
        tp = float(np.sum(t & p))
        denom = 2 * tp + float(np.sum(~t & p)) + float(np.sum(t & ~p))
        f1 = 2 * tp / denom if denom > 0 else 0.0
        total += f1 * float(np.sum(t))
    return total / true.size


def matthews_corrcoef(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """`sklearn.metrics.matthews_corrcoef` (multiclass form; 0 when a marginal is constant)."""
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.shape != pred.shape:
        raise ValueError(f"y_true {true.shape} and y_pred {pred.shape} differ in shape")
    labels = _labels_union(true, pred)
    index = {int(v): i for i, v in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.float64)
    for a, b in zip(true.tolist(), pred.tolist()):
        cm[index[int(a)], index[int(b)]] += 1
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, s = float(np.trace(cm)), float(cm.sum())
    cov_ytyp = correct * s - float(t_sum @ p_sum)
    cov_ypyp = s * s - float(p_sum @ p_sum)
    cov_ytyt = s * s - float(t_sum @ t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp)


def score_predictions(labels: ArrayLike, preds: ArrayLike, preds_new: ArrayLike) -> dict:
    """The counts and metrics of one task (generation `preds`, likelihood `preds_new`)."""
    y, gen, lik = (np.asarray(x, np.int64) for x in (labels, preds, preds_new))
    correct = int(np.sum(gen == y))
    invalid = int(np.sum(gen == -1))
    return {
        "f1": float(f1_weighted(y, gen)),
        "f1_new": float(f1_weighted(y, lik)),
        "mcc": float(matthews_corrcoef(y, gen)),
        "correct": correct,
        "correct_new": int(np.sum(lik == y)),
        "incorrect": int(len(y) - correct - invalid),
        "invalid": invalid,
        "total": len(y),
    }
