"""Few-shot prompt building (reference §7): a prompt is the concatenated few-shot strings followed
by the test question, which ends at the answer cue ("Answer:", "Sentiment :", ...). Few-shots are
dropped from the end when the prompt would not fit the model's context (`max_position_embeddings`
unless `max_context` is given), by the rule of the quirk mode (`jaxedit.downstream.tasks`, quirk 6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxedit.downstream.tasks import DEFAULT_GEN_LEN, Task, check_quirks


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
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
    `max_context`, few-shots are dropped from the end so that the prompt fits (quirk 6 of the
    `tasks` module docstring); without them all few-shots are kept.
    """
    check_quirks(quirks)
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
        q_lens = [len(x) for x in token_ids(tokenizer, questions)]
        shot_lens: dict[int, list[int]] = {}
        out = []
        for shots, q, y, q_len in zip(shot_lists, questions, labels, q_lens):
            strings = shot_strings(shots)
            if id(shots) not in shot_lens:
                shot_lens[id(shots)] = [len(x) for x in token_ids(tokenizer, strings)]
            remaining = max_context - q_len - gen_len
            n = 0
            for length in shot_lens[id(shots)]:
                remaining -= length
                if remaining < task.drop_margin:
                    break
                n += 1
            ctx = "".join(strings[:n])
            out.append(Prompt(ctx + q, ctx, q, y, n))
        ids = token_ids(tokenizer, [p.text for p in out])
        for p, i in zip(out, ids):
            p.ids = i
        return out

    # clean: the largest n whose tokenized prompt + gen_len fits
    built: dict[int, Prompt] = {}
    pending = list(range(len(tests)))
    n_shots = {j: len(shot_lists[j]) for j in pending}
    while pending:
        texts = []
        for j in pending:
            ctx = "".join(shot_strings(shot_lists[j])[: n_shots[j]])
            texts.append((ctx, ctx + questions[j]))
        ids = token_ids(tokenizer, [t for _, t in texts])
        still = []
        for j, (ctx, text), i in zip(pending, texts, ids):
            if len(i) + gen_len <= max_context or n_shots[j] == 0:
                built[j] = Prompt(text, ctx, questions[j], labels[j], n_shots[j], i)
            else:
                n_shots[j] -= 1
                still.append(j)
        pending = still
    return [built[j] for j in range(len(tests))]  # each test leaves `pending` once built
