"""Generation Entropy (GE, reference §6.3) of CounterFact records.

Texts sampled from each record's generation prompts (top-k 5, 100 tokens in all, prompt included)
are scored by the weighted 2-/3-gram entropy of their word tokens (`jaxedit.wordtok.word_tokenize`,
an nltk-free reimplementation of `nltk.word_tokenize`).

First the n-gram entropies per text, per record and over records; then the prompts and the seeded
sampling (`generate_texts`, through `LanguageModel.generate`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxedit.lm import LanguageModel
from jaxedit.progress import Progress
from jaxedit.requests import EditRequest
from jaxedit.shapes import bucket
from jaxedit.wordtok import word_tokenize


def text_ngram_entropy(
    text: str | Sequence[str], ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """Weighted n-gram entropy of one text, in bits (MEMIT's `compute_n_gram_entropy`).

    For each n, H_n = -Σ f log2 f over the relative frequencies f of the text's word n-grams (0 when
    the text has fewer than n words); the result is the arithmetic mean of weights[i] · H_{ns[i]},
    by default (2/3 · H2 + 4/3 · H3) / 2. `text` may also be a list of word tokens.
    """
    tokens = word_tokenize(text) if isinstance(text, str) else list(text)
    parts = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        f = np.array(list(counts.values()), np.float64)
        f = f / f.sum() if f.size else f
        parts.append(w * float(-(f * np.log2(f)).sum()))
    return float(np.mean(parts))


def ngram_entropy(texts: str | Sequence[str]) -> float:
    """A record's n-gram entropy: the arithmetic mean of `text_ngram_entropy` over its texts
    (MEMIT's `n_gram_entropy`), in bits; NaN for no texts. A single string counts as one text."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        return float("nan")
    return float(np.mean([text_ngram_entropy(t) for t in texts]))


def generation_entropy(texts_per_record: Sequence[Sequence[str]]) -> dict:
    """GE over records from their generated texts (prompt included).

    Returns:
      {"GE": 100 × mean over records with at least one text of their `ngram_entropy` (NaN if none),
       "num_records": how many records had texts, "per_record": entropy (bits) or None per record}.
    """
    per = [ngram_entropy(t) if len(t) else None for t in texts_per_record]
    vals = [v for v in per if v is not None]
    return {
        "GE": 100.0 * float(np.mean(vals)) if vals else float("nan"),
        "num_records": len(vals),
        "per_record": per,
    }


# Generation prompts


@functools.lru_cache(maxsize=4)
def _prompt_pool(path: str) -> tuple[list[str], dict[str, list[int]]]:
    pool = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(pool, list) or not all(isinstance(p, str) for p in pool):
        raise ValueError(f"{path}: expected a JSON list of prompt strings")
    index: dict[str, list[int]] = {}
    for i, p in enumerate(pool):
        for w in set(re.findall(r"\w+", p)):
            index.setdefault(w, []).append(i)
    return pool, index


@functools.lru_cache(maxsize=4)
def _qna_questions(path: str) -> dict[int, tuple[str, str]]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return {int(r["case_index"]): (r["subject"], r["qna_question"]) for r in rows}


def generation_prompts_for(
    requests: Sequence[EditRequest],
    pool_path: str | os.PathLike | None = None,
    max_per_record: int = 10,
    *,
    append_qna: bool = False,
    qna_path: str | os.PathLike | None = None,
) -> list[list[str]]:
    """Generation prompts for each record.

    A record's own `generation_prompts` (nested CounterFact records carry about 10) come first. A
    record without them (the flattened counterfact-edit.json has none) gets the prompts of the pool
    (`cf_generation_prompts.json`: a JSON list of the original records' generation prompts) that
    contain its subject as a whole word or phrase: case-sensitive, not preceded or followed by a
    word character ("Lyon" matches "Lyon's twin city" but not "Sue Lyons"), in pool order,
    deduplicated, at most `max_per_record`. A subject that is part of a longer name also matches
    ("Lyon" in "Olympique Lyon is"). Without a pool, or without a match, the record gets no prompts.

    With `append_qna`, the record's question form (`qna_question` of `counterfact_qna.json`, which
    covers case ids 0–999; default path: beside the pool) is appended after the cap, as ENC's
    CounterFactDataset does for those records. Only when case_id and subject both match the entry.
    """
    if max_per_record < 0:
        raise ValueError(f"max_per_record={max_per_record}: must be >= 0")
    pool, index = _prompt_pool(str(Path(pool_path).resolve())) if pool_path else ([], {})
    qna = {}
    if append_qna:
        if qna_path is None:
            if pool_path is None:
                raise ValueError(
                    "append_qna needs qna_path (or a pool_path with counterfact_qna.json beside it)"
                )
            qna_path = Path(pool_path).with_name("counterfact_qna.json")
        qna = _qna_questions(str(Path(qna_path).resolve()))
    out = []
    for r in requests:
        prompts = list(r.generation_prompts)
        if not prompts and pool:
            words = re.findall(r"\w+", r.subject)
            cand: Sequence[int]
            if words:
                lists = sorted((index.get(w, []) for w in set(words)), key=len)
                cand = sorted(set(lists[0]).intersection(*lists[1:]))
            else:
                cand = range(len(pool))
            pattern = re.compile(r"(?<!\w)" + re.escape(r.subject) + r"(?!\w)")
            seen = set()
            for i in cand:
                if len(prompts) >= max_per_record:
                    break
                p = pool[i]
                if p not in seen and pattern.search(p):
                    seen.add(p)
                    prompts.append(p)
        if qna and isinstance(r.case_id, int) and r.case_id in qna:
            subject, question = qna[r.case_id]
            if subject == r.subject:
                prompts.append(question)
        out.append(prompts)
    return out


# Generation


def _as_key(seed) -> jax.Array:
    if isinstance(seed, (int, np.integer)):
        return jax.random.key(int(seed))
    return seed


def generate_texts(
    model: LanguageModel,
    prompts: Sequence[str],
    *,
    seed: int | jax.Array = 0,
    max_out_len: int = 100,
    top_k: int = 5,
    batch_size: int = 64,
    progress: bool = True,
) -> list[str]:
    """Sampled texts, each the prompt plus its continuation, at most `max_out_len` tokens in all
    (the reference's `generate_fast(..., max_out_len=100)` with top-k 5 sampling).

    The prompts are sorted by token length and generated in chunks of `batch_size` (the last one
    padded with copies), chunk c with the key `fold_in(key(seed), c)`: the texts depend only on the
    seed and the list of prompts. Every chunk samples `max_out_len - (shortest prompt)` new tokens
    and each row is cut to `max_out_len - len(prompt)`: the continuation is re-tokenized for the
    cut, which can differ from the sampled tokens where the model sampled a non-canonical
    tokenization. The text is the decoded prompt tokens plus the kept continuation tokens,
    NFKD-normalised, with "\\n\\n" replaced by a space (as the reference does). Unlike the
    reference, which samples on past the end-of-sequence token and deletes it from the text, a row
    ends at its first end-of-sequence token. `progress` reports prompts sampled, rate and time left
    (`jaxedit.progress`).
    """
    tok = model.tokenizer
    if not prompts:
        return []
    key = _as_key(seed)
    prompt_ids = [list(tok(p)["input_ids"]) for p in prompts]
    lengths = np.array([len(ids) for ids in prompt_ids])
    max_new = max_out_len - int(lengths.min())
    conts = [""] * len(prompts)
    if max_new >= 1:
        order = np.argsort(lengths, kind="stable")
        size = min(batch_size, bucket(len(prompts), 8))
        bar = Progress(len(prompts), "generation (GE)", "prompts", enabled=progress)
        for c, start in enumerate(range(0, len(order), size)):
            rows = [int(i) for i in order[start : start + size]]
            batch = [prompts[i] for i in rows]
            batch += [batch[-1]] * (size - len(batch))
            texts = model.generate(batch, max_new, top_k=top_k, key=jax.random.fold_in(key, c))
            for i, t in zip(rows, texts):
                conts[i] = t
            bar.update(len(rows))
        bar.close()
    out = []
    for ids, n, cont in zip(prompt_ids, lengths, conts):
        keep = max(0, max_out_len - int(n))
        new = list(tok(cont, add_special_tokens=False)["input_ids"])[:keep] if cont and keep else []
        text = tok.decode(ids + new, skip_special_tokens=True)
        out.append(unicodedata.normalize("NFKD", text).replace("\n\n", " "))
    return out


def counterfact_generation_entropy(
    model: LanguageModel,
    requests: Sequence[EditRequest],
    pool_path: str | os.PathLike | None = None,
    *,
    seed: int | jax.Array = 0,
    max_out_len: int = 100,
    top_k: int = 5,
    max_per_record: int = 10,
    append_qna: bool = False,
    qna_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    return_texts: bool = False,
    progress: bool = True,
) -> dict:
    """Generation Entropy of CounterFact records (reference §6.3).

    Prompts per record come from `generation_prompts_for`; all prompts of all records are sampled
    together by `generate_texts` (prompt included in the scored text); each record's entropy is the
    mean of `text_ngram_entropy` over its texts. `progress` reports the sampling's progress.

    Returns:
      {"GE": 100 × mean over records that had prompts (NaN if none), "num_records": their number,
       "per_record": entropy in bits or None per record, and with `return_texts` "prompts" and
       "texts" (lists per record)}.
    """
    prompts = generation_prompts_for(
        requests, pool_path, max_per_record, append_qna=append_qna, qna_path=qna_path
    )
    flat = [p for ps in prompts for p in ps]
    texts = generate_texts(
        model,
        flat,
        seed=seed,
        max_out_len=max_out_len,
        top_k=top_k,
        batch_size=batch_size,
        progress=progress,
    )
    per_texts, k = [], 0
    for ps in prompts:
        per_texts.append(texts[k : k + len(ps)])
        k += len(ps)
    out = generation_entropy(per_texts)
    if return_texts:
        out["prompts"] = prompts
        out["texts"] = per_texts
    return out
