"""The sequential editor's data: its state, the journal entries rollback replays, batch reports.

`jaxedit.editor` creates and consumes these (and re-exports them: `editor.EditState`, ...); they
hold arrays and records only, no editing logic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One applied batch: the kernel increments as added, the previous-edit cache increments, and
    PRUNE's restrained update, when it ran, with the kernel it was added to: "current" (after
    `deltas`), "previous" (before them) or "original" (the unedited W0)."""

    case_ids: tuple
    deltas: dict[int, Array]  # layer -> dW [f, d], as added to the kernel
    kkt: dict[int, Array]  # layer -> K Kᵀ added to prev_kkt (empty for methods without the cache)
    prune: dict[int, Array] = dataclasses.field(default_factory=dict)  # layer -> Δ' [f, d]
    prune_onto: str = ""


@dataclasses.dataclass(frozen=True)
class EditState:
    """Everything that changes across sequential batches.

    Attributes:
      params: the current (edited) `nnx.State`.
      prev_kkt: layer -> Σ K Kᵀ of all batches applied so far (methods with a previous-edit cache).
      num_edits: requests applied so far.
      journal: the last batches, newest last (at most `max_journal`).
      base_kernels / base_kkt: the rewrite kernels and caches before the oldest journal entry.
    """

    params: Any
    prev_kkt: dict[int, Array]
    num_edits: int
    journal: tuple[JournalEntry, ...]
    base_kernels: dict[int, Array]
    base_kkt: dict[int, Array]


@dataclasses.dataclass
class BatchReport:
    """What one batch did (host numpy arrays and floats)."""

    case_ids: list
    targets: np.ndarray  # z [n, d]
    target_init: np.ndarray  # h0 [n, d]
    stop_steps: np.ndarray  # Adam steps per request
    target_prob: np.ndarray  # mean target probability at the stop
    history: dict[str, np.ndarray]  # [num_steps, n]
    keys: dict[int, np.ndarray]  # layer -> K [f, n]
    deltas: dict[int, np.ndarray]  # layer -> dW [f, d]
    delta_norm: dict[int, float]  # ‖dW_l‖_F
    weight_norm: dict[int, float]  # ‖W_l‖_F after the batch
    search_time: float  # seconds, LTI's teacher pass included
    update_time: float
    prompts: list[dict]
    teacher_time: float = 0.0  # seconds of LTI's teacher pass (part of search_time; 0 without)
    regularizer: dict = dataclasses.field(default_factory=dict)  # RECT / PRUNE records (JSON)

    def summary(self) -> dict:
        extra: dict[str, Any] = {"regularizer": self.regularizer} if self.regularizer else {}
        if self.teacher_time:
            extra["teacher_time_s"] = self.teacher_time
        return {
            **extra,
            "case_ids": [c if isinstance(c, (int, str)) else str(c) for c in self.case_ids],
            "search_time_s": self.search_time,
            "update_time_s": self.update_time,
            "stop_steps": self.stop_steps.tolist(),
            "target_prob": [round(float(p), 6) for p in self.target_prob],
            "delta_norm": {str(k): v for k, v in self.delta_norm.items()},
            "weight_norm": {str(k): v for k, v in self.weight_norm.items()},
        }
