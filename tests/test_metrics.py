"""Editing metrics on hand-built cases whose answers are known, and scoring against a direct pass."""

from __future__ import annotations

import numpy as np
import pytest

from jaxedit import metrics


def _p(new, true, new_acc=0.0, true_acc=0.0):
    return {"target_new": new, "target_true": true, "new_acc": new_acc, "true_acc": true_acc}


def test_summary_on_known_records():
    records = [
        {"rewrite": [_p(1.0, 2.0, 1.0)], "paraphrase": [_p(1.0, 2.0), _p(3.0, 2.0)],
         "neighborhood": [_p(2.0, 1.0, 0.0, 1.0), _p(1.0, 2.0)]},
        {"rewrite": [_p(3.0, 2.0)], "paraphrase": [_p(3.0, 2.0), _p(3.0, 2.0)],
         "neighborhood": [_p(2.0, 1.0, 0.0, 1.0), _p(2.0, 1.0)]},
    ]
    s = metrics.summarize_counterfact(records)
    assert s["ES"] == 50.0  # record 1 wins, record 2 loses
    assert s["PS"] == 25.0  # (1/2 + 0/2) / 2
    assert s["NS"] == 75.0  # (1/2 + 2/2) / 2
    assert s["ES_acc"] == 50.0 and s["NS_acc"] == 50.0 and s["PS_acc"] == 0.0
    e = np.exp
    es_diff = ((e(-1) - e(-2)) + (e(-3) - e(-2))) / 2
    assert s["ES_diff"] == pytest.approx(100 * es_diff)
    ns_diff = (((e(-1) - e(-2)) + (e(-2) - e(-1))) / 2 + (e(-1) - e(-2))) / 2
    assert s["NS_diff"] == pytest.approx(100 * ns_diff)
    assert s["S"] == pytest.approx(3 / (1 / 50 + 1 / 25 + 1 / 75))


def test_hmean_edge_cases():
    assert metrics.hmean([50.0, 50.0, 50.0]) == pytest.approx(50.0)
    assert metrics.hmean([0.0, 90.0, 90.0]) == 0.0


def test_answer_nll_matches_direct_teacher_forcing():
    """answer_nll on a tiny model equals log-softmax read off a plain forward pass."""
    from flax import nnx

    from conftest import tiny_config
    from jaxedit import models
    from jaxedit.lm import LanguageModel

    class Tok:
        def __call__(self, text):
            return {"input_ids": [ord(c) % 61 for c in text]}

    cfg = tiny_config("gpt2")
    graphdef, params = nnx.split(models.build(cfg))
    lm = LanguageModel(config=cfg, tokenizer=Tok(), graphdef=graphdef, params=params)
    pairs = [("abc", "de"), ("hello there", "x"), ("q", "long answer")]
    nll, n, acc = metrics.answer_nll(lm, pairs, return_lengths=True, return_accuracy=True)
    for (prompt, answer), got, k, a in zip(pairs, nll, n, acc):
        ids = Tok()(f"{prompt} {answer}")["input_ids"]
        logits = np.asarray(lm.module(np.asarray([ids], np.int32)).logits[0], np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        start = len(prompt)
        toks = ids[start:]
        assert k == len(toks)
        want = -np.mean([logp[start - 1 + m, t] for m, t in enumerate(toks)])
        assert got == pytest.approx(want, abs=1e-4)
        top = np.mean([np.argmax(logits[start - 1 + m]) == t for m, t in enumerate(toks)])
        assert a == pytest.approx(top)
