"""Reading the downstream data (reference §7) from a folder the caller names: the `{task}.json` item
lists, their split into few-shot pool and tests, and the full MMLU CSVs.

Data: `{task}.json` lists of dicts; items [0:10] are the few-shot pool (the first k are used) and
the tests are items [10 : 10 + num_tests].

Full MMLU (`mmlu_source=<dir>` holding `dev/` and `test/` CSVs: question,A,B,C,D,answer, no header):
each test question gets the first k questions of its subject's dev file as few-shots, in the
reference prompt format (no subject header). `num_tests` counts questions in total, drawn
round-robin over the subjects in sorted order (question 0 of every subject, then question 1, ...),
so a small budget still covers all 57 subjects; `num_tests=None` takes every test question
(14,079 in the shared copy).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from jaxedit.errors import InputError, MissingFileError
from jaxedit.files import read_json

FEW_SHOT_POOL = 10  # items [0:10] are the few-shot pool, tests start at item 10


def load_items(task: str, data_dir: str | os.PathLike) -> list[dict]:
    """The items of `{data_dir}/{task}.json`."""
    path = Path(data_dir) / f"{task}.json"
    if not path.exists():
        raise MissingFileError(
            f"{path}: downstream data for task {task!r} not found (fix: pass the folder holding "
            f"{task}.json, or drop the task)"
        )
    items = read_json(path, f"downstream data of task {task!r}", "restore the file")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise InputError(f"{path}: expected a non-empty JSON list of objects")
    return items


def split_items(
    items: Sequence[dict], num_few_shots: int, num_tests: int | None, at_most: bool = False
):
    """(few-shots, tests): items[:num_few_shots] of the pool and items[10 : 10 + num_tests].

    `at_most`: `num_tests` is an upper bound (a task with fewer test items uses all of them)."""
    if not 0 <= num_few_shots <= FEW_SHOT_POOL:
        raise InputError(
            f"num_few_shots={num_few_shots}: the few-shot pool has {FEW_SHOT_POOL} items"
        )
    available = len(items) - FEW_SHOT_POOL
    if num_tests is None:
        num_tests = available
    if at_most and available > 0:
        num_tests = min(num_tests, available)
    if not 0 < num_tests <= available:
        raise InputError(
            f"num_tests={num_tests}: this task has {available} test items (fix: ask for 1.."
            f"{available})"
        )
    return list(items[:num_few_shots]), list(items[FEW_SHOT_POOL : FEW_SHOT_POOL + num_tests])


def _read_mmlu_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    bad = [i for i, r in enumerate(rows) if len(r) != 6]
    if bad:
        raise InputError(f"{path}: row {bad[0]} does not have 6 columns (question,A,B,C,D,answer)")
    return [
        {"question": r[0], "choices": r[1:5], "answer": r[5], "subject": path.stem} for r in rows
    ]


def load_full_mmlu(
    mmlu_dir: str | os.PathLike, num_few_shots: int, num_tests: int | None, at_most: bool = False
):
    """(few-shots per test, tests) from the full MMLU CSVs: dev/<subject>_dev.csv gives each
    subject's few-shots, tests are taken round-robin over the sorted subjects of test/ (see the
    module docstring)."""
    root = Path(mmlu_dir)
    test_files = sorted((root / "test").glob("*_test.csv"))
    if not test_files:
        raise MissingFileError(
            f"{root}/test: no *_test.csv files (fix: pass a folder in the MMLU CSV layout)"
        )
    per_subject = []
    for f in test_files:
        subject = f.name[: -len("_test.csv")]
        dev = root / "dev" / f"{subject}_dev.csv"
        shots = _read_mmlu_csv(dev)[:num_few_shots] if num_few_shots else []
        if len(shots) < num_few_shots:
            raise InputError(f"{dev}: fewer than {num_few_shots} dev questions")
        per_subject.append((shots, _read_mmlu_csv(f)))
    total = sum(len(t) for _, t in per_subject)
    num_tests = total if num_tests is None else (min(num_tests, total) if at_most else num_tests)
    if not 0 < num_tests <= total:
        raise InputError(f"num_tests={num_tests}: full MMLU has {total} test questions")
    shots_out: list[list[dict]] = []
    tests_out: list[dict] = []
    for j in range(max(len(t) for _, t in per_subject)):
        for shots, tests in per_subject:
            if j < len(tests) and len(tests_out) < num_tests:
                shots_out.append(shots)
                tests_out.append(tests[j])
    return shots_out, tests_out


def check_data(
    tasks: Sequence[str],
    data_dir: str | os.PathLike,
    *,
    num_tests: int | None,
    num_few_shots: int,
    mmlu_source: str | os.PathLike = "fewshot",
    at_most_tests: bool = False,
) -> None:
    """Raises the `InputError` that evaluating `tasks` (registry names, see `resolve_tasks`) would
    raise on its data — a missing or malformed file, too few items — without a model, so that a
    program can refuse bad data before any long work."""
    for task in tasks:
        if task == "mmlu" and str(mmlu_source) != "fewshot":
            load_full_mmlu(mmlu_source, num_few_shots, num_tests, at_most_tests)
            continue
        items = load_items(task, data_dir)
        try:
            split_items(items, num_few_shots, num_tests, at_most_tests)
        except InputError as err:
            raise InputError(f"downstream task {task!r} ({data_dir}): {err}") from None
