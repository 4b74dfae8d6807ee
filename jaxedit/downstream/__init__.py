"""Downstream few-shot evaluation (reference §7): SST-2, MRPC, CoLA, RTE, NLI, MMLU,
SentimentAnalysis and Dialogue, scored by greedy generation (`f1`, `mcc`) and by answer likelihood
(`f1_new`).

    from jaxedit import downstream
    res = downstream.evaluate_downstream(model, "sst2,mrpc", "../shared/data/downstream")
    res["sst2"]  # {"f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", ...}

The data folder always comes from the caller; the library knows no default location.

Modules:
  tasks     the task registry (`Task`, `TASKS`), prompt texts, labels, parse rules, the quirk modes.
  data      reading `{task}.json` items and the full MMLU CSVs; the few-shot / test split.
  prompts   few-shot prompt building and dropping to fit the context.
  scoring   weighted F1, Matthews correlation, one task's counts (pure numerics).
  evaluate  the prediction passes over the model, `predict`, `evaluate_task`,
            `evaluate_downstream`.
"""

from jaxedit.downstream.data import (
    FEW_SHOT_POOL,
    check_data,
    load_full_mmlu,
    load_items,
    split_items,
)
from jaxedit.downstream.evaluate import evaluate_downstream, evaluate_task, predict
from jaxedit.downstream.prompts import Prompt, build_prompts
from jaxedit.downstream.scoring import (
    RESULT_KEYS,
    f1_weighted,
    matthews_corrcoef,
    score_predictions,
)
from jaxedit.downstream.tasks import (
    DEFAULT_GEN_LEN,
    DEFAULT_TASKS,
    QUIRKS,
    REFERENCE_KEYS,
    TASK_NAMES,
    TASKS,
    Task,
    resolve_tasks,
)

__all__ = [
    "DEFAULT_GEN_LEN",
    "DEFAULT_TASKS",
    "FEW_SHOT_POOL",
    "QUIRKS",
    "REFERENCE_KEYS",
    "RESULT_KEYS",
    "TASKS",
    "TASK_NAMES",
    "Prompt",
    "Task",
    "build_prompts",
    "check_data",
    "evaluate_downstream",
    "evaluate_task",
    "f1_weighted",
    "load_full_mmlu",
    "load_items",
    "matthews_corrcoef",
    "predict",
    "resolve_tasks",
    "score_predictions",
    "split_items",
]
