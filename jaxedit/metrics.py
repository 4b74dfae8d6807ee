"""Editing metrics (SPEC §6.3): batched, jitted scoring of targets after prompts.

For a prompt x and a candidate answer o, NLL(x, o) is the mean negative log-likelihood of the tokens of
" " + o following x, read from one teacher-forced pass over the string f"{x} {o}" (the reference's
`test_batch_prediction`); target tokens sit at positions len(tok(x)) + j, predicted by the logits one
position earlier. All (prompt, answer) pairs of a set of records are scored together: right-padded,
bucketed, and only the logits at answer positions are computed.

CounterFact scores per record: ES = mean over rewrite prompts of 1[NLL_new < NLL_true]; PS the same over
paraphrase prompts; NS = mean over neighbourhood prompts of 1[NLL_true < NLL_new]. Scores are reported
×100, averaged over records.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.lm import LanguageModel, bucket
from jaxedit.models import Probe
from jaxedit.requests import EditRequest


@functools.partial(jax.jit, static_argnums=0)
def _answer_logprobs(graphdef, params, ids, mask, pos, answer_ids):
    """Log-probabilities `[b, a]` of `answer_ids` read from the logits at `pos` (one before each)."""
    logits = nnx.merge(graphdef, params)(ids, mask, Probe(logits_index=pos)).logits
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, answer_ids[:, :, None], axis=-1)[..., 0]


def answer_nll(
    model: LanguageModel,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    return_lengths: bool = False,
):
    """Mean per-token NLL of each answer after its prompt (answers get a leading space), and with
    `return_lengths` the number of answer tokens of each pair."""
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
        lp = np.asarray(_answer_logprobs(model.graphdef, model.params, ids, mask, pos, ans))
        nll = -(lp * amask).sum(-1) / np.maximum(amask.sum(-1), 1)
        out[order[start : start + batch_size]] = nll[: len(chunk)]
    if return_lengths:
        return out, np.array([r[2] for r in rows])
    return out


def counterfact_scores(model: LanguageModel, requests: Sequence[EditRequest]) -> dict:
    """ES / PS / NS (×100) over records, plus per-record NLL pairs for each prompt set."""
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
    nll = answer_nll(model, pairs)
    per = {name: [[] for _ in requests] for name in sets}
    for name, j, k in index:
        per[name][j].append({"target_new": float(nll[k]), "target_true": float(nll[k + 1])})
    scores = {}
    for name, key in (("rewrite", "ES"), ("paraphrase", "PS"), ("neighborhood", "NS")):
        vals = []
        for recs in per[name]:
            if not recs:
                continue
            if name == "neighborhood":
                vals.append(np.mean([r["target_true"] < r["target_new"] for r in recs]))
            else:
                vals.append(np.mean([r["target_new"] < r["target_true"] for r in recs]))
        scores[key] = 100.0 * float(np.mean(vals)) if vals else float("nan")
    return {"scores": scores, "records": per}
