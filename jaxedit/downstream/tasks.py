"""The downstream task registry (reference §7): each task's answer words, prompt text, label mapping
and parse of a generated continuation, in both quirk modes, and the resolution of task names.

Class indices are the positions in `Task.words`: 1 = Yes / positive / True for the binary tasks,
A..D = 0..3. The reference writes the MMLU result under the JSON key "mmmlu" (three m's); this
package uses "mmlu" (`REFERENCE_KEYS` records the mapping for readers of reference files).

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
"{s1} entails the {s2}" wording. Quirk 6 is applied where prompts are built
(`jaxedit.downstream.prompts`), the parse rules in `Task.parse`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from jaxedit.errors import InputError

QUIRKS = ("clean", "reference")
DEFAULT_GEN_LEN = 3
REFERENCE_KEYS = {"mmlu": "mmmlu"}  # the reference's JSON key for MMLU (informational only)


def check_quirks(quirks: str) -> None:
    """Raises unless `quirks` is one of `QUIRKS`."""
    if quirks not in QUIRKS:
        raise InputError(f"quirks={quirks!r}: expected one of {QUIRKS}")


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


_SENTIMENT_PREFIX = (
    "For each snippet of text,label the sentiment of the text as positive or "
    "negative.The answer should be exact 'positive' or 'negative'. text:"
)


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
        check_quirks(quirks)
        if quirks == "reference" and self.reference_question is not None:
            return self.reference_question(item)
        return self.stem(item)

    def few_shot(self, item: dict, quirks: str = "clean") -> str:
        check_quirks(quirks)
        return f"{self.stem(item)} {self.words[self.label(item, quirks)]}{self.terminator}"

    @property
    def multiple_choice(self) -> bool:
        return len(self.words) > 2

    def parse(self, continuation: str, quirks: str = "clean", prompt: str = "") -> int:
        """Class index read from a generated continuation, or -1 (invalid)."""
        check_quirks(quirks)
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

    def likelihood_choice(self, nll: ArrayLike) -> int:
        """The class whose word has the lowest mean NLL (reference tie rules)."""
        scores = np.asarray(nll, np.float64)
        if not self.multiple_choice:
            return 1 if scores[1] < scores[0] else 0
        best = int(np.argmin(scores))
        return best if int(np.sum(scores == scores[best])) == 1 else -1


def _binary_task(words: tuple[str, str], stem, cue, reference_question=None) -> dict:
    """The fields of a two-class task whose items carry `label` 0/1: `words` = (class 0, class 1);
    the reference lists the words in the order class 1, class 0 (lower-cased)."""
    return {
        "words": words,
        "stem": stem,
        "label": lambda it, q: _binary(it["label"]),
        "cue": cue,
        "reference_order": ((words[1].lower(), 1), (words[0].lower(), 0)),
        "reference_question": reference_question,
    }


def _sentiment(stem, cue, reference_question=None) -> dict:
    return _binary_task(("negative", "positive"), stem, cue, reference_question)


def _yes_no(stem, cue="Answer:", reference_question=None) -> dict:
    return _binary_task(("No", "Yes"), stem, cue, reference_question)


_LETTERS = (("a\n", 0), ("b\n", 1), ("c\n", 2), ("d\n", 3))

TASKS: dict[str, Task] = {
    "sst2": Task(
        name="sst2",
        **_sentiment(
            lambda it: f"Review : {it['sentence']}\nSentiment :",
            "Sentiment :",
            reference_question=lambda it: f"Review :{it['sentence']}\nSentiment :",
        ),
    ),
    "mrpc": Task(
        name="mrpc",
        **_yes_no(
            lambda it: (
                "Are the sentences paraphrases of each other.\n"
                f"Sentence 1: {it['sentence1']}\nSentence 2: {it['sentence2']}\nAnswer:"
            )
        ),
    ),
    "cola": Task(
        name="cola",
        **_yes_no(
            lambda it: (
                f"Is this sentence linguistically acceptable?\nSentence: {it['sentence']}\nAnswer:"
            ),
            reference_question=lambda it: (
                f"Is this sentence linguistically acceptable?\nSentence: {it['sentence']}\nAnswer: "
            ),
        ),
    ),
    "rte": Task(
        name="rte",
        words=("False", "True"),
        stem=lambda it: f"{it['sentence1']}\nquestion: {it['sentence2']} True or False?\nanswer:",
        label=_rte_label,
        cue="answer:",
        reference_order=(("false", 0), ("true", 1)),
    ),
    "nli": Task(
        name="nli",
        words=("False", "True"),
        stem=lambda it: f"{it['sentence1']} entails the {it['sentence2']} True or False? Answer:",
        label=lambda it, q: 1 if it["label"] == "entailment" else 0,
        cue="True or False? Answer:",
        reference_order=(("true", 1), ("false", 0)),
    ),
    "mmlu": Task(
        name="mmlu",
        words=("A", "B", "C", "D"),
        stem=lambda it: f"Question: {it['question']}\n{_choices_block(it['choices'], ' ')}Answer:",
        label=lambda it, q: _letter_index(it["answer"]),
        cue=None,
        reference_order=_LETTERS,
    ),
    "sentiment_analysis": Task(
        name="sentiment_analysis",
        **_sentiment(lambda it: f"{_SENTIMENT_PREFIX} {it['sentence']} answer:", "answer:"),
    ),
    "dialogue": Task(
        name="dialogue",
        words=("A", "B", "C", "D"),
        stem=lambda it: (
            f"Q: Given the following: {it['article']}\nWhich choice is correct?\n"
            f"{_choices_block(it['options'], '')}Answer:"
        ),
        label=lambda it, q: _letter_index(it["answers"]),
        cue=None,
        reference_order=_LETTERS,
        terminator="\n\n",
        drop_margin=5,
    ),
}
TASK_NAMES = tuple(TASKS)
DEFAULT_TASKS = ("nli", "sst2", "mmlu", "mrpc", "cola", "rte")  # the reference's default selection
_ALIASES = {"mmmlu": "mmlu", "sst": "sst2", "sentiment": "sentiment_analysis"}


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from a comma-separated string or a list. A name may also be a unique substring of
    a registry name ("sst" -> sst2, "sentiment" -> sentiment_analysis), as the reference's substring
    flags allow; "mmmlu" is accepted for mmlu. Order kept, duplicates dropped."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
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
                raise InputError(
                    f"downstream task {raw!r} {why}; valid names: {', '.join(TASK_NAMES)}"
                )
            name = hits[0]
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"no downstream task given; valid names: {', '.join(TASK_NAMES)}")
    return out
