"""Held-out NLL / perplexity, drift from the unedited model, and the uncertainty helpers (issue 13).

Hand-built cases: a model whose next-token distribution is known (uniform: zero head), NLL against
a direct computation from `model.logits`, KL = 0 for the unedited model and > 0 after a real ENCORE
edit, the coarse top-k KL against the full-vocabulary KL, bootstrap coverage on synthetic data,
McNemar's exact p on known tables, and perplexity against transformers on an exported model.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxedit import config, editor, heldout, stats, testing, uncertainty
from jaxedit.requests import EditRequest

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "A language model predicts the next token from the ones before it, one at a time.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "x",  # one token: skipped (nothing to predict)
]


def _heldout(tok, tmp_path, texts=TEXTS) -> heldout.Heldout:
    path = tmp_path / "heldout.txt"
    path.write_text("\n\n".join(texts) + "\n")
    return heldout.load(tok, path, num_docs=len(texts), max_length=64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _logp(model, d: np.ndarray) -> np.ndarray:
    """Full next-token log-probabilities `[n, V]` of one document (one forward, float64)."""
    logits = model.module(d[None, :], np.ones((1, len(d)), np.int32)).logits[0]
    return _log_softmax(np.asarray(logits))


def _direct_nll(model, hd: heldout.Heldout) -> tuple[float, int]:
    """Σ NLL / predictions from full logits, document by document (numpy)."""
    total, count = 0.0, 0
    for d in hd.docs:
        logp = _logp(model, d)
        total -= sum(logp[t, d[t + 1]] for t in range(len(d) - 1))
        count += len(d) - 1
    return total / count, count


def test_uniform_model_has_known_nll(gpt2_tok, tmp_path):
    """A zero output head gives uniform next-token distributions: NLL = log V, perplexity = V."""
    base = testing.tiny_model("llama", gpt2_tok, tie_word_embeddings=False)
    params = jax.tree.map(lambda x: x, base.params)
    params["lm_head"]["kernel"].set_value(np.zeros_like(params["lm_head"]["kernel"][...]))
    model = base.replace(params=params)
    hd = _heldout(gpt2_tok, tmp_path)
    assert len(hd.docs) == 4  # the one-token document is skipped
    res = heldout.measure(model, hd)
    v = model.config.vocab_size
    assert res["nll"] == pytest.approx(math.log(v), rel=1e-6)
    assert res["perplexity"] == pytest.approx(v, rel=1e-5)
    assert res["tokens"] == hd.predictions
    assert res["nll_ci"][0] == pytest.approx(math.log(v), rel=1e-6)  # every document the same


def test_nll_matches_direct_computation(lm, tmp_path):
    hd = _heldout(lm.tokenizer, tmp_path)
    res = heldout.measure(lm, hd, batch_tokens=128)  # several batches and length buckets
    want, count = _direct_nll(lm, hd)
    assert res["tokens"] == count
    assert res["nll"] == pytest.approx(want, rel=1e-5)
    lo, hi = res["nll_ci"]
    assert lo <= res["nll"] <= hi and lo < hi


def _edited(base):
    docs = [base.tokenizer(t)["input_ids"] for t in TEXTS * 3]
    cov, _ = stats.collect_second_moments(base, docs, (1, 2), progress=False)
    templates = (("{}",), ("Hello. {}",))
    cfg = config.EditConfig(
        method="ENCORE",
        layers=(1, 2),
        search=config.SearchConfig(lr=1.0, num_steps=8, clamp_norm_factor=4.0),
        solve=config.SolveConfig(cov_weight=1.0, norm_lambda=1.0),
        templates=templates,
    )
    ed = editor.Editor(base, cfg, stats.LayerStats(cov=cov), templates)
    state, _ = ed.apply(ed.init_state(), [EditRequest(0, "I like {}", "Paris", " Rome")])
    return ed.edited_model(state)


def _full_kl(a, b, hd) -> float:
    """Mean per-token KL(a ‖ b) over the full vocabulary (numpy, float64)."""
    total, count = 0.0, 0
    for d in hd.docs:
        la, lb = _logp(a, d)[:-1], _logp(b, d)[:-1]
        total += float(np.sum(np.exp(la) * (la - lb)))
        count += len(d) - 1
    return total / count


def test_drift_is_zero_unedited_and_positive_after_an_edit(gpt2_tok, tmp_path):
    base = testing.tiny_model("llama", gpt2_tok)
    hd = _heldout(gpt2_tok, tmp_path)
    ref = heldout.reference(base, hd, k=16)
    assert ref.nbytes == hd.predictions * (16 * 8 + 4)
    same = heldout.measure(base, hd, ref=ref)
    assert abs(same["kl"]) < 1e-6 and same["top1_agreement"] == 1.0
    edited = _edited(base)
    after = heldout.measure(edited, hd, ref=ref)
    assert after["kl"] > 1e-4
    assert after["kl_ci"][0] <= after["kl"] <= after["kl_ci"][1]
    # The coarse (top-k + rest) KL is a lower bound of the full KL (loose on this near-uniform
    # random model: its top 16 of 50,257 tokens hold little mass), and with k = the vocabulary it
    # is the full KL.
    full = _full_kl(edited, base, hd)
    assert after["kl"] <= full * (1 + 1e-4) + 1e-7
    whole = heldout.measure(edited, hd, ref=heldout.reference(base, hd, k=base.config.vocab_size))
    assert whole["kl"] == pytest.approx(full, rel=1e-3)
    # Paired comparison on the same documents: a model against itself differs by exactly 0;
    # the per-document sums add up to the reported totals.
    per_a, per_b = after["per_doc"], same["per_doc"]
    assert len(per_a["nll"]) == len(hd.docs) and sum(per_a["count"]) == after["tokens"]
    assert sum(per_a["nll"]) / sum(per_a["count"]) == pytest.approx(after["nll"], rel=1e-9)
    zero = heldout.paired_ratio(per_a, per_a)
    assert zero["value"] == 0 and zero["ci"] == [0.0, 0.0] and not zero["significant"]
    d = heldout.paired_ratio(per_a, per_b, "kl")
    assert d["value"] == pytest.approx(after["kl"] - same["kl"], rel=1e-6)
    assert d["ci"][0] <= d["value"] <= d["ci"][1]


def test_bootstrap_covers_the_true_mean_at_the_stated_rate():
    rng = np.random.default_rng(123)
    trials, hits = 400, 0
    for i in range(trials):
        x = rng.exponential(2.0, size=60)  # skewed: the true mean is 2
        lo, hi = uncertainty.bootstrap_mean(x, n_boot=400, seed=i)["ci"]
        hits += lo <= 2.0 <= hi
    assert 0.90 <= hits / trials <= 0.985, hits / trials


def test_bootstrap_ratio_and_stat_are_seeded():
    rng = np.random.default_rng(0)
    num, den = rng.random(50), rng.integers(1, 10, 50)
    a = uncertainty.bootstrap_ratio(num, den, seed=3)
    b = uncertainty.bootstrap_ratio(num, den, seed=3)
    assert a == b and a["value"] == pytest.approx(num.sum() / den.sum())
    s = uncertainty.bootstrap_stat(lambda x: float(np.median(x)), num, seed=3)
    assert s["ci"][0] <= s["value"] <= s["ci"][1]


def test_paired_difference_detects_a_shift():
    rng = np.random.default_rng(1)
    base = rng.random(300) < 0.6
    better = base | (rng.random(300) < 0.3)  # the second model fixes some items
    d = uncertainty.paired_difference(lambda x: float(np.mean(x)), [better], [base], seed=0)
    assert d["value"] > 0 and d["significant"]
    same = uncertainty.paired_difference(lambda x: float(np.mean(x)), [base], [base], seed=0)
    assert same["value"] == 0 and not same["significant"]


def test_mcnemar_exact_p_values():
    assert uncertainty.mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert uncertainty.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert uncertainty.mcnemar_exact(5, 5) == 1.0
    assert uncertainty.mcnemar_exact(0, 0) == 1.0
    # Symmetric in its arguments.
    assert uncertainty.mcnemar_exact(3, 12) == uncertainty.mcnemar_exact(12, 3)


def test_perplexity_matches_transformers(gpt2_tok, tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: pip install -e '.[parity]'")
    import transformers

    import jaxedit

    model = testing.tiny_model("llama", gpt2_tok, tie_word_embeddings=False)
    jaxedit.save_hf(model, tmp_path / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    hd = _heldout(gpt2_tok, tmp_path)
    total, count = 0.0, 0
    with torch.no_grad():
        for d in hd.docs:
            ids = torch.tensor(d[None, :].astype(np.int64))
            loss = hf(input_ids=ids, labels=ids).loss  # mean over the n - 1 predictions
            total += float(loss) * (len(d) - 1)
            count += len(d) - 1
    res = heldout.measure(model, hd)
    assert res["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


@pytest.mark.slow  # a subprocess: JAX start-up and compiles (≈ 30 s on 2 cores)
def test_evaluate_binary_writes_perplexity(gpt2_tok, tmp_path):
    """`experiments/evaluate.py --perplexity_text`: the JSON fields, equal to the library's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import jaxedit

    model = testing.tiny_model("llama", gpt2_tok)
    jaxedit.save_hf(model, tmp_path / "model")
    hd = _heldout(gpt2_tok, tmp_path)
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "ppl.json"
    res = subprocess.run(
        [
            sys.executable,
            str(repo / "experiments" / "evaluate.py"),
            f"--model={tmp_path / 'model'}",
            f"--perplexity_text={tmp_path / 'heldout.txt'}",
            "--perplexity_docs=5",
            "--perplexity_max_length=64",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    want = heldout.measure(jaxedit.load(tmp_path / "model"), hd)
    assert got["tokens"] == want["tokens"] == hd.predictions
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["nll"]), rel=1e-9)
    assert got["nll_ci"][0] <= got["nll"] <= got["nll_ci"][1]
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(printed) >= {"perplexity", "nll", "nll_ci", "tokens"}


def _records(rng, n, p_new):
    """Synthetic per-record CounterFact results: the new answer wins with probability p_new."""
    recs = []
    for _ in range(n):
        rec = {}
        for name in ("rewrite", "paraphrase", "neighborhood"):
            win = rng.random() < (p_new if name != "neighborhood" else 1 - p_new)
            new, true = (1.0, 2.0) if win else (2.0, 1.0)
            rec[name] = [{"target_new": new, "target_true": true}]
        recs.append(rec)
    return recs


def test_counterfact_intervals_and_paired_differences():
    from jaxedit import metrics

    rng = np.random.default_rng(0)
    before, after = _records(rng, 200, 0.3), _records(rng, 200, 0.9)
    point = metrics.summarize_counterfact(after)
    res = metrics.counterfact_intervals(after, before, seed=1)
    assert res["unit"] == "record" and res["n"] == 200
    for k in ("ES", "PS", "NS", "S"):
        lo, hi = res["ci"][k]
        assert lo <= point[k] <= hi and hi - lo < 20
    assert res["difference"]["ES"]["significant"] and res["difference"]["ES"]["value"] > 40
    same = metrics.counterfact_intervals(after, after, seed=1)["difference"]
    assert all(not d["significant"] and d["value"] == 0 for d in same.values())
    assert metrics.counterfact_intervals(after, seed=1) == {
        k: v for k, v in res.items() if k != "difference"
    }


def test_generation_entropy_intervals():
    from jaxedit import metrics

    rng = np.random.default_rng(3)
    before = [float(x) for x in rng.normal(6.0, 0.3, 150)]
    after = [b - 0.5 + float(e) for b, e in zip(before, rng.normal(0, 0.1, 150))]
    before[7], after[11] = None, None  # records without prompts are left out
    res = metrics.generation_entropy_intervals(after, before, seed=2)
    vals = [100 * v for v in after if v is not None]
    lo, hi = res["ci"]
    assert res["unit"] == "record" and res["n"] == 149
    assert lo <= np.mean(vals) <= hi and hi - lo < 20
    d = res["difference"]
    assert d["n"] == 148 and d["significant"] and -55 < d["value"] < -45
    assert d["ci"][0] < d["value"] < d["ci"][1] < 0
    same = metrics.generation_entropy_intervals(after, after, seed=2)["difference"]
    assert not same["significant"] and same["value"] == 0
    assert metrics.generation_entropy_intervals([None, None])["n"] == 0


def test_downstream_paired_scores():
    from jaxedit.downstream import power

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    base = np.where(rng.random(500) < 0.6, y, 1 - y)  # 60 % right
    edited = np.where(rng.random(500) < 0.5, y, base)  # fixes about half of the rest
    res = power.paired_scores(y, edited, base, seed=0, n_boot=300)
    assert res["n"] == 500 and res["unit"] == "item"
    acc = res["accuracy"]
    assert acc["ci"][0] <= acc["value"] <= acc["ci"][1]
    assert acc["value"] == pytest.approx(np.mean(edited == y))
    assert res["difference"]["accuracy"]["significant"]
    b = int(np.sum((edited == y) & (base != y)))
    c = int(np.sum((edited != y) & (base == y)))
    assert res["mcnemar"] == {"b": b, "c": c, "p": uncertainty.mcnemar_exact(b, c)}
    assert res["mcnemar"]["p"] < 1e-6
    same = power.paired_scores(y, base, base, seed=0, n_boot=300)
    assert not any(d["significant"] for d in same["difference"].values())
    assert same["mcnemar"]["p"] == 1.0
