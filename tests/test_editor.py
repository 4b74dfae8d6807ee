"""The sequential editor (reference §3, §4, §10) on tiny random models with the GPT-2 tokenizer.

The previous-edit cache, edits that land, exact rollback, failure atomicity (bad requests, NaNs),
replaying given targets, every method once, and the reference-hparams import.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit import config, editor, solve, stats, testing
from jaxedit.models import rewrite_path
from jaxedit.requests import EditRequest, RequestError

# `lm` (tests/conftest.py): a random 4-block model of each family with the GPT-2 vocabulary; the
# templates and the fixed-step search are test_search's.
VOCAB = 50257  # the GPT-2 tokenizer's
TEMPLATES = (("{}",), ("Hello. {}", "Note that {}"))
FIXED = config.SearchConfig(lr=1.0, num_steps=12, clamp_norm_factor=4.0, loss_threshold=1e-9)
LAYERS = (1, 2)
COV_WEIGHT = 1.0  # small λ_p so that the tiny model's edits land
NORM_LAMBDA = 1.0  # ENCORE's λ_n
BATCHES = (  # subject last, one-token targets (see test_search)
    (EditRequest(0, "I like {}", "Paris", "Rome"), EditRequest(1, "We met {}", "John", " piano")),
    (
        EditRequest(2, "They drink {}", "coffee", " snow"),
        EditRequest(3, "She saw {}", "Mary", " Tokyo"),
    ),
    (
        EditRequest(4, "He plays {}", "music", " tea"),
        EditRequest(5, "We visited {}", "Berlin", " Madrid"),
    ),
)


def make_editor(lm, layer_stats, method: str, max_journal: int = 16) -> editor.Editor:
    solve_cfg = config.SolveConfig(
        cov_weight=COV_WEIGHT, norm_lambda=NORM_LAMBDA if method == "ENCORE" else 0.0
    )
    cfg = config.EditConfig(
        method=method,
        layers=LAYERS,
        search=dataclasses.replace(FIXED),
        solve=solve_cfg,
        templates=TEMPLATES,
    )
    return editor.Editor(lm, cfg, layer_stats, TEMPLATES, max_journal=max_journal)


def apply_batches(ed: editor.Editor, batches) -> tuple[list[editor.EditState], list]:
    """States [initial, after batch 1, ...] and the reports."""
    states, reports = [ed.init_state()], []
    for batch in batches:
        state, report = ed.apply(states[-1], list(batch))
        states.append(state)
        reports.append(report)
    return states, reports


def kernel(params, layer_path) -> np.ndarray:
    for key in layer_path:
        params = params[key]
    return np.asarray(params[...])


def leaves(tree) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(tree)]


def assert_same(a, b):
    """Bit-identical pytrees (params or prev_kkt dicts)."""
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def snapshot(state: editor.EditState) -> dict:
    return dict(
        params=leaves(state.params),
        kkt=leaves(state.prev_kkt),
        journal=state.journal,
        num_edits=state.num_edits,
        base=leaves(state.base_kernels),
    )


def assert_unchanged(state: editor.EditState, snap: dict):
    now = snapshot(state)
    assert now["journal"] is snap["journal"] and now["num_edits"] == snap["num_edits"]
    for key in ("params", "kkt", "base"):
        assert len(now[key]) == len(snap[key])
        assert all(np.array_equal(x, y) for x, y in zip(now[key], snap[key])), key


def target_probs(lm, batch) -> np.ndarray:
    """Probability of each request's (one-token) new target after its filled prompt."""
    logits, lengths = lm.logits([r.filled_prompt() for r in batch])
    last = logits[np.arange(len(batch)), lengths - 1].astype(np.float64)
    p = np.exp(last - last.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ids = [lm.tokenizer(" " + r.target_new.strip())["input_ids"][0] for r in batch]
    return p[np.arange(len(batch)), ids]


@pytest.fixture(scope="module")
def llama(gpt2_tok):
    return testing.tiny_model("llama", gpt2_tok)


def _layer_stats(lm) -> editor.LayerStats:
    """C0 from random token documents; AlphaEdit's projector onto the lower half of its spectrum."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, VOCAB - 1, 48).tolist() for _ in range(6)]
    cov, _ = stats.collect_second_moments(lm, docs, LAYERS)
    out = editor.LayerStats(cov={l: jnp.asarray(c) for l, c in cov.items()})
    for l, c in cov.items():
        _, vecs = np.linalg.eigh(c.astype(np.float64))
        low = vecs[:, : c.shape[0] // 2]
        out.null_proj[l] = jnp.asarray(low @ low.T, jnp.float32)
    return out


@pytest.fixture(scope="module")
def lm_stats(lm):
    return _layer_stats(lm)


@pytest.fixture(scope="module")
def llama_stats(llama):
    return _layer_stats(llama)


def _two_batches(lm, layer_stats, method):
    ed = make_editor(lm, layer_stats, method)
    return (ed, *apply_batches(ed, BATCHES[:2]))


@pytest.fixture(scope="module")
def encore(llama, llama_stats):
    """ENCORE on the llama model: the editor, states [s0, s1, s2] and the two reports."""
    return _two_batches(llama, llama_stats, "ENCORE")


@pytest.fixture(scope="module")
def alphaedit(llama, llama_stats):
    return _two_batches(llama, llama_stats, "AlphaEdit")


def _first_layer_update(ed, report, prev_kkt):
    """§3/§4 at the first layer: R = (Z - h0) / L, dW = (λ_p C0 + λ_n I + S_prev + K Kᵀ)⁻¹ K Rᵀ."""
    l = LAYERS[0]
    resid = jnp.asarray((report.targets - report.target_init).T / len(LAYERS))
    return solve.memit_update(
        jnp.asarray(report.keys[l]),
        resid,
        ed.stats.cov[l],
        cov_weight=float(ed.cfg.solve.cov_weight),
        norm_lambda=float(ed.cfg.solve.norm_lambda),
        prev_kkt=prev_kkt,
    )


def assert_close_update(got, want):
    """Within float32 noise (~1e-7 here); leaving S_prev out or in changes dW by ~10%."""
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("run", ["encore", "alphaedit"])
def test_prev_kkt_is_the_sum_of_key_grams(run, request):
    ed, states, reports = request.getfixturevalue(run)
    assert ed.uses_prev_cache
    for l in LAYERS:
        grams = [r.keys[l].astype(np.float64) @ r.keys[l].astype(np.float64).T for r in reports]
        scale = np.abs(grams[0]).max()
        np.testing.assert_allclose(states[1].prev_kkt[l], grams[0], rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(
            states[2].prev_kkt[l], grams[0] + grams[1], rtol=1e-5, atol=1e-6 * scale
        )
    if ed.cfg.method == "ENCORE":  # the second batch's update used the first batch's keys
        want = _first_layer_update(ed, reports[1], states[1].prev_kkt[LAYERS[0]])
        assert_close_update(reports[1].deltas[LAYERS[0]], want)


def test_original_memit_has_no_previous_edit_cache(llama, llama_stats):
    ed = make_editor(llama, llama_stats, "MEMIT")
    assert not ed.uses_prev_cache
    states, reports = apply_batches(ed, BATCHES[:2])
    assert all(s.prev_kkt == {} for s in states)
    assert all(e.kkt == {} for e in states[2].journal)
    want = _first_layer_update(ed, reports[1], None)  # no S_prev term in batch 2
    assert_close_update(reports[1].deltas[LAYERS[0]], want)


@pytest.mark.parametrize("method", ["MEMIT_seq", "ENCORE"])
def test_edit_raises_new_target_probability(method, lm, lm_stats):
    ed = make_editor(lm, lm_stats, method)
    batch = list(BATCHES[0])
    state, report = ed.apply(ed.init_state(), batch)
    before = target_probs(lm, batch)
    after = target_probs(ed.edited_model(state), batch)
    assert (after > 0.1).all() and (after > 100 * before).all(), (before, after)
    assert (report.target_prob > 0.1).all()


def test_rollback_restores_bit_identical_state(encore, llama):
    ed, (s0, s1, s2), _ = encore
    back1 = ed.rollback(s2, 1)
    assert_same(back1.params, s1.params)
    assert_same(back1.prev_kkt, s1.prev_kkt)
    assert back1.num_edits == s1.num_edits == len(BATCHES[0])
    assert back1.journal == s1.journal
    back2 = ed.rollback(s2, 2)
    assert_same(back2.params, llama.params)
    assert_same(back2.prev_kkt, s0.prev_kkt)
    assert back2.num_edits == 0 and back2.journal == ()
    for k in (3, -1):
        with pytest.raises(ValueError):
            ed.rollback(s2, k)
    assert_same(ed.rollback(back1, 1).params, llama.params)  # rolling back a rolled-back state


def test_rollback_with_short_journal(llama, llama_stats):
    ed = make_editor(llama, llama_stats, "ENCORE", max_journal=1)
    states, _ = apply_batches(ed, BATCHES)
    assert len(states[-1].journal) == 1
    back = ed.rollback(states[3], 1)
    assert_same(back.params, states[2].params)
    assert_same(back.prev_kkt, states[2].prev_kkt)
    assert back.num_edits == states[2].num_edits
    with pytest.raises(ValueError):
        ed.rollback(states[3], 2)


BAD_BATCHES = {
    "target_new_equals_target_true": [
        BATCHES[2][0],
        EditRequest(9, "We visited {}", "Berlin", " Madrid", "madrid "),
    ],
    "subject_not_in_prompt": [
        BATCHES[2][0],
        EditRequest(9, "We visited Rome", "Berlin", " Madrid"),
    ],
    "duplicate_prompt_and_subject": [BATCHES[2][0], dataclasses.replace(BATCHES[2][0], case_id=9)],
    "duplicate_case_id": [BATCHES[2][0], dataclasses.replace(BATCHES[2][1], case_id=4)],
}


@pytest.mark.parametrize("bad", sorted(BAD_BATCHES))
def test_bad_request_leaves_state_unchanged(bad, encore):
    ed, (_, s1, _), _ = encore
    snap = snapshot(s1)
    with pytest.raises(RequestError) as err:
        ed.apply(s1, BAD_BATCHES[bad])
    assert {p.index for p in err.value.problems} == {1}  # the second record is blamed
    assert_unchanged(s1, snap)


def test_nan_target_raises_edit_error(encore):
    ed, (_, s1, _), reports = encore
    snap = snapshot(s1)
    z = reports[0].targets.copy()
    z[1, 3] = np.nan
    with pytest.raises(editor.EditError):
        ed.apply(s1, list(BATCHES[2]), targets=z)
    assert_unchanged(s1, snap)


def test_nan_statistics_raise_edit_error(encore, llama, llama_stats):
    _, (_, s1, _), _ = encore
    cov = dict(llama_stats.cov)
    cov[LAYERS[-1]] = cov[LAYERS[-1]].at[5, 5].set(jnp.nan)  # the last layer: after a good one
    ed = make_editor(llama, editor.LayerStats(cov=cov), "ENCORE")
    snap = snapshot(s1)
    with pytest.raises(editor.EditError):
        ed.apply(s1, list(BATCHES[2]))
    assert_unchanged(s1, snap)


def test_given_targets_skip_the_search(encore, monkeypatch):
    ed, (s0, s1, _), reports = encore

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran although targets were given")

    monkeypatch.setattr(editor, "search_requests", no_search)
    state, report = ed.apply(s0, list(BATCHES[0]), targets=reports[0].targets)
    assert np.isnan(report.stop_steps).all()
    for l in LAYERS:
        np.testing.assert_allclose(report.deltas[l], reports[0].deltas[l], rtol=1e-6, atol=1e-7)
    assert_same(state.prev_kkt, s1.prev_kkt)
    with pytest.raises(ValueError):
        ed.apply(s0, list(BATCHES[0]), targets=reports[0].targets[:1])  # wrong shape


def test_search_in_chunks_matches_one_pass(llama, llama_stats):
    """`search.max_requests` searches a batch in chunks: the same targets and stop steps as one
    pass (each request's search is independent), and the update is still one solve."""
    one = make_editor(llama, llama_stats, "ENCORE")
    ed = make_editor(llama, llama_stats, "ENCORE")
    ed.cfg = dataclasses.replace(ed.cfg, search=dataclasses.replace(FIXED, max_requests=1))
    batch = [*BATCHES[0], *BATCHES[1]]  # 4 requests: 4 chunks of 1
    _, ref = one.apply(one.init_state(), batch)
    state, rep = ed.apply(ed.init_state(), batch)
    np.testing.assert_array_equal(rep.stop_steps, ref.stop_steps)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731 (rounding-level)
    assert rel(rep.targets, ref.targets) < 1e-5
    assert rep.history["loss"].shape == ref.history["loss"].shape == (FIXED.num_steps, 4)
    assert [p.get("case_id") for p in rep.prompts] == [p.get("case_id") for p in ref.prompts]
    assert rep.keys[LAYERS[0]].shape[1] == 4 and len(state.journal) == 1
    for l in LAYERS:
        assert rel(rep.deltas[l], ref.deltas[l]) < 1e-4
    with pytest.raises(config.ConfigValueError, match="max_requests"):
        dataclasses.replace(FIXED, max_requests=-1).validate()


@pytest.mark.parametrize("method", config.METHODS)
def test_every_method_runs_one_batch(method, lm, lm_stats):
    ed = make_editor(lm, lm_stats, method)
    s0 = ed.init_state()
    state, report = ed.apply(s0, list(BATCHES[0]))
    f, d = lm.config.intermediate_size, lm.config.hidden_size
    assert state.num_edits == len(BATCHES[0]) and len(state.journal) == 1
    for l in LAYERS:
        delta = report.deltas[l]
        assert delta.shape == (f, d) and np.isfinite(delta).all() and np.abs(delta).max() > 0
        assert report.keys[l].shape == (f, len(BATCHES[0]))
        path = rewrite_path(lm.config, l)
        np.testing.assert_array_equal(kernel(state.params, path), kernel(s0.params, path) + delta)
    assert set(state.prev_kkt) == (set(LAYERS) if ed.uses_prev_cache else set())


def test_from_reference_hparams(tmp_path):
    base = config.EditConfig()
    hp = {
        "layers": [3, 4],
        "v_lr": 0.1,
        "v_num_grad_steps": 20,
        "prob_cutoff": -2,
        "L2": 5.0,
        "mom2_update_weight": 100.0,
        "update_norm_lambda": 2.0,
        "fact_token": "subject_last",
    }
    cfg = config.from_reference_hparams(hp, base=base, method="ENCORE")
    assert cfg.layers == (3, 4) and cfg.method == "ENCORE"
    assert (cfg.search.lr, cfg.search.num_steps) == (0.1, 20)
    assert (cfg.search.mpes_patience, cfg.search.stop_prob) == (2, 0.0)
    assert (cfg.solve.l2, cfg.solve.cov_weight, cfg.solve.norm_lambda) == (5.0, 100.0, 2.0)
    assert base == config.EditConfig()  # the base is not modified

    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({"prob_cutoff": 0.9, "L2": 7.5}))
    cfg = config.from_reference_hparams(path)
    assert (cfg.search.mpes_patience, cfg.search.stop_prob, cfg.solve.l2) == (0, 0.9, 7.5)

    with pytest.raises(ValueError, match="bogus"):
        config.from_reference_hparams({"v_lr": 0.1, "bogus": 1})
