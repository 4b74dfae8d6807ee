"""Downstream scores (reference §7), pure numerics over class indices: the weighted F1 and the Matthews
correlation with sklearn's semantics (no sklearn), and one task's counts and metrics.

A prediction of -1 means invalid (the generated text named no answer); it counts as an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESULT_KEYS = ("f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", "total",
               "num_few_shots", "gen_len", "quirks")


def _labels_union(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([y_true, y_pred]))


def f1_weighted(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """`sklearn.metrics.f1_score(y_true, y_pred, average="weighted")`.

    The label set is the union of both arrays (so an invalid -1 prediction is a label of its own,
    with zero support: it lowers the recall of the true class and adds no weight); per-label
    F1 = 2tp / (2tp + fp + fn), 0 when undefined; weights are the supports in `y_true`.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.size == 0:
        return 0.0
    total = 0.0
    for label in _labels_union(y_true, y_pred):
        t, p = y_true == label, y_pred == label
        tp = float(np.sum(t & p))
        denom = 2 * tp + float(np.sum(~t & p)) + float(np.sum(t & ~p))
        f1 = 2 * tp / denom if denom > 0 else 0.0
        total += f1 * float(np.sum(t))
    return total / y_true.size


def matthews_corrcoef(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """`sklearn.metrics.matthews_corrcoef` (multiclass form; 0 when a marginal is constant)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    labels = _labels_union(y_true, y_pred)
    index = {int(v): i for i, v in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.float64)
    for a, b in zip(y_true.tolist(), y_pred.tolist()):
        cm[index[int(a)], index[int(b)]] += 1
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, s = float(np.trace(cm)), float(cm.sum())
    cov_ytyp = correct * s - float(t_sum @ p_sum)
    cov_ypyp = s * s - float(p_sum @ p_sum)
    cov_ytyt = s * s - float(t_sum @ t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp)


def score_predictions(labels: Sequence[int], preds: Sequence[int],
                      preds_new: Sequence[int]) -> dict:
    """The counts and metrics of one task (generation `preds`, likelihood `preds_new`)."""
    labels, preds, preds_new = (np.asarray(x, np.int64) for x in (labels, preds, preds_new))
    correct = int(np.sum(preds == labels))
    invalid = int(np.sum(preds == -1))
    return {
        "f1": float(f1_weighted(labels, preds)),
        "f1_new": float(f1_weighted(labels, preds_new)),
        "mcc": float(matthews_corrcoef(labels, preds)),
        "correct": correct,
        "correct_new": int(np.sum(preds_new == labels)),
        "incorrect": int(len(labels) - correct - invalid),
        "invalid": invalid,
        "total": len(labels),
    }
