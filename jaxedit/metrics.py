"""Editing metrics (reference §6.3): batched, jitted scoring of targets after prompts.

For a prompt x and a candidate answer o, NLL(x, o) is the mean negative log-likelihood of the tokens
of " " + o following x, read from one teacher-forced pass over the string f"{x} {o}" (the
reference's `test_batch_prediction`); target tokens sit at positions len(tok(x)) + j, predicted by
the logits one position earlier. All (prompt, answer) pairs of a set of records are scored together:
right-padded, bucketed, and only the logits at answer positions are computed.

CounterFact scores per record: ES = mean over rewrite prompts of 1[NLL_new < NLL_true]; PS the same
over paraphrase prompts; NS = mean over neighbourhood prompts of 1[NLL_true < NLL_new]. Scores are
reported ×100, averaged over records.

Generation Entropy (GE, `counterfact_scores(..., generation=True)`) is computed in
`jaxedit.entropy`, on the word tokens of `jaxedit.wordtok`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit import entropy, uncertainty
from jaxedit.lm import LanguageModel
from jaxedit.models import Probe
from jaxedit.progress import Progress
from jaxedit.requests import EditRequest
from jaxedit.shapes import bucket


@functools.partial(jax.jit, static_argnums=0)
def _answer_logprobs(graphdef, params, ids, mask, pos, answer_ids):
    """Log-probabilities `[b, a]` of `answer_ids` read from the logits at `pos` (one before each),
    and whether each answer token is the argmax there (teacher forcing)."""
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
    progress: bool = True,
):
    """Mean per-token NLL of each answer after its prompt (answers get a leading space); with
    `return_lengths` also the number of answer tokens, with `return_accuracy` also the fraction of
    answer tokens that are the argmax under teacher forcing. `progress` reports pairs scored, rate
    and time left (`jaxedit.progress`)."""
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
    bar = Progress(len(rows), "answer NLLs", "pairs", enabled=progress)
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
        acc[order[start : start + batch_size]] = (
            (top * amask).sum(-1) / np.maximum(amask.sum(-1), 1)
        )[: len(chunk)]
        bar.update(len(chunk))
    bar.close()
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
    `target_new` / `target_true` (mean token NLLs) and optionally `new_acc` / `true_acc` (1.0 when
    every answer token is the teacher-forced argmax). Returns ES/PS/NS (probability comparison), the
    `_diff` magnitude variants (mean exp(-NLL_new) - exp(-NLL_true), sign flipped for the
    neighbourhood), the `_acc` variants (new answer for rewrite/paraphrase, true answer for the
    neighbourhood) and the Overall Score S = hmean(ES, PS, NS).

    A record may also carry "ge": its n-gram entropy in bits (`entropy.ngram_entropy` of its
    generated texts), or None when it had no generation prompts. When any record has the key, the
    summary adds "GE" = 100 × the mean over the records with a value (NaN if none) and "GE_records"
    = their number. GE is not part of S.
    """
    out = {}
    for name, key in (("rewrite", "ES"), ("paraphrase", "PS"), ("neighborhood", "NS")):
        success, diff, acc = [], [], []
        for rec in records:
            prompts = rec.get(name) or []
            if not prompts:
                continue
            sign = -1.0 if name == "neighborhood" else 1.0
            success.append(
                np.mean([(sign * (p["target_true"] - p["target_new"])) > 0 for p in prompts])
            )
            diff.append(
                np.mean(
                    [sign * (np.exp(-p["target_new"]) - np.exp(-p["target_true"])) for p in prompts]
                )
            )
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
    progress: bool = True,
    **generation_options: Any,
) -> dict:
    """ES / PS / NS (×100) over records, plus per-record NLL pairs for each prompt set.

    With `generation`, also the Generation Entropy (`entropy.counterfact_generation_entropy`, given
    `generation_options`: `pool_path`, `seed`, `max_out_len`, `max_per_record`, `append_qna`,
    `qna_path`, `top_k`, `batch_size`): the scores get
    "GE" and "GE_records", and the records get "generation": per record {"entropy" (bits, or None
    without prompts), "prompts", "texts"}. Off by default: sampling is the expensive part.
    `progress` reports the scoring's (and the sampling's) progress (`jaxedit.progress`).

    Returns:
      {"scores": summary dict (`summarize_counterfact`), "records": {set name: per-record lists}}.
    """
    sets = {
        "rewrite": [[r.filled_prompt()] for r in requests],
        "paraphrase": [list(r.paraphrase_prompts) for r in requests],
        "neighborhood": [list(r.neighborhood_prompts) for r in requests],
    }
    pairs: list[tuple[str, str]] = []
    index: list[tuple[str, int, int]] = []
    for name, per_record in sets.items():
        for j, prompts in enumerate(per_record):
            req = requests[j]
            true = (
                req.neighborhood_target
                if name == "neighborhood" and req.neighborhood_target
                else (req.target_true)
            )
            if true is None:
                continue
            for p in prompts:
                index.append((name, j, len(pairs)))
                pairs.append((p, req.target_new))
                pairs.append((p, true))
    nll, acc = answer_nll(model, pairs, return_accuracy=True, progress=progress)
    # per set, one list of prompt results per record; "generation": one dict per record
    per: dict[str, list[Any]] = {name: [[] for _ in requests] for name in sets}
    for name, j, k in index:
        per[name][j].append(
            {
                "target_new": float(nll[k]),
                "target_true": float(nll[k + 1]),
                "new_acc": float(acc[k]),
                "true_acc": float(acc[k + 1]),
            }
        )
    records = [{name: per[name][j] for name in sets} for j in range(len(requests))]
    if generation:
        ge = entropy.counterfact_generation_entropy(
            model, requests, return_texts=True, progress=progress, **generation_options
        )
        for rec, value in zip(records, ge["per_record"]):
            rec["ge"] = value
        per["generation"] = [
            {"entropy": v, "prompts": p, "texts": t}
            for v, p, t in zip(ge["per_record"], ge["prompts"], ge["texts"])
        ]
    scores = summarize_counterfact(records)
    return {"scores": scores, "records": per}


def zsre_scores(
    model: LanguageModel, requests: Sequence[EditRequest], *, progress: bool = True
) -> dict:
    """zsRE teacher-forced token accuracy (×100): of the new target on the rewrite and paraphrase
    prompts, and of the true answer (`neighborhood_target`) on the neighbourhood prompt (reference
    §6.4).

    One teacher-forced pass over f"{prompt} {answer}" per pair; the reference re-tokenizes the
    prompt with each answer prefix, which gives the same tokens except where BPE merges across the
    boundary. `progress` reports the scoring's progress (`jaxedit.progress`).
    """
    pairs: list[tuple[str, str]] = []
    index: list[tuple[str, int]] = []
    for j, r in enumerate(requests):
        sets = [
            ("rewrite", [r.filled_prompt()], r.target_new),
            ("paraphrase", r.paraphrase_prompts, r.target_new),
        ]
        if r.neighborhood_target:
            sets.append(("neighborhood", r.neighborhood_prompts, r.neighborhood_target))
        for name, prompts, answer in sets:
            for p in prompts:
                index.append((name, j))
                pairs.append((p, answer))
    _, acc = answer_nll(model, pairs, return_accuracy=True, progress=progress)
    per: dict[str, list[list[float]]] = {
        name: [[] for _ in requests] for name in ("rewrite", "paraphrase", "neighborhood")
    }
    for (name, j), a in zip(index, acc):
        per[name][j].append(float(a))
    return {"scores": summarize_zsre(per), "records": per}


def summarize_zsre(per: Mapping[str, Sequence[Sequence[float]]]) -> dict:
    """zsRE scores (×100) from per-record token accuracies `{set: [[acc per prompt] per record]}`:
    efficacy (rewrite), generalization (paraphrase), specificity (neighbourhood), each the mean over
    records (with any prompts) of the record's mean."""
    scores = {}
    for name, key in (
        ("rewrite", "efficacy"),
        ("paraphrase", "generalization"),
        ("neighborhood", "specificity"),
    ):
        vals = [np.mean(v) for v in per.get(name, []) if v]
        scores[key] = 100.0 * float(np.mean(vals)) if vals else float("nan")
    return scores


def counterfact_record_values(records: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per-record ES / PS / NS success rates `[n]` (NaN where a record has no such prompts): the
    units that `summarize_counterfact` averages and that bootstrap intervals resample."""
    out = {}
    for name, key in (("rewrite", "ES"), ("paraphrase", "PS"), ("neighborhood", "NS")):
        sign = -1.0 if name == "neighborhood" else 1.0
        vals = []
        for rec in records:
            prompts = rec.get(name) or []
            vals.append(
                np.mean([(sign * (p["target_true"] - p["target_new"])) > 0 for p in prompts])
                if prompts
                else np.nan
            )
        out[key] = np.asarray(vals, np.float64)
    return out


def counterfact_intervals(
    records: Sequence[dict],
    baseline: Sequence[dict] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict:
    """95 % bootstrap intervals (the unit: the record) of ES, PS, NS and S = hmean(ES, PS, NS) of
    `records`; with `baseline` (the same records on another model, aligned) also the paired
    difference records − baseline for each, with `significant` when its interval excludes 0."""
    vals = counterfact_record_values(records)
    n = len(next(iter(vals.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    alpha = 1.0 - level

    def resampled(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample: NaN
            means = {k: 100.0 * np.nanmean(x[idx], axis=1) for k, x in v.items()}
        es, ps, ns = means["ES"], means["PS"], means["NS"]
        with np.errstate(all="ignore"):
            means["S"] = 3.0 / (1.0 / es + 1.0 / ps + 1.0 / ns)
        return means

    def ci(x: np.ndarray) -> list[float]:
        lo, hi = np.nanquantile(x, [alpha / 2, 1 - alpha / 2])
        return [float(lo), float(hi)]

    boot = resampled(vals)
    out: dict = {
        "unit": "record",
        "n": n,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "ci": {k: ci(v) for k, v in boot.items()},
    }
    if baseline is not None:
        base = resampled(counterfact_record_values(baseline))
        point_a, point_b = summarize_counterfact(records), summarize_counterfact(baseline)
        diff = {}
        for k in ("ES", "PS", "NS", "S"):
            d_ci = ci(boot[k] - base[k])
            diff[k] = {
                "value": float(point_a[k] - point_b[k]),
                "ci": d_ci,
                "significant": bool(d_ci[0] > 0 or d_ci[1] < 0),
            }
        out["difference"] = diff
    return out


def generation_entropy_intervals(
    after: Sequence[float | None],
    before: Sequence[float | None] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict:
    """95 % bootstrap interval (the unit: the record) of GE = 100 × mean per-record n-gram entropy
    (`entropy.generation_entropy`'s `per_record`, None where a record had no prompts); with
    `before` (the same records on another model, aligned) also the paired difference after −
    before over the records that have both, `significant` when its interval excludes 0."""
    a = np.asarray([np.nan if v is None else 100.0 * v for v in after], np.float64)
    ok = ~np.isnan(a)
    if not ok.any():
        return {"unit": "record", "n": 0, "ci": [float("nan"), float("nan")]}
    out: dict = {
        "unit": "record",
        **uncertainty.bootstrap_mean(a[ok], seed=seed, n_boot=n_boot, level=level),
    }
    if before is not None:
        if len(before) != len(after):
            raise ValueError("before and after GE must list the same records")
        b = np.asarray([np.nan if v is None else 100.0 * v for v in before], np.float64)
        both = ok & ~np.isnan(b)
        if both.any():
            out["difference"] = uncertainty.paired_difference(
                np.mean, [a[both]], [b[both]], seed=seed, n_boot=n_boot, level=level
            )
    return out
