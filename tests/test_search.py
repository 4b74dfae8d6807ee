"""Target-activation search (reference §2) on tiny random models that read the GPT-2 tokenizer's
text.

Loss descent, MPES against the fixed-step search, no recompilation for a new learning rate, batched
requests against one-by-one runs, padding requests, and the stop/step/clamp order of §2.6.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxedit import search
from jaxedit.config import SearchConfig
from jaxedit.lm import LanguageModel
from jaxedit.requests import EditRequest

# `lm` (tests/conftest.py): a random 4-block model of each family with the GPT-2 tokenizer's
# vocabulary (50257 ids; 50256 is <|endoftext|>), `jaxedit.testing.tiny_model`.
Z_LAYER = 2
TEMPLATES = (("{}",), ("Hello. {}", "Note that {}"))
# The subject ends every prompt, so the (first) target token is read right at the subject's last
# token, where δ is added: the tiny models' attention barely carries δ elsewhere. The two-token
# target of request 2 widens the search window (and is barely learnt).
REQUESTS = (
    EditRequest(0, "I like {}", "Paris", "Rome"),
    EditRequest(1, "We met {}", "John", " piano"),
    EditRequest(2, "They drink {}", "coffee", " New York"),
)
FIXED = SearchConfig(lr=1.0, num_steps=12, clamp_norm_factor=4.0, loss_threshold=1e-9)
MPES = dataclasses.replace(FIXED, mpes_patience=2, loss_threshold=5e-2)


def run_search(lm: LanguageModel, requests, hp: SearchConfig, pad_to: int | None = None, **kwargs):
    """The search result as host numpy arrays."""
    batch, _ = search.build_search_batch(
        lm.tokenizer,
        requests,
        TEMPLATES,
        pad_requests_to=pad_to,
        max_length=lm.config.max_position_embeddings,
    )
    res = search.search_targets(lm.graphdef, lm.params, batch, hp, Z_LAYER, **kwargs)
    return jax.tree.map(np.asarray, res)


@pytest.fixture(scope="module")
def fixed(lm):
    return run_search(lm, REQUESTS, FIXED)


@pytest.fixture(scope="module")
def mpes(lm):
    return run_search(lm, REQUESTS, MPES)


def test_loss_decreases(fixed):
    for j in range(len(REQUESTS)):
        loss = fixed.history["loss"][:, j]
        loss = loss[np.isfinite(loss)]
        assert len(loss) > 1
        assert loss[-1] < loss[0], (j, loss)
        prob = fixed.history["avg_prob"][:, j]
        assert prob[np.isfinite(prob)][-1] > 100 * prob[0], (j, prob)


def test_mpes_stops_early_with_lower_probability(fixed, mpes, gpt2_tok):
    n = FIXED.num_steps
    np.testing.assert_array_equal(fixed.stop_steps, n - 1)
    assert (mpes.stop_steps <= fixed.stop_steps).all(), mpes.stop_steps
    assert (mpes.stop_steps < fixed.stop_steps).any(), mpes.stop_steps
    assert (mpes.target_prob <= fixed.target_prob + 1e-6).all(), (
        mpes.target_prob,
        fixed.target_prob,
    )
    n_context = sum(len(group) for group in TEMPLATES[1:])
    for j, stop in enumerate(mpes.stop_steps):
        full = n_context * len(search.target_token_ids(gpt2_tok, REQUESTS[j].target_new))
        # Same trajectory as the fixed-step search up to the stop, nothing recorded after it.
        np.testing.assert_allclose(
            mpes.history["loss"][: stop + 1, j], fixed.history["loss"][: stop + 1, j], rtol=1e-5
        )
        assert np.isnan(mpes.history["loss"][stop + 1 :, j]).all()
        np.testing.assert_allclose(
            mpes.target_prob[j], fixed.history["avg_prob"][stop, j], rtol=1e-5
        )
        # The counter is cumulative: the stop comes at the patience-th all-correct iteration.
        successes = int((mpes.history["num_correct"][: stop + 1, j] == full).sum())
        if stop < n - 1:
            assert successes == MPES.mpes_patience, (j, mpes.history["num_correct"][:, j])
            assert mpes.history["num_correct"][stop, j] == full
        else:
            assert successes < MPES.mpes_patience


def test_new_learning_rate_does_not_recompile(lm, fixed):
    before = search._run._cache_size(), search._prepare._cache_size()
    other = run_search(lm, REQUESTS, dataclasses.replace(FIXED, lr=0.37))
    assert (search._run._cache_size(), search._prepare._cache_size()) == before
    # The new learning rate is used (same start, different trajectory).
    assert not np.allclose(other.history["loss"][1:], fixed.history["loss"][1:])
    np.testing.assert_allclose(other.history["loss"][0], fixed.history["loss"][0], rtol=1e-6)


def test_batched_equals_one_by_one(lm, mpes):
    assert len(set(mpes.stop_steps.tolist())) > 1  # requests stop at different iterations
    for j, req in enumerate(REQUESTS):
        alone = run_search(lm, [req], MPES)
        assert alone.stop_steps[0] == mpes.stop_steps[j]
        scale = np.linalg.norm(mpes.targets[j])
        np.testing.assert_allclose(alone.targets[0], mpes.targets[j], rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(alone.target_init[0], mpes.target_init[j], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(alone.target_prob[0], mpes.target_prob[j], rtol=1e-3)


def test_compaction_shrinks_the_batch_and_changes_nothing(lm, monkeypatch):
    widths = []
    run = search._run

    def spy(graphdef, params, ctx, state, *args, **kwargs):
        widths.append(ctx["target_ids"].shape[0])
        return run(graphdef, params, ctx, state, *args, **kwargs)

    monkeypatch.setattr(search, "_run", spy)
    full = run_search(lm, REQUESTS, MPES, pad_to=4, min_bucket=0)
    assert widths == [4]
    widths.clear()
    compact = run_search(lm, REQUESTS, MPES, pad_to=4, min_bucket=1)
    # The requests stop at different iterations, so the batch shrinks as they do (4 -> 2 -> 1 here).
    assert len(widths) > 1 and widths == sorted(widths, reverse=True) and widths[-1] < 4, widths
    np.testing.assert_array_equal(compact.stop_steps, full.stop_steps)
    scale = np.linalg.norm(full.targets, axis=-1, keepdims=True)
    np.testing.assert_allclose(compact.targets, full.targets, rtol=0, atol=1e-5 * scale.max())
    np.testing.assert_allclose(compact.target_prob, full.target_prob, rtol=1e-4)
    np.testing.assert_allclose(compact.loss, full.loss, rtol=1e-4, atol=1e-6)
    for k, v in full.history.items():  # every iteration of every request, NaN / -1 after its stop
        np.testing.assert_allclose(compact.history[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(compact.delta[3], 0.0)  # the padding request never moves


def test_padding_requests_change_nothing_and_start_stopped(lm):
    alone = run_search(lm, REQUESTS[:1], MPES)
    padded = run_search(lm, REQUESTS[:1], MPES, pad_to=3)
    assert padded.targets.shape[0] == 3
    assert padded.stop_steps[0] == alone.stop_steps[0] > 0
    scale = np.linalg.norm(alone.targets[0])
    np.testing.assert_allclose(padded.targets[0], alone.targets[0], rtol=0, atol=1e-4 * scale)
    # Padding rows copy request 0 but never move: zero δ, stop step 0, nothing in the history.
    np.testing.assert_array_equal(padded.delta[1:], 0.0)
    np.testing.assert_array_equal(padded.stop_steps[1:], 0)
    np.testing.assert_array_equal(padded.targets[1:], padded.target_init[1:])
    assert np.isnan(padded.history["loss"][:, 1:]).all()
    assert (padded.history["num_correct"][:, 1:] == -1).all()


def test_last_iteration_only_evaluates_and_clamp_holds(lm):
    hp = dataclasses.replace(FIXED, clamp_norm_factor=0.75)  # a traced float: same executable
    res = run_search(lm, REQUESTS, hp)
    n = hp.num_steps
    np.testing.assert_array_equal(res.stop_steps, n - 1)
    assert np.isfinite(res.history["loss"]).all()  # all n iterations evaluated
    np.testing.assert_array_equal(res.history["delta_norm"][0], 0.0)
    # No Adam step after the last evaluation: the returned δ is the one evaluated at iteration n-1.
    np.testing.assert_allclose(
        np.linalg.norm(res.delta, axis=-1), res.history["delta_norm"][n - 1], rtol=1e-5
    )
    np.testing.assert_allclose(res.targets, res.target_init + res.delta, rtol=1e-6, atol=1e-6)
    bound = hp.clamp_norm_factor * np.linalg.norm(res.target_init, axis=-1)
    assert (res.history["delta_norm"] <= bound * (1 + 1e-5)).all()
    assert (res.history["delta_norm"].max(0) >= bound * (1 - 1e-4)).all()  # the clamp was active
