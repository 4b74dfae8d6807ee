"""Editing metrics (SPEC §6.3): batched, jitted scoring of targets after prompts.

For a prompt x and a candidate answer o, NLL(x, o) is the mean negative log-likelihood of the tokens of
" " + o following x, read from one teacher-forced pass over the string f"{x} {o}" (the reference's
`test_batch_prediction`); target tokens sit at positions len(tok(x)) + j, predicted by the logits one
position earlier. All (prompt, answer) pairs of a set of records are scored together: right-padded,
bucketed, and only the logits at answer positions are computed.

CounterFact scores per record: ES = mean over rewrite prompts of 1[NLL_new < NLL_true]; PS the same over
paraphrase prompts; NS = mean over neighbourhood prompts of 1[NLL_true < NLL_new]. Scores are reported
×100, averaged over records.

Generation Entropy (GE): texts sampled from each record's generation prompts (top-k 5, 100 tokens in
all, prompt included) are scored by the weighted 2-/3-gram entropy of their word tokens
(`word_tokenize`, an nltk-free reimplementation of `nltk.word_tokenize`); see the section at the end.
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
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.lm import LanguageModel, bucket
from jaxedit.models import Probe
from jaxedit.requests import EditRequest


@functools.partial(jax.jit, static_argnums=0)
def _answer_logprobs(graphdef, params, ids, mask, pos, answer_ids):
    """Log-probabilities `[b, a]` of `answer_ids` read from the logits at `pos` (one before each), and
    whether each answer token is the argmax there (teacher forcing)."""
    logits = nnx.merge(graphdef, params)(ids, mask, Probe(logits_index=pos)).logits
    logp = jax.nn.log_softmax(logits, axis=-1)
    top = jnp.argmax(logits, axis=-1) == answer_ids
    return jnp.take_along_axis(logp, answer_ids[:, :, None], axis=-1)[..., 0], top


def answer_nll(
    model: LanguageModel,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    return_lengths: bool = False,
    return_accuracy: bool = False,
):
    """Mean per-token NLL of each answer after its prompt (answers get a leading space); with
    `return_lengths` also the number of answer tokens, with `return_accuracy` also the fraction of
    answer tokens that are the argmax under teacher forcing."""
    tok = model.tokenizer
    rows = []
    for prompt, answer in pairs:
        full = list(tok(f"{prompt} {answer.lstrip()}")["input_ids"])
        n_prefix = len(tok(prompt)["input_ids"])
        n_ans = len(full) - n_prefix
        if n_ans < 1:
            raise ValueError(f"answer {answer!r} adds no tokens after prompt {prompt!r}")
        rows.append((full, n_prefix, n_ans))
    out = np.zeros(len(rows), np.float64)
    acc = np.zeros(len(rows), np.float64)
    order = np.argsort([len(r[0]) for r in rows])  # similar lengths together: less padding
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        t = bucket(max(len(r[0]) for r in chunk), 16)
        a = bucket(max(r[2] for r in chunk), 4)
        b = bucket(len(chunk), 8)
        ids = np.zeros((b, t), np.int32)
        mask = np.zeros((b, t), np.int32)
        pos = np.zeros((b, a), np.int32)
        ans = np.zeros((b, a), np.int32)
        amask = np.zeros((b, a), np.float32)
        for i, (full, n_prefix, n_ans) in enumerate(chunk):
            ids[i, : len(full)] = full
            mask[i, : len(full)] = 1
            pos[i, :n_ans] = np.arange(n_prefix - 1, n_prefix - 1 + n_ans)
            ans[i, :n_ans] = full[n_prefix:]
            amask[i, :n_ans] = 1
        lp, top = _answer_logprobs(model.graphdef, model.params, ids, mask, pos, ans)
        lp, top = np.asarray(lp), np.asarray(top)
        nll = -(lp * amask).sum(-1) / np.maximum(amask.sum(-1), 1)
        out[order[start : start + batch_size]] = nll[: len(chunk)]
        acc[order[start : start + batch_size]] = ((top * amask).sum(-1) / np.maximum(amask.sum(-1), 1))[
            : len(chunk)]
    result = [out]
    if return_lengths:
        result.append(np.array([r[2] for r in rows]))
    if return_accuracy:
        result.append(acc)
    return result[0] if len(result) == 1 else tuple(result)


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean (scipy.stats.hmean); 0 if any value is 0."""
    values = [float(v) for v in values]
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def summarize_counterfact(records: Sequence[dict]) -> dict:
    """Scores (×100, mean over records of per-record means) from per-record results.

    Each record maps "rewrite" / "paraphrase" / "neighborhood" to a list of per-prompt dicts with
    `target_new` / `target_true` (mean token NLLs) and optionally `new_acc` / `true_acc` (1.0 when every
    answer token is the teacher-forced argmax). Returns ES/PS/NS (probability comparison), the `_diff`
    magnitude variants (mean exp(-NLL_new) - exp(-NLL_true), sign flipped for the neighbourhood), the
    `_acc` variants (new answer for rewrite/paraphrase, true answer for the neighbourhood) and the
    Overall Score S = hmean(ES, PS, NS).

    A record may also carry "ge": its n-gram entropy in bits (`ngram_entropy` of its generated texts),
    or None when it had no generation prompts. When any record has the key, the summary adds "GE" =
    100 × the mean over the records with a value (NaN if none) and "GE_records" = their number. GE is
    not part of S.
    """
    out = {}
    for name, key in (("rewrite", "ES"), ("paraphrase", "PS"), ("neighborhood", "NS")):
        success, diff, acc = [], [], []
        for rec in records:
            prompts = rec.get(name) or []
            if not prompts:
                continue
            sign = -1.0 if name == "neighborhood" else 1.0
            success.append(np.mean([(sign * (p["target_true"] - p["target_new"])) > 0 for p in prompts]))
            diff.append(np.mean([sign * (np.exp(-p["target_new"]) - np.exp(-p["target_true"]))
                                 for p in prompts]))
            acc_key = "true_acc" if name == "neighborhood" else "new_acc"
            if all(acc_key in p for p in prompts):
                acc.append(np.mean([p[acc_key] >= 1.0 for p in prompts]))
        out[key] = 100.0 * float(np.mean(success)) if success else float("nan")
        out[f"{key}_diff"] = 100.0 * float(np.mean(diff)) if diff else float("nan")
        if acc:
            out[f"{key}_acc"] = 100.0 * float(np.mean(acc))
    out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    if any("ge" in rec for rec in records):
        ge = [float(rec["ge"]) for rec in records if rec.get("ge") is not None]
        out["GE"] = 100.0 * float(np.mean(ge)) if ge else float("nan")
        out["GE_records"] = len(ge)
    return out


def counterfact_scores(
    model: LanguageModel,
    requests: Sequence[EditRequest],
    *,
    generation: bool = False,
    pool_path: str | os.PathLike | None = None,
    seed: int | jax.Array = 0,
    max_out_len: int = 100,
    max_per_record: int = 10,
    append_qna: bool = False,
    qna_path: str | os.PathLike | None = None,
) -> dict:
    """ES / PS / NS (×100) over records, plus per-record NLL pairs for each prompt set.

    With `generation`, also the Generation Entropy (`counterfact_generation_entropy` with `pool_path`,
    `seed`, `max_out_len`, `max_per_record`, `append_qna`, `qna_path`): the scores get "GE" and
    "GE_records", and the records get "generation": per record {"entropy" (bits, or None without
    prompts), "prompts", "texts"}. Off by default: sampling is the expensive part.

    Returns:
      {"scores": summary dict (`summarize_counterfact`), "records": {set name: per-record lists}}.
    """
    sets = {
        "rewrite": [[r.filled_prompt()] for r in requests],
        "paraphrase": [list(r.paraphrase_prompts) for r in requests],
        "neighborhood": [list(r.neighborhood_prompts) for r in requests],
    }
    pairs, index = [], []
    for name, per_record in sets.items():
        for j, prompts in enumerate(per_record):
            req = requests[j]
            true = req.neighborhood_target if name == "neighborhood" and req.neighborhood_target else (
                req.target_true)
            if true is None:
                continue
            for p in prompts:
                index.append((name, j, len(pairs)))
                pairs.append((p, req.target_new))
                pairs.append((p, true))
    nll, acc = answer_nll(model, pairs, return_accuracy=True)
    per = {name: [[] for _ in requests] for name in sets}
    for name, j, k in index:
        per[name][j].append({"target_new": float(nll[k]), "target_true": float(nll[k + 1]),
                             "new_acc": float(acc[k]), "true_acc": float(acc[k + 1])})
    records = [{name: per[name][j] for name in sets} for j in range(len(requests))]
    if generation:
        ge = counterfact_generation_entropy(
            model, requests, pool_path, seed=seed, max_out_len=max_out_len,
            max_per_record=max_per_record, append_qna=append_qna, qna_path=qna_path,
            return_texts=True)
        for rec, value in zip(records, ge["per_record"]):
            rec["ge"] = value
        per["generation"] = [{"entropy": v, "prompts": p, "texts": t} for v, p, t in
                             zip(ge["per_record"], ge["prompts"], ge["texts"])]
    scores = summarize_counterfact(records)
    return {"scores": scores, "records": per}


def zsre_scores(model: LanguageModel, requests: Sequence[EditRequest]) -> dict:
    """zsRE teacher-forced token accuracy (×100): of the new target on the rewrite and paraphrase
    prompts, and of the true answer (`neighborhood_target`) on the neighbourhood prompt (SPEC §6.4).

    One teacher-forced pass over f"{prompt} {answer}" per pair; the reference re-tokenizes the prompt with
    each answer prefix, which gives the same tokens except where BPE merges across the boundary.
    """
    pairs, index = [], []
    for j, r in enumerate(requests):
        sets = [("rewrite", [r.filled_prompt()], r.target_new),
                ("paraphrase", r.paraphrase_prompts, r.target_new)]
        if r.neighborhood_target:
            sets.append(("neighborhood", r.neighborhood_prompts, r.neighborhood_target))
        for name, prompts, answer in sets:
            for p in prompts:
                index.append((name, j))
                pairs.append((p, answer))
    _, acc = answer_nll(model, pairs, return_accuracy=True)
    per = {name: [[] for _ in requests] for name in ("rewrite", "paraphrase", "neighborhood")}
    for (name, j), a in zip(index, acc):
        per[name][j].append(float(a))
    return {"scores": summarize_zsre(per), "records": per}


def summarize_zsre(per: dict[str, Sequence[Sequence[float]]]) -> dict:
    """zsRE scores (×100) from per-record token accuracies `{set: [[acc per prompt] per record]}`:
    efficacy (rewrite), generalization (paraphrase), specificity (neighbourhood), each the mean over
    records (with any prompts) of the record's mean."""
    scores = {}
    for name, key in (("rewrite", "efficacy"), ("paraphrase", "generalization"),
                      ("neighborhood", "specificity")):
        vals = [np.mean(v) for v in per.get(name, []) if v]
        scores[key] = 100.0 * float(np.mean(vals)) if vals else float("nan")
    return scores


# --------------------------------------------------------------------------------------------------
# Generation Entropy (SPEC §6.3)
#
# Word tokens come from `word_tokenize`, an nltk-free reimplementation of `nltk.word_tokenize` (its
# docstring says why); then n-gram entropies per text, per record and over records; then the prompts
# and the seeded sampling.

_ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof rev hon fr sr jr st mt ft gen col lt maj sgt capt cmdr adm gov sen rep pres
supt insp cpl pvt vs etc inc ltd co corp bros dept univ assn ave blvd rd vol vols pp approx cf al
jan feb mar apr jun jul aug sep sept oct nov dec ph.d b.a m.a b.sc m.sc d.c a.m p.m u.s u.k u.n
e.g i.e u.s.a
""".split())

_SENTENCE_OPENERS = frozenset("""
the a an he she it they we i you this that these those there here his her its their our my your in on
at as after before when while but and however although though if for from with by to one some many most
all what who where why how during since so then also both each other another no not yes
""".split())

_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")
_INITIAL = re.compile(r"^[^\W\d_]\.$")
_LETTER_DOTS = re.compile(r"^(?:[^\W\d_]\.)+[^\W\d_]$")  # u.s, e.g, p.m (period-final part removed)
# end punctuation, then closing quotes/brackets, then whitespace and the next token
_BOUNDARY = re.compile(r"([.?!]+)([\"')\]}\u2018\u2019\u201c\u201d\xab\xbb]*)(\s+)(?=(\S+))")
_LEADING_PUNCT = re.compile(r"^[\"'(\[{`\u2018\u201c\xab]+")


def _opener(word: str) -> bool:
    """Capitalised common word: what Punkt's orthographic heuristic calls a sentence starter."""
    word = word.lstrip("\"'([{`\u2018\u201c\xab")
    return bool(word[:1].isupper()) and word.rstrip(".,;:!?\"')").lower() in _SENTENCE_OPENERS


def _is_break(before: str, ends: str, nxt: str) -> bool:
    if "?" in ends or "!" in ends:
        return True
    if len(ends) > 1:  # an ellipsis
        return _opener(nxt)
    last = before.rsplit(None, 1)[-1] if before and not before[-1].isspace() else ""
    word = _LEADING_PUNCT.sub("", last)
    if not word:
        return True
    low = word.lower()
    if low in _ABBREVIATIONS or low.split("-")[-1] in _ABBREVIATIONS or _LETTER_DOTS.match(low):
        return _opener(nxt)
    if _INITIAL.match(word + "."):
        return _opener(nxt)
    if _NUMBER.match(word + "."):
        return not nxt.lstrip("\"'([{`\u2018\u201c\xab")[:1].islower()
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (stripped), approximating nltk's English Punkt model (see above)."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if _is_break(text[start:m.start()], m.group(1), m.group(4)):
            out.append(text[start:m.start(3)].strip())
            start = m.end(3)
    out.append(text[start:].strip())
    return [s for s in out if s]


def _rule(pattern: str, repl: str, flags: int = 0) -> tuple[re.Pattern, str]:
    return re.compile(pattern, flags), repl


_CLOSERS = "\\])}>\"'\u00bb\u201d\u2019"
_TREEBANK_RULES = (
    # opening quotes: curly/guillemet/backtick, a leading ", a " after space or bracket, a ' before a word
    _rule("([\u00ab\u201c\u2018\u201e]|`+)", r" \1 "),
    _rule(r'^"', "``"),
    _rule("(``)", r" \1 "),
    _rule(r"([ (\[{<])(\"|'')", r"\1 `` "),
    _rule(r"(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 ", re.IGNORECASE),
    # punctuation: the sentence-final period (with what closes after it), commas and colons not
    # inside numbers, ellipses, symbols, figure/en/em dashes, ? and !, a closing ', asterisks
    _rule(f"([^.])(\\.)([{_CLOSERS} ]*+)\\s*$", r"\1 \2 \3 "),
    _rule(r"([:,])([^\d])", r" \1 \2"),
    _rule(r"([:,])$", r" \1 "),
    _rule(r"\.{2,}", r" \g<0> "),
    _rule(r"[;@#$%&]", r" \g<0> "),
    _rule("[\u2012-\u2015]", r" \g<0> "),
    _rule(r"([^.])(\.)([\])}>\"']*)\s*$", r"\1 \2\3 "),
    _rule(r"[?!]", r" \g<0> "),
    _rule(r"([^'])' ", r"\1 ' "),
    _rule(r"[*]", r" \g<0> "),
    # brackets and double dashes
    _rule(r"[\]\[(){}<>]", r" \g<0> "),
    _rule(r"--", r" -- "),
)
_TREEBANK_LATE_RULES = (
    # closing quotes, then clitics (the text is padded with spaces first)
    _rule("([\u00bb\u201d\u2019])", r" \1 "),
    _rule(r"''", " '' "),
    _rule(r'"', " '' "),
    _rule(r"\s+", " "),
    _rule(r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    _rule(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)
# fused words split in two (Robert MacIntyre's list, as in the Penn Treebank sed script)
_FUSED = tuple(
    _rule(rf"\b({a})({b}){end}", r" \1 \2 ", re.IGNORECASE)
    for a, b, end in (("can", "not", r"\b"), ("d", "'ye", r"\b"), ("gim", "me", r"\b"),
                      ("gon", "na", r"\b"), ("got", "ta", r"\b"), ("lem", "me", r"\b"),
                      ("more", "'n", r"\b"), ("wan", "na", r"(?=\s)"))
) + tuple(_rule(rf" ('t)({b})\b", r" \1 \2 ", re.IGNORECASE) for b in ("is", "was"))


def _treebank_tokenize(sentence: str) -> list[str]:
    text = sentence
    for pattern, repl in _TREEBANK_RULES:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _TREEBANK_LATE_RULES + _FUSED:
        text = pattern.sub(repl, text)
    return text.split()


def word_tokenize(text: str) -> list[str]:
    """Word tokens of `text` as `nltk.word_tokenize` (English) gives them, without nltk.

    The reference scores generated texts with `nltk.word_tokenize`: Punkt sentence splitting with the
    English model (a data download), then NLTK's improved Treebank word tokenizer on each sentence.
    The Punkt model cannot be fetched where there is no hub access, so nltk would not work out of the
    box anyway; and the metric needs only the tokens. This function therefore carries its own rules
    instead of adding nltk as a dependency:

    * `_treebank_tokenize` implements the rules of `nltk.tokenize.NLTKWordTokenizer` (nltk 3.9/3.10):
      quotes become `` and '', punctuation, brackets and "--" are split off, a period is split off
      only at the end of a sentence, clitics ('s, n't, 'll, ...) and a few fused words (cannot,
      gonna, ...) are split. It agrees token for token with nltk 3.10.4's tokenizer on all 52,891
      strings tried (the WikiText-2 test lines and 50,000 random punctuation-heavy strings);
      tests/test_metrics.py compares the two whenever nltk is importable. Older nltk releases
      (which the reference ran) differ in a few rare cases, e.g. they leave figure/en/em dashes
      attached to the words around them.
    * `split_sentences` approximates Punkt's English model. Sentence splitting matters here only
      because the Treebank rules split the period off the *last* word of a sentence ("home." inside
      a text vs "home" "." at its end). A break follows [.?!] (and closing quotes/brackets) and
      whitespace, except after a known abbreviation ("Mr.", "U.S.", "e.g."), an initial ("J.") or an
      ellipsis unless the next word is a capitalised common sentence opener ("The", "He", ...), and
      except after a number when the next word is lower case. Punkt learns its abbreviations and
      orthographic statistics from a corpus; the lists here are hand-made, so a rare abbreviation
      can be split differently from nltk, changing one token.
    """
    return [tok for sentence in split_sentences(text) for tok in _treebank_tokenize(sentence)]


def text_ngram_entropy(text: str | Sequence[str], ns: Sequence[int] = (2, 3),
                       weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted n-gram entropy of one text, in bits (MEMIT's `compute_n_gram_entropy`).

    For each n, H_n = -Σ f log2 f over the relative frequencies f of the text's word n-grams (0 when
    the text has fewer than n words); the result is the arithmetic mean of weights[i] · H_{ns[i]}, by
    default (2/3 · H2 + 4/3 · H3) / 2. `text` may also be a list of word tokens.
    """
    tokens = word_tokenize(text) if isinstance(text, str) else list(text)
    parts = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        f = np.array(list(counts.values()), np.float64)
        f = f / f.sum() if f.size else f
        parts.append(w * float(-(f * np.log2(f)).sum()))
    return float(np.mean(parts))


def ngram_entropy(texts: str | Sequence[str]) -> float:
    """A record's n-gram entropy: the arithmetic mean of `text_ngram_entropy` over its texts (MEMIT's
    `n_gram_entropy`), in bits; NaN for no texts. A single string counts as one text."""
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
    return {"GE": 100.0 * float(np.mean(vals)) if vals else float("nan"),
            "num_records": len(vals), "per_record": per}


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
    contain its subject as a whole word or phrase: case-sensitive, not preceded or followed by a word
    character ("Lyon" matches "Lyon's twin city" but not "Sue Lyons"), in pool order, deduplicated, at
    most `max_per_record`. A subject that is part of a longer name also matches ("Lyon" in "Olympique
    Lyon is"). Without a pool, or without a match, the record gets no prompts.

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
                raise ValueError("append_qna needs qna_path (or a pool_path with counterfact_qna.json "
                                 "beside it)")
            qna_path = Path(pool_path).with_name("counterfact_qna.json")
        qna = _qna_questions(str(Path(qna_path).resolve()))
    out = []
    for r in requests:
        prompts = list(r.generation_prompts)
        if not prompts and pool:
            words = re.findall(r"\w+", r.subject)
            if words:
                lists = sorted((index.get(w, []) for w in set(words)), key=len)
                cand = set(lists[0]).intersection(*lists[1:])
                cand = sorted(cand)
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
) -> list[str]:
    """Sampled texts, each the prompt plus its continuation, at most `max_out_len` tokens in all (the
    reference's `generate_fast(..., max_out_len=100)` with top-k 5 sampling).

    The prompts are sorted by token length and generated in chunks of `batch_size` (the last one
    padded with copies), chunk c with the key `fold_in(key(seed), c)`: the texts depend only on the
    seed and the list of prompts. Every chunk samples `max_out_len - (shortest prompt)` new tokens and
    each row is cut to `max_out_len - len(prompt)`: the continuation is re-tokenized for the cut, which
    can differ from the sampled tokens where the model sampled a non-canonical tokenization. The text
    is the decoded prompt tokens plus the kept continuation tokens, NFKD-normalised, with "\\n\\n"
    replaced by a space (as the reference does). Unlike the reference, which samples on past the
    end-of-sequence token and deletes it from the text, a row ends at its first end-of-sequence token.
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
        for c, start in enumerate(range(0, len(order), size)):
            rows = [int(i) for i in order[start:start + size]]
            batch = [prompts[i] for i in rows]
            batch += [batch[-1]] * (size - len(batch))
            texts = model.generate(batch, max_new, top_k=top_k, key=jax.random.fold_in(key, c))
            for i, t in zip(rows, texts):
                conts[i] = t
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
) -> dict:
    """Generation Entropy of CounterFact records (SPEC §6.3).

    Prompts per record come from `generation_prompts_for`; all prompts of all records are sampled
    together by `generate_texts` (prompt included in the scored text); each record's entropy is the
    mean of `text_ngram_entropy` over its texts.

    Returns:
      {"GE": 100 × mean over records that had prompts (NaN if none), "num_records": their number,
       "per_record": entropy in bits or None per record, and with `return_texts` "prompts" and
       "texts" (lists per record)}.
    """
    prompts = generation_prompts_for(requests, pool_path, max_per_record, append_qna=append_qna,
                                     qna_path=qna_path)
    flat = [p for ps in prompts for p in ps]
    texts = generate_texts(model, flat, seed=seed, max_out_len=max_out_len, top_k=top_k,
                           batch_size=batch_size)
    per_texts, k = [], 0
    for ps in prompts:
        per_texts.append(texts[k:k + len(ps)])
        k += len(ps)
    out = generation_entropy(per_texts)
    if return_texts:
        out["prompts"] = prompts
        out["texts"] = per_texts
    return out
