"""Downstream few-shot evaluation (SPEC §7): SST-2, MRPC, CoLA, RTE, NLI, MMLU, SentimentAnalysis
and Dialogue, scored by greedy generation (`f1`, `mcc`) and by answer likelihood (`f1_new`).

    from jaxedit import downstream
    res = downstream.evaluate_downstream(model, "sst2,mrpc", "../shared/data/downstream")
    res["sst2"]  # {"f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", ...}

Data: `{task}.json` lists of dicts; items [0:10] are the few-shot pool (the first k are used) and
the tests are items [10 : 10 + num_tests]. A prompt is the concatenated few-shot strings followed by
the test question, which ends at the answer cue ("Answer:", "Sentiment :", ...). Few-shots are
dropped from the end when the prompt would not fit the model's context (`max_position_embeddings`
unless `max_context` is given).

Two predictions per test:

* Generation: `gen_len` (default 3; AlphaEdit used 5) greedy tokens after the prompt, parsed into a
  class index or -1 (invalid). `f1` is the weighted F1 of these (invalid counts as an error), `mcc`
  their Matthews correlation; `correct` / `incorrect` / `invalid` count them.
* Likelihood: each answer word is scored as f"{prompt} {word}" by the mean NLL of the word's tokens
  (`metrics.answer_nll`), the most likely word wins (binary tasks: ties go to class 0; MMLU and
  Dialogue: -1 unless one option is strictly the most likely). `f1_new` and `correct_new` use these.

Class indices are the positions in `Task.words`: 1 = Yes / positive / True for the binary tasks,
A..D = 0..3. The reference writes the MMLU result under the JSON key "mmmlu" (three m's); this
module uses "mmlu" (`REFERENCE_KEYS` records the mapping for readers of reference files).

Quirks (`quirks=`): "clean" (default) or "reference". "reference" reproduces the reference code
(`glue_eval/*_eval.py`) exactly; "clean" fixes what looks accidental there:

1. CoLA: the reference question ends in "Answer: " (trailing space) although its few-shots read
   "Answer: Yes"; the likelihood string is then "Answer:  Yes" (two spaces) and generation starts
   after a space token. Clean: the question ends in "Answer:".
2. SST-2: the reference question is "Review :{sentence}" (no space) while its few-shots read
   "Review : {sentence}". Clean: "Review : {sentence}".
3. RTE: the reference answers "True" for GLUE label 1, which is *not_entailment* (inverted
   semantics, also in its few-shots). Clean: "True" = entailment (GLUE label 0). Either way, class
   1 is "True".
4. Parse of the binary tasks: the reference splits the generated text on the answer cue and tests
   substrings in a fixed per-task order (Yes before No; RTE False before True; NLI True before
   False; positive before negative), so "no" also matches "not", "know", "nothing", and the order,
   not the text, decides when both words occur. Clean: the earliest whole-word, case-insensitive
   occurrence of an answer word in the continuation.
5. Parse of MMLU and Dialogue: the reference looks for the substrings 'a\\n', 'b\\n', 'c\\n', 'd\\n'
   in the lower-cased continuation (so "...data\\n" reads as A and " B" without a newline inside
   gen_len tokens is invalid). Clean: the first standalone capital letter A-D in the continuation.
6. Few-shot dropping: the reference budgets the context with the question and each few-shot
   tokenized separately, minus gen_len, and stops at the first few-shot that does not fit (Dialogue:
   as soon as fewer than 5 tokens would remain). Clean: the largest n <= k for which the tokenized
   prompt itself plus gen_len fits the context.

The same in both modes: the likelihood reads the word's tokens from the tokenized f"{prompt} {word}"
(the reference tokenizes " {word}" on its own, with a [2:] cut for Llama-2; the ids agree whenever
the word is one token, as for SmolLM2 and GPT-2 here); the reference's parse of "decode(prompt +
generation)" is computed as prompt + decoded continuation (equal for byte-level BPE tokenizers).

Kept in both modes (consistent between few-shots and question, so not treated as bugs): Dialogue's
"(A){option}" without a space, SentimentAnalysis' "text,label ... negative.The" instruction, NLI's
"{s1} entails the {s2}" wording.

Full MMLU (`mmlu_source=<dir>` holding `dev/` and `test/` CSVs: question,A,B,C,D,answer, no header):
each test question gets the first k questions of its subject's dev file as few-shots, in the
reference prompt format (no subject header). `num_tests` counts questions in total, drawn
round-robin over the subjects in sorted order (question 0 of every subject, then question 1, ...),
so a small budget still covers all 57 subjects; `num_tests=None` takes every test question
(14,079 in the shared copy).

Speed. Generation and the likelihood of single-token answer words come from one jitted pass per
batch: the few-shot context that all prompts of a task share is run once and its attention
keys/values are reused (the model's window mode), so each test only computes its own question
tokens, then decodes the remaining gen_len - 1 tokens over that KV cache. The first decoding step's
logits give the likelihood of every answer word that is exactly one token after the prompt (true for
SmolLM2 and GPT-2 on all tasks); other words go through `metrics.answer_nll`. `fast=False` uses
`LanguageModel.generate` and `metrics.answer_nll` for everything (the plain path, used to check the
fast one). Batches are sorted by question length; the prefill compiles once per (rows, buffer
length, window bucket of 16) and the decoding loop once per (rows, buffer length), and the
parameters are arguments, so later evaluations of an edited model reuse every compiled shape.
SmolLM2-135M, 8 tasks x 100 tests, 4 shots, on a busy 2-core CPU: about 7.5 min for the first
evaluation in a process (roughly half of it compilation), about 4 min for each later one; peak
memory about 3 GB above the model (freed heap pages are handed back to the OS after each batch).
"""

from __future__ import annotations

import ast
import csv
import ctypes
import dataclasses
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit import metrics
from jaxedit.models import Probe
from jaxedit.models.layers import merge_cache

log = logging.getLogger(__name__)

QUIRKS = ("clean", "reference")
FEW_SHOT_POOL = 10  # items [0:10] are the few-shot pool, tests start at item 10
DEFAULT_GEN_LEN = 3
REFERENCE_KEYS = {"mmlu": "mmmlu"}  # the reference's JSON key for MMLU (informational only)

RESULT_KEYS = ("f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", "total",
               "num_few_shots", "gen_len", "quirks")


# --------------------------------------------------------------------------------------------------
# metrics (sklearn semantics, no sklearn)


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
        "total": int(len(labels)),
    }


# --------------------------------------------------------------------------------------------------
# tasks


def _as_list(value) -> list:
    """A list field that may be stored as a JSON or Python-literal string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = ast.literal_eval(value)
    return list(value)


def _letter_index(value) -> int:
    """MMLU/Dialogue answers: 0..3 (int or digit string) or a letter A..D."""
    if isinstance(value, str):
        v = value.strip()
        if v.upper() in ("A", "B", "C", "D"):
            return "ABCD".index(v.upper())
        value = int(v)
    value = int(value)
    if not 0 <= value < 4:
        raise ValueError(f"answer {value!r} is not in 0..3 / A..D")
    return value


def _binary(value) -> int:
    v = int(value)
    if v not in (0, 1):
        raise ValueError(f"binary label {value!r} is not 0/1")
    return v


def _rte_label(item: dict, quirks: str) -> int:
    glue = _binary(item["label"])  # GLUE: 0 = entailment, 1 = not_entailment
    return glue if quirks == "reference" else 1 - glue  # class 1 = "True"


def _choices_block(choices, sep: str) -> str:
    c = _as_list(choices)
    if len(c) != 4:
        raise ValueError(f"expected 4 choices, got {len(c)}")
    return "".join(f"({letter}){sep}{text}\n" for letter, text in zip("ABCD", c))


_SENTIMENT_PREFIX = ("For each snippet of text,label the sentiment of the text as positive or "
                     "negative.The answer should be exact 'positive' or 'negative'. text:")


@dataclasses.dataclass(frozen=True)
class Task:
    """One downstream task.

    Attributes:
      name: registry name (also the data file stem).
      words: the answer words; a class index is a position in this tuple.
      stem: item -> the clean question, ending at the answer cue (a few-shot is
        stem + " " + word + terminator).
      label: (item, quirks) -> class index.
      cue: the reference splits the generated text on this and parses the last piece (None: it
        parses the continuation as is).
      reference_order: the reference's (lower-case substring, class) checks, in order.
      terminator: what ends a few-shot after its answer word.
      reference_question: (item) -> the reference's question where it differs from `stem`.
      drop_margin: reference few-shot dropping stops when fewer than this many tokens would remain.
    """

    name: str
    words: tuple[str, ...]
    stem: Callable[[dict], str]
    label: Callable[[dict, str], int]
    cue: str | None
    reference_order: tuple[tuple[str, int], ...]
    terminator: str = "\n"
    reference_question: Callable[[dict], str] | None = None
    drop_margin: int = 0

    def question(self, item: dict, quirks: str = "clean") -> str:
        _check_quirks(quirks)
        if quirks == "reference" and self.reference_question is not None:
            return self.reference_question(item)
        return self.stem(item)

    def few_shot(self, item: dict, quirks: str = "clean") -> str:
        _check_quirks(quirks)
        return f"{self.stem(item)} {self.words[self.label(item, quirks)]}{self.terminator}"

    @property
    def multiple_choice(self) -> bool:
        return len(self.words) > 2

    def parse(self, continuation: str, quirks: str = "clean", prompt: str = "") -> int:
        """Class index read from a generated continuation, or -1 (invalid)."""
        _check_quirks(quirks)
        if quirks == "reference":
            if self.cue is None:
                text = continuation.lower()
            else:  # the reference parses the decoded prompt + continuation
                text = (prompt + continuation).split(self.cue)[-1].strip().lower()
            for sub, cls in self.reference_order:
                if sub in text:
                    return cls
            return -1
        # the earliest whole-word answer word; letters (multiple choice) must be capitals
        alternatives = "|".join(re.escape(w) for w in self.words)
        flags = 0 if self.multiple_choice else re.IGNORECASE
        m = re.search(rf"\b({alternatives})\b", continuation, flags=flags)
        if not m:
            return -1
        return [w.lower() for w in self.words].index(m.group(1).lower())

    def likelihood_choice(self, nll: Sequence[float]) -> int:
        """The class whose word has the lowest mean NLL (reference tie rules)."""
        nll = np.asarray(nll, np.float64)
        if not self.multiple_choice:
            return 1 if nll[1] < nll[0] else 0
        best = int(np.argmin(nll))
        return best if int(np.sum(nll == nll[best])) == 1 else -1


def _yes_no(stem, cue="Answer:", reference_question=None) -> dict:
    return dict(words=("No", "Yes"), stem=stem, label=lambda it, q: _binary(it["label"]), cue=cue,
                reference_order=(("yes", 1), ("no", 0)), reference_question=reference_question)


_LETTERS = (("a\n", 0), ("b\n", 1), ("c\n", 2), ("d\n", 3))

TASKS: dict[str, Task] = {
    "sst2": Task(
        name="sst2", words=("negative", "positive"),
        stem=lambda it: f"Review : {it['sentence']}\nSentiment :",
        reference_question=lambda it: f"Review :{it['sentence']}\nSentiment :",
        label=lambda it, q: _binary(it["label"]), cue="Sentiment :",
        reference_order=(("positive", 1), ("negative", 0))),
    "mrpc": Task(name="mrpc", **_yes_no(
        lambda it: ("Are the sentences paraphrases of each other.\n"
                    f"Sentence 1: {it['sentence1']}\nSentence 2: {it['sentence2']}\nAnswer:"))),
    "cola": Task(name="cola", **_yes_no(
        lambda it: ("Is this sentence linguistically acceptable?\n"
                    f"Sentence: {it['sentence']}\nAnswer:"),
        reference_question=lambda it: ("Is this sentence linguistically acceptable?\n"
                                       f"Sentence: {it['sentence']}\nAnswer: "))),
    "rte": Task(
        name="rte", words=("False", "True"),
        stem=lambda it: f"{it['sentence1']}\nquestion: {it['sentence2']} True or False?\nanswer:",
        label=_rte_label, cue="answer:", reference_order=(("false", 0), ("true", 1))),
    "nli": Task(
        name="nli", words=("False", "True"),
        stem=lambda it: f"{it['sentence1']} entails the {it['sentence2']} True or False? Answer:",
        label=lambda it, q: 1 if it["label"] == "entailment" else 0, cue="True or False? Answer:",
        reference_order=(("true", 1), ("false", 0))),
    "mmlu": Task(
        name="mmlu", words=("A", "B", "C", "D"),
        stem=lambda it: f"Question: {it['question']}\n{_choices_block(it['choices'], ' ')}Answer:",
        label=lambda it, q: _letter_index(it["answer"]), cue=None, reference_order=_LETTERS),
    "sentiment_analysis": Task(
        name="sentiment_analysis", words=("negative", "positive"),
        stem=lambda it: f"{_SENTIMENT_PREFIX} {it['sentence']} answer:",
        label=lambda it, q: _binary(it["label"]), cue="answer:",
        reference_order=(("positive", 1), ("negative", 0))),
    "dialogue": Task(
        name="dialogue", words=("A", "B", "C", "D"),
        stem=lambda it: (f"Q: Given the following: {it['article']}\nWhich choice is correct?\n"
                         f"{_choices_block(it['options'], '')}Answer:"),
        label=lambda it, q: _letter_index(it["answers"]), cue=None, reference_order=_LETTERS,
        terminator="\n\n", drop_margin=5),
}
TASK_NAMES = tuple(TASKS)
DEFAULT_TASKS = ("nli", "sst2", "mmlu", "mrpc", "cola", "rte")  # the reference's default selection
_ALIASES = {"mmmlu": "mmlu", "sst": "sst2", "sentiment": "sentiment_analysis"}


def _check_quirks(quirks: str) -> None:
    if quirks not in QUIRKS:
        raise ValueError(f"quirks={quirks!r}: expected one of {QUIRKS}")


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from a comma-separated string or a list. A name may also be a unique substring of
    a registry name ("sst" -> sst2, "sentiment" -> sentiment_analysis), as the reference's substring
    flags allow; "mmmlu" is accepted for mmlu. Order kept, duplicates dropped."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    out = []
    for raw in tasks:
        t = raw.strip().lower()
        if not t:
            continue
        if t in TASKS:
            name = t
        elif t in _ALIASES:
            name = _ALIASES[t]
        else:
            hits = [n for n in TASK_NAMES if t in n]
            if len(hits) != 1:
                why = "is ambiguous between " + ", ".join(hits) if hits else "is not a known task"
                raise ValueError(f"downstream task {raw!r} {why}; "
                                 f"valid names: {', '.join(TASK_NAMES)}")
            name = hits[0]
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no downstream task given; valid names: {', '.join(TASK_NAMES)}")
    return out


# --------------------------------------------------------------------------------------------------
# data


def default_data_dir() -> Path:
    """$JAXEDIT_DATA/downstream, else ../shared/data/downstream beside the checkout."""
    env = os.environ.get("JAXEDIT_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / "downstream"


def load_items(task: str, data_dir: str | os.PathLike) -> list[dict]:
    path = Path(data_dir) / f"{task}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: downstream data for task {task!r} not found")
    items = json.loads(path.read_text())
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise ValueError(f"{path}: expected a non-empty JSON list of objects")
    return items


def split_items(items: Sequence[dict], num_few_shots: int, num_tests: int | None):
    """(few-shots, tests): items[:num_few_shots] of the pool and items[10 : 10 + num_tests]."""
    if not 0 <= num_few_shots <= FEW_SHOT_POOL:
        raise ValueError(f"num_few_shots={num_few_shots}: the few-shot pool has "
                         f"{FEW_SHOT_POOL} items")
    available = len(items) - FEW_SHOT_POOL
    if num_tests is None:
        num_tests = available
    if not 0 < num_tests <= available:
        raise ValueError(f"num_tests={num_tests}: this task has {available} test items")
    return list(items[:num_few_shots]), list(items[FEW_SHOT_POOL : FEW_SHOT_POOL + num_tests])


def _read_mmlu_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    bad = [i for i, r in enumerate(rows) if len(r) != 6]
    if bad:
        raise ValueError(f"{path}: row {bad[0]} does not have 6 columns (question,A,B,C,D,answer)")
    return [{"question": r[0], "choices": r[1:5], "answer": r[5], "subject": path.stem}
            for r in rows]


def load_full_mmlu(mmlu_dir: str | os.PathLike, num_few_shots: int, num_tests: int | None):
    """(few-shots per test, tests) from the full MMLU CSVs: dev/<subject>_dev.csv gives each
    subject's few-shots, tests are taken round-robin over the sorted subjects of test/ (see the
    module docstring)."""
    root = Path(mmlu_dir)
    test_files = sorted((root / "test").glob("*_test.csv"))
    if not test_files:
        raise FileNotFoundError(f"{root}/test: no *_test.csv files (expected the MMLU CSV layout)")
    per_subject = []
    for f in test_files:
        subject = f.name[: -len("_test.csv")]
        dev = root / "dev" / f"{subject}_dev.csv"
        shots = _read_mmlu_csv(dev)[:num_few_shots] if num_few_shots else []
        if len(shots) < num_few_shots:
            raise ValueError(f"{dev}: fewer than {num_few_shots} dev questions")
        per_subject.append((shots, _read_mmlu_csv(f)))
    total = sum(len(t) for _, t in per_subject)
    num_tests = total if num_tests is None else num_tests
    if not 0 < num_tests <= total:
        raise ValueError(f"num_tests={num_tests}: full MMLU has {total} test questions")
    shots_out, tests_out = [], []
    for j in range(max(len(t) for _, t in per_subject)):
        for shots, tests in per_subject:
            if j < len(tests) and len(tests_out) < num_tests:
                shots_out.append(shots)
                tests_out.append(tests[j])
    return shots_out, tests_out


# --------------------------------------------------------------------------------------------------
# prompts


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with the tokenizer's own special-token convention (as `LanguageModel.encode`)."""
    if not texts:
        return []
    out = tokenizer(list(texts))["input_ids"]
    if len(out) != len(texts) or (out and not isinstance(out[0], (list, tuple))):
        out = [tokenizer(t)["input_ids"] for t in texts]
    return [list(x) for x in out]


@dataclasses.dataclass
class Prompt:
    text: str  # the full prompt: context + question
    context: str  # the few-shot part
    question: str
    label: int
    num_shots: int  # few-shots kept
    ids: list[int] | None = None  # token ids of `text` (when computed)


def build_prompts(
    task: Task,
    few_shots: Sequence[dict] | Sequence[Sequence[dict]],
    tests: Sequence[dict],
    *,
    quirks: str = "clean",
    tokenizer=None,
    max_context: int | None = None,
    gen_len: int = DEFAULT_GEN_LEN,
) -> list[Prompt]:
    """Prompts (few-shots + question) for `tests`.

    `few_shots` is one list for all tests, or one list per test (full MMLU). With a tokenizer and
    `max_context`, few-shots are dropped from the end so that the prompt fits (module docstring,
    quirk 6); without them all few-shots are kept.
    """
    _check_quirks(quirks)
    per_test = bool(few_shots) and not isinstance(few_shots[0], dict)
    shot_lists = list(few_shots) if per_test else [list(few_shots)] * len(tests)
    if len(shot_lists) != len(tests):
        raise ValueError(f"{len(shot_lists)} few-shot lists for {len(tests)} tests")
    questions = [task.question(it, quirks) for it in tests]
    labels = [task.label(it, quirks) for it in tests]
    shot_cache: dict[int, list[str]] = {}

    def shot_strings(shots):
        key = id(shots)
        if key not in shot_cache:
            shot_cache[key] = [task.few_shot(s, quirks) for s in shots]
        return shot_cache[key]

    if tokenizer is None or max_context is None:
        out = []
        for shots, q, y in zip(shot_lists, questions, labels):
            ctx = "".join(shot_strings(shots))
            out.append(Prompt(ctx + q, ctx, q, y, len(shots)))
        return out

    if quirks == "reference":
        q_lens = [len(x) for x in _token_ids(tokenizer, questions)]
        shot_lens: dict[int, list[int]] = {}
        out = []
        for shots, q, y, q_len in zip(shot_lists, questions, labels, q_lens):
            strings = shot_strings(shots)
            if id(shots) not in shot_lens:
                shot_lens[id(shots)] = [len(x) for x in _token_ids(tokenizer, strings)]
            remaining = max_context - q_len - gen_len
            n = 0
            for length in shot_lens[id(shots)]:
                remaining -= length
                if remaining < task.drop_margin:
                    break
                n += 1
            ctx = "".join(strings[:n])
            out.append(Prompt(ctx + q, ctx, q, y, n))
        ids = _token_ids(tokenizer, [p.text for p in out])
        for p, i in zip(out, ids):
            p.ids = i
        return out

    # clean: the largest n whose tokenized prompt + gen_len fits
    out = [None] * len(tests)
    pending = list(range(len(tests)))
    n_shots = {j: len(shot_lists[j]) for j in pending}
    while pending:
        texts = []
        for j in pending:
            ctx = "".join(shot_strings(shot_lists[j])[: n_shots[j]])
            texts.append((ctx, ctx + questions[j]))
        ids = _token_ids(tokenizer, [t for _, t in texts])
        still = []
        for j, (ctx, text), i in zip(pending, texts, ids):
            if len(i) + gen_len <= max_context or n_shots[j] == 0:
                out[j] = Prompt(text, ctx, questions[j], labels[j], n_shots[j], i)
            else:
                n_shots[j] -= 1
                still.append(j)
        pending = still
    return out


# --------------------------------------------------------------------------------------------------
# model passes


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@functools.partial(jax.jit, static_argnums=0)
def _context_kv(graphdef, params, ids):
    """Attention keys/values of every layer for `ids` `[n, c]` (no logits)."""
    model = nnx.merge(graphdef, params)
    n = model.num_layers
    return model(ids, None, Probe(kv_layers=tuple(range(n)), stop_layer=n - 1)).kv


@functools.partial(jax.jit, static_argnums=(0, 7))
def _prefill(graphdef, params, ids, lengths, start, ctx_kv, cand, window):
    """One window pass over each prompt's own tokens on top of a cached context.

    Args:
      ids: `[b, t]` prompt tokens, right-padded; positions < start[b] hold the context's tokens.
      lengths: `[b]` prompt lengths; start: `[b]` first position computed (start + window <= t).
      ctx_kv: {layer: (k, v)} of the context, `[1, c, ...]` (shared) or `[b, c, ...]`.
      cand: `[b, n]` token ids whose log-probabilities after the prompt are returned.
      window: static number of positions computed from `start`.
    Returns:
      `[b, n]` log-probabilities of `cand`, `[b]` greedy next tokens, and the full-length K/V cache
      {layer: (k, v)} `[b, t, ...]` of the prompts.
    """
    model = nnx.merge(graphdef, params)
    b, t = ids.shape
    layers = tuple(range(model.num_layers))
    cache = {}
    for i in layers:
        pair = []
        for x in ctx_kv[i]:
            c = min(x.shape[1], t)
            full = jnp.zeros((b, t) + x.shape[2:], x.dtype)
            pair.append(full.at[:, :c].set(jnp.broadcast_to(x[:, :c], (b, c) + x.shape[2:])))
        cache[i] = tuple(pair)
    mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    qpos = start[:, None] + jnp.arange(window, dtype=jnp.int32)[None, :]
    out = model(ids, mask, Probe(window_start=start, window_size=window, kv_cache=cache,
                                 kv_layers=layers, logits_index=(lengths - 1 - start)[:, None]))
    cache = {i: tuple(merge_cache(c, n, qpos) for c, n in zip(cache[i], out.kv[i])) for i in layers}
    logits = out.logits[:, 0]
    cand_logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), cand, axis=-1)
    return cand_logp, jnp.argmax(logits, axis=-1).astype(ids.dtype), cache


@functools.partial(jax.jit, static_argnums=(0, 7))
def _decode_steps(graphdef, params, ids, lengths, cache, first, eos_id, gen_len):
    """Greedy decoding over the prompts' K/V cache (from `_prefill`): `[b, gen_len]` tokens starting
    with `first`, eos after the first eos or once the buffer `[b, t]` is full. Compiled per (b, t),
    not per prefill window."""
    model = nnx.merge(graphdef, params)
    b, t = ids.shape
    layers = tuple(range(model.num_layers))
    rows = jnp.arange(b)
    mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    toks = jnp.full((b, gen_len), eos_id, ids.dtype).at[:, 0].set(first)

    def step(s, carry):
        ids, mask, cache, toks, done = carry
        pos = lengths + s - 1  # where the token produced at step s - 1 goes
        valid = pos < t
        p = jnp.minimum(pos, t - 1)
        ids = ids.at[rows, p].set(jnp.where(valid, toks[:, s - 1], ids[rows, p]))
        mask = mask.at[rows, p].set(jnp.where(valid, 1, mask[rows, p]))
        out = model(ids, mask, Probe(window_start=p, window_size=1, kv_cache=cache,
                                     kv_layers=layers, logits_index=jnp.zeros((b, 1), jnp.int32)))
        cache = {i: tuple(merge_cache(c, n, p[:, None]) for c, n in zip(cache[i], out.kv[i]))
                 for i in layers}
        nxt = jnp.argmax(out.logits[:, 0], axis=-1).astype(ids.dtype)
        stop = done | ~valid
        nxt = jnp.where(stop, eos_id, nxt)
        toks = toks.at[:, s].set(nxt)
        return ids, mask, cache, toks, stop | (nxt == eos_id)

    _, _, _, toks, _ = jax.lax.fori_loop(1, gen_len, step,
                                         (ids, mask, cache, toks, first == eos_id))
    return toks


def _release_host_memory() -> None:
    """Hands freed heap pages back to the OS. glibc keeps them otherwise, and the K/V caches of long
    prompts (hundreds of MB per batch) then leave the process several GB larger after each task.
    A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _decode_new(model, toks: Sequence[int]) -> str:
    toks = list(toks)
    if model.eos_id in toks:
        toks = toks[: toks.index(model.eos_id)]
    return model.tokenizer.decode([t for t in toks if t >= 0], skip_special_tokens=True)


def _fast_pass(model, prompts: Sequence[Prompt], cand: np.ndarray, gen_len: int, batch_size: int,
               max_context: int, min_share: int = 2):
    """Continuations and candidate log-probs for all prompts, sharing each few-shot context's K/V.

    Prompts whose context is shared by fewer than `min_share` prompts run without a cached context
    (their window covers the whole prompt)."""
    tok = model.tokenizer
    n = len(prompts)
    groups: dict[str, list[int]] = {}
    for j, p in enumerate(prompts):
        groups.setdefault(p.context if p.context else "", []).append(j)
    solo = [j for ctx, js in groups.items() if len(js) < min_share or not ctx for j in js]
    shared = {ctx: js for ctx, js in groups.items() if len(js) >= min_share and ctx}
    plan = [(ctx, js) for ctx, js in shared.items()] + ([("", solo)] if solo else [])
    cand_logp = np.zeros(cand.shape, np.float64)
    continuations = [""] * n
    eos = jnp.int32(model.eos_id)
    for ctx, js in plan:
        if ctx:
            ctx_ids = _token_ids(tok, [ctx])[0]
        else:
            ctx_ids = [model.pad_id]  # a dummy context: every row starts at 0
        c_pad = min(_bucket(len(ctx_ids), 64), max_context)
        ctx_ids = ctx_ids[:c_pad]
        buf = np.full((1, c_pad), model.pad_id, np.int32)
        buf[0, : len(ctx_ids)] = ctx_ids
        kv = _context_kv(model.graphdef, model.params, jnp.asarray(buf))
        shared_len = [_common_prefix(prompts[j].ids, ctx_ids) if ctx else 0 for j in js]
        lens = [len(prompts[j].ids) for j in js]
        # the token buffer: prompt + gen_len - 1 fed-back tokens, within the context where possible
        t = min(_bucket(max(lens) + gen_len - 1, 64), max(max_context, max(lens)))
        order = np.argsort([lens[k] - shared_len[k] for k in range(len(js))], kind="stable")
        n_batches = -(-len(js) // batch_size)
        rows = -(-len(js) // n_batches)
        for s0 in range(0, len(js), rows):
            sel = [int(k) for k in order[s0 : s0 + rows]]
            sel_pad = sel + [sel[-1]] * (rows - len(sel))
            window = min(_bucket(max(lens[k] - shared_len[k] for k in sel), 16), t)
            ids = np.full((rows, t), model.pad_id, np.int32)
            for r, k in enumerate(sel_pad):
                ids[r, : lens[k]] = prompts[js[k]].ids
            length = np.array([lens[k] for k in sel_pad], np.int32)
            start = np.array([min(shared_len[k], lens[k] - 1, t - window) for k in sel_pad],
                             np.int32)
            cidx = np.array([cand[js[k]] for k in sel_pad], np.int32)
            ids, length = jnp.asarray(ids), jnp.asarray(length)
            lp, first, cache = _prefill(model.graphdef, model.params, ids, length,
                                        jnp.asarray(start), kv, jnp.asarray(cidx), window)
            if gen_len > 1:
                toks = _decode_steps(model.graphdef, model.params, ids, length, cache, first, eos,
                                     gen_len)
            else:
                toks = first[:, None]
            del cache
            lp, toks = np.asarray(lp), np.asarray(toks)
            _release_host_memory()
            for r, k in enumerate(sel):
                cand_logp[js[k]] = lp[r]
                continuations[js[k]] = _decode_new(model, toks[r])
    return continuations, cand_logp


def _single_token_candidates(model, prompts: Sequence[Prompt], words: Sequence[str]):
    """`[n, w]` token ids of each word when f"{prompt} {word}" adds exactly that one token after the
    prompt's own tokens, and a mask of the prompts where this holds for every word."""
    cand = np.zeros((len(prompts), len(words)), np.int32)
    ok = np.ones(len(prompts), bool)
    texts = [f"{p.text} {w}" for p in prompts for w in words]
    full = _token_ids(model.tokenizer, texts)
    for j, p in enumerate(prompts):
        for k in range(len(words)):
            f = full[j * len(words) + k]
            if len(f) == len(p.ids) + 1 and f[: len(p.ids)] == p.ids:
                cand[j, k] = f[-1]
            else:
                ok[j] = False
    return cand, ok


def predict(
    model,
    task: Task,
    prompts: Sequence[Prompt],
    *,
    quirks: str = "clean",
    gen_len: int = DEFAULT_GEN_LEN,
    batch_size: int = 16,
    max_context: int | None = None,
    fast: bool = True,
) -> dict:
    """Generation and likelihood predictions for built prompts.

    Returns {"preds", "preds_new", "continuations", "nll" `[n, words]`}.
    """
    if model.tokenizer is None:
        raise ValueError("downstream evaluation needs a model with a tokenizer")
    if gen_len < 1:
        raise ValueError(f"gen_len={gen_len}: must be >= 1")
    max_context = max_context or model.config.max_position_embeddings
    if model.config.family == "gpt2" and max_context > model.config.max_position_embeddings:
        raise ValueError(f"max_context={max_context} exceeds the learned position table "
                         f"({model.config.max_position_embeddings})")
    missing = [p for p in prompts if p.ids is None]
    for p, i in zip(missing, _token_ids(model.tokenizer, [p.text for p in missing])):
        p.ids = i
    too_long = [len(p.ids) for p in prompts if len(p.ids) > max_context]
    if too_long:
        raise ValueError(f"task {task.name}: a prompt of {max(too_long)} tokens exceeds the "
                         f"context ({max_context} tokens) even without few-shots")
    words = task.words
    nll = np.full((len(prompts), len(words)), np.nan)
    if fast:
        cand, ok = _single_token_candidates(model, prompts, words)
        continuations, cand_logp = _fast_pass(model, prompts, cand, gen_len, batch_size,
                                              max_context)
        nll[ok] = -cand_logp[ok]
        rest = np.flatnonzero(~ok)
    else:
        continuations = [""] * len(prompts)
        order = np.argsort([len(p.ids) for p in prompts], kind="stable")
        for s0 in range(0, len(prompts), batch_size):
            sel = order[s0 : s0 + batch_size]
            outs = model.generate([prompts[j].text for j in sel], gen_len)
            for j, o in zip(sel, outs):
                continuations[j] = o
        rest = np.arange(len(prompts))
    if len(rest):
        pairs = [(prompts[j].text, w) for j in rest for w in words]
        scores = metrics.answer_nll(model, pairs, batch_size=max(8, batch_size * len(words)))
        nll[rest] = np.asarray(scores).reshape(len(rest), len(words))
    preds = [task.parse(c, quirks, p.text) for c, p in zip(continuations, prompts)]
    preds_new = [task.likelihood_choice(row) for row in nll]
    return {"preds": preds, "preds_new": preds_new, "continuations": continuations, "nll": nll}


# --------------------------------------------------------------------------------------------------
# entry point


def evaluate_task(
    model,
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    num_tests: int | None = 100,
    num_few_shots: int = 4,
    gen_len: int = DEFAULT_GEN_LEN,
    quirks: str = "clean",
    mmlu_source: str | os.PathLike = "fewshot",
    batch_size: int = 16,
    max_context: int | None = None,
    fast: bool = True,
    details: bool = False,
) -> dict:
    """One task's result dict (see `evaluate_downstream`)."""
    _check_quirks(quirks)
    name = resolve_tasks([task])[0]
    spec = TASKS[name]
    t0 = time.perf_counter()
    max_context = max_context or model.config.max_position_embeddings
    full_mmlu = name == "mmlu" and str(mmlu_source) != "fewshot"
    if full_mmlu:
        shots, tests = load_full_mmlu(mmlu_source, num_few_shots, num_tests)
    else:
        shots, tests = split_items(load_items(name, data_dir or default_data_dir()), num_few_shots,
                                   num_tests)
    prompts = build_prompts(spec, shots, tests, quirks=quirks, tokenizer=model.tokenizer,
                            max_context=max_context, gen_len=gen_len)
    out = predict(model, spec, prompts, quirks=quirks, gen_len=gen_len, batch_size=batch_size,
                  max_context=max_context, fast=fast)
    _release_host_memory()
    labels = [p.label for p in prompts]
    res = score_predictions(labels, out["preds"], out["preds_new"])
    res.update(num_few_shots=num_few_shots, gen_len=gen_len, quirks=quirks,
               few_shots_dropped=int(sum(p.num_shots < num_few_shots for p in prompts)),
               time_s=time.perf_counter() - t0)
    if name == "mmlu":
        res["mmlu_source"] = str(mmlu_source)
    if details:
        res["records"] = [
            {"label": y, "pred": a, "pred_new": b, "continuation": c,
             "nll": [float(x) for x in row], "num_shots": p.num_shots}
            for y, a, b, c, row, p in zip(labels, out["preds"], out["preds_new"],
                                          out["continuations"], out["nll"], prompts)]
    log.info("downstream %s: f1 %.3f f1_new %.3f mcc %.3f correct %d/%d invalid %d (%.1f s)", name,
             res["f1"], res["f1_new"], res["mcc"], res["correct"], res["total"], res["invalid"],
             res["time_s"])
    return res


def evaluate_downstream(
    model,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    data_dir: str | os.PathLike | None = None,
    *,
    num_tests: int | None = 100,
    num_few_shots: int = 4,
    gen_len: int = DEFAULT_GEN_LEN,
    quirks: str = "clean",
    mmlu_source: str | os.PathLike = "fewshot",
    batch_size: int = 16,
    max_context: int | None = None,
    fast: bool = True,
    details: bool = False,
) -> dict[str, dict]:
    """Few-shot downstream scores of `model`: {task: result}.

    Args:
      model: a `LanguageModel` with a tokenizer.
      tasks: names (list or comma-separated; unique substrings accepted, see `resolve_tasks`).
      data_dir: folder with `{task}.json` (default `default_data_dir()`).
      num_tests: tests per task (items 10..10+num_tests); None = all. Full MMLU: total questions.
      num_few_shots: k, the first k items of the few-shot pool (<= 10).
      gen_len: greedy tokens generated for the generation prediction.
      quirks: "clean" or "reference" (module docstring).
      mmlu_source: "fewshot" (mmlu.json in data_dir) or a folder with the full MMLU dev/ and test/
        CSVs.
      batch_size: prompts per model call.
      max_context: the context used for few-shot dropping (default max_position_embeddings).
      fast: the shared-context KV-cache path (False: `generate` + `answer_nll`, slower, same results
        up to float rounding).
      details: also return per-test records (labels, predictions, continuations, NLLs).
    Returns:
      {task: {"f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", "total",
      "num_few_shots", "gen_len", "quirks", "few_shots_dropped", "time_s"[, "mmlu_source",
      "records"]}}.
    """
    return {name: evaluate_task(model, name, data_dir, num_tests=num_tests,
                                num_few_shots=num_few_shots, gen_len=gen_len, quirks=quirks,
                                mmlu_source=mmlu_source, batch_size=batch_size,
                                max_context=max_context, fast=fast, details=details)
            for name in resolve_tasks(tasks)}
