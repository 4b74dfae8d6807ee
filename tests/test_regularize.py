"""RECT and PRUNE (jaxedit.regularize, WORKSPACE.md): the pure functions, the editor
(insertion-time mask, journal, rollback, failure atomicity), the configs, and PRUNE at the end of an
`experiments/edit.py` run (resume-safe)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit import config, corpus, editor, models, overrides, regularize, stats, testing
from jaxedit.checkpoint import inspect as inspect_checkpoint
from jaxedit.lm import LanguageModel
from jaxedit.models import rewrite_path
from jaxedit.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = (("{}",), ("Hello. {}", "Note that {}"))
LAYERS = (1, 2)
BATCHES = (  # subject last, one-token targets (as tests/test_editor.py)
    (EditRequest(0, "I like {}", "Paris", "Rome"), EditRequest(1, "We met {}", "John", " piano")),
    (
        EditRequest(2, "They drink {}", "coffee", " snow"),
        EditRequest(3, "She saw {}", "Mary", " Tokyo"),
    ),
)


# --------------------------------------------------------------------------------------------------
# PRUNE's restraint and reconstruction


def test_restraint_is_identity_up_to_sigma_max_and_continuous_there():
    smax = 3.0
    below = np.array([0.0, 1e-6, 0.5, 2.999, smax], np.float32)
    np.testing.assert_array_equal(np.asarray(regularize.prune_restrain(below, smax, math.e)), below)
    for base in (math.e, 1.2):
        just_above = np.float32(smax) * (1 + np.float32(1e-5))
        got = float(regularize.prune_restrain(np.array([just_above]), smax, base)[0])
        assert abs(got - smax) < 1e-4  # F(σ_max⁺) → σ_max: no jump
        s = np.array([4.0, 10.0, 1000.0], np.float32)
        want = np.log(s.astype(np.float64)) / np.log(base) - np.log(smax) / np.log(base) + smax
        got_s = np.asarray(regularize.prune_restrain(s, smax, base))
        np.testing.assert_allclose(got_s, want, rtol=1e-6)
        assert np.all(np.diff(got_s) > 0)  # still increasing
        if base == math.e:  # slope 1/σ < 1 above σ_max = 3: restrained below the identity
            assert np.all(got_s < s)


def _orthonormal(rng, n, k):
    q, _ = np.linalg.qr(rng.normal(size=(n, k)))
    return q[:, :k]


def test_prune_reconstructs_exactly_when_nothing_is_restrained():
    rng = np.random.default_rng(0)
    w_ref = rng.normal(size=(37, 23)).astype(np.float32) * 2.0  # σ_max ≈ 2(√37 + √23) ≈ 22
    delta = rng.normal(size=(37, 23)).astype(np.float32) * 0.1  # σ ≤ ≈ 1.1
    out, smax, count = regularize.prune_details(delta, w_ref, math.e)
    assert int(count) == 0
    np.testing.assert_allclose(float(smax), np.linalg.svd(w_ref, compute_uv=False)[0], rtol=1e-5)
    rel = np.linalg.norm(np.asarray(out) - delta) / np.linalg.norm(delta)
    assert rel < 1e-5, rel


def test_prune_shrinks_exactly_the_large_singular_value():
    rng = np.random.default_rng(1)
    u, v = _orthonormal(rng, 29, 5), _orthonormal(rng, 17, 5)
    s = np.array([50.0, 4.0, 2.0, 1.0, 0.5])
    delta = (u * s) @ v.T
    w_ref = np.diag(np.array([5.0] + [1.0] * 16))  # σ_max = 5
    w_ref = np.concatenate([w_ref, np.zeros((12, 17))]).astype(np.float32)
    for base in (math.e, 1.2):
        out = np.asarray(regularize.prune(delta.astype(np.float32), w_ref, base), np.float64)
        s_out = np.linalg.svd(out, compute_uv=False)[:5]
        want = s.copy()
        want[0] = math.log(50.0, base) - math.log(5.0, base) + 5.0
        np.testing.assert_allclose(s_out, want, rtol=1e-5)
        np.testing.assert_allclose(out, (u * want) @ v.T, atol=1e-4)  # same singular vectors


def _dot_precisions(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.params["precision"]
        for value in eqn.params.values():
            if hasattr(value, "eqns"):  # a nested (closed) jaxpr: jit, custom rules
                yield from _dot_precisions(value)


def test_prune_sets_its_own_precision_and_dtype():
    rng = np.random.default_rng(4)
    delta = rng.normal(size=(13, 7)).astype(np.float32)
    w_ref = rng.normal(size=(13, 7)).astype(jnp.bfloat16)  # cast to float32 inside
    jaxpr = jax.make_jaxpr(regularize.prune)(delta, w_ref, math.e)
    precisions = list(_dot_precisions(jaxpr))
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert precisions and all(p == highest for p in precisions), precisions
    assert regularize.prune(delta, w_ref, math.e).dtype == jnp.float32


def _pruned(reference, double_add, previous, current, delta, original):
    cfg = config.RegularizeConfig(
        prune=True, prune_reference=reference, prune_double_add=double_add
    )
    _, onto, new, info = regularize.prune_kernels(
        cfg, {0: previous}, {0: current}, {0: delta}, {0: original}, add=lambda w, d: w + d
    )
    return np.asarray(new[0]), onto, info["0"]


def test_official_mode_adds_the_last_update_twice_and_original_mode_keeps_w_t():
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(31, 19)).astype(np.float32)
    d1, d2 = (rng.normal(size=(31, 19)).astype(np.float32) * 0.05 for _ in range(2))
    w_prev = w0 + d1  # W_{T-1}
    w_t = w_prev + d2  # W_T
    scale = np.linalg.norm(d2)
    new, onto, info = _pruned("official_last_batch", True, w_prev, w_t, d2, w0)
    assert onto == "current" and info["restrained"] == 0
    assert np.linalg.norm(new - (w_prev + 2 * d2)) / scale < 1e-5
    new, onto, _ = _pruned("official_last_batch", False, w_prev, w_t, d2, w0)
    assert onto == "previous" and np.linalg.norm(new - w_t) / scale < 1e-5
    new, onto, info = _pruned("original", False, w_prev, w_t, None, w0)
    assert onto == "original" and info["restrained"] == 0
    assert np.linalg.norm(new - w_t) / np.linalg.norm(d1 + d2) < 1e-5


# --------------------------------------------------------------------------------------------------
# RECT's mask


def test_rect_keeps_n_minus_k_plus_one_entries_by_relative_change():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(37, 23)).astype(np.float32)
    dw = rng.normal(size=(37, 23)).astype(np.float32)
    n = w.size
    r = np.abs(dw.astype(np.float64) / (w + np.float32(1e-8)))
    assert len(np.unique(r)) == n  # no ties
    for keep in (40, 20, 33.3):
        k = int(n * (100 - keep) / 100)
        mask = np.asarray(regularize.rect_mask(w, dw, keep))
        assert mask.sum() == n - k + 1, keep
        order = np.argsort(r, axis=None)
        np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(order[k - 1 :]))
        masked = np.asarray(regularize.rect(w, dw, keep))
        np.testing.assert_array_equal(masked, np.where(mask, dw, 0))
    assert np.asarray(regularize.rect_mask(w, dw, 100)).all()
    # Relative to the weight: a small change of a tiny weight beats a large change of a big one.
    # r = 10, 0.01, 0.001, 0.5; keep 25 %: k = 3, τ = 0.5, N - k + 1 = 2 kept.
    w2 = np.array([[1e-3, 100.0, 1.0, 10.0]], np.float32)
    dw2 = np.array([[1e-2, 1.0, 1e-3, 5.0]], np.float32)
    want = [[True, False, False, True]]
    np.testing.assert_array_equal(np.asarray(regularize.rect_mask(w2, dw2, 25)), want)


# --------------------------------------------------------------------------------------------------
# The editor


@pytest.fixture(scope="module")
def tiny(gpt2_tok):
    lm = testing.tiny_model("llama", gpt2_tok)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, len(gpt2_tok) - 1, 48).tolist() for _ in range(6)]
    cov, _ = stats.collect_second_moments(lm, docs, LAYERS)
    return lm, editor.LayerStats(cov={l: jnp.asarray(c) for l, c in cov.items()})


def _editor(tiny, max_journal=16, **regularize_fields) -> editor.Editor:
    lm, layer_stats = tiny
    cfg = config.EditConfig(
        method="MEMIT_seq",
        layers=LAYERS,
        search=config.SearchConfig(lr=1.0, num_steps=12, clamp_norm_factor=4.0),
        solve=config.SolveConfig(cov_weight=1.0),
        regularize=config.RegularizeConfig(**regularize_fields),
        templates=TEMPLATES,
    )
    return editor.Editor(lm, cfg, layer_stats, TEMPLATES, max_journal=max_journal)


def _kernels(ed: editor.Editor, state) -> dict[int, np.ndarray]:
    out = {}
    for l in LAYERS:
        node = state.params
        for p in rewrite_path(ed.model.config, l):
            node = node[p]
        out[l] = np.array(node[...])
    return out


def _run(ed, state=None, batches=BATCHES):
    states, reports = [state or ed.init_state()], []
    for b in batches:
        s, r = ed.apply(states[-1], list(b))
        states.append(s)
        reports.append(r)
    return states, reports


def _assert_kernels_equal(a: dict, b: dict):
    for l in LAYERS:
        np.testing.assert_array_equal(a[l], b[l])


def test_rect_keep_100_reproduces_memit_exactly(tiny):
    plain, rect = _editor(tiny), _editor(tiny, rect_keep_percent=100.0)
    (_, *a), _ = _run(plain)
    (_, *b), reports = _run(rect)
    for sa, sb in zip(a, b):
        _assert_kernels_equal(_kernels(plain, sa), _kernels(rect, sb))
        for l in LAYERS:
            np.testing.assert_array_equal(np.asarray(sa.prev_kkt[l]), np.asarray(sb.prev_kkt[l]))
    assert reports[0].regularizer["rect"]["1"]["kept"] == 43 * 30  # everything


def test_rect_masks_against_the_current_weights_after_full_spreading(tiny):
    rect, plain = _editor(tiny, rect_keep_percent=40.0), _editor(tiny)
    (s0, s1, s2), reports = _run(rect)
    w1 = _kernels(rect, s1)  # the edited weights the second batch is added to
    # The full update of batch 2 from the same state and targets, without the mask: the keys of
    # layer 2 must come from a model holding layer 1's full update (the repository's spreading).
    _, full = plain.apply(s1, list(BATCHES[1]), targets=reports[1].targets)
    n = w1[1].size
    for l in LAYERS:
        mask = np.asarray(regularize.rect_mask(w1[l], full.deltas[l], 40.0))
        assert mask.sum() == n - int(n * 60 / 100) + 1
        np.testing.assert_array_equal(reports[1].deltas[l], np.where(mask, full.deltas[l], 0))
        np.testing.assert_array_equal(_kernels(rect, s2)[l], w1[l] + reports[1].deltas[l])
    # The mask against the unedited W0 is another one: the test above can tell them apart.
    w0 = _kernels(rect, s0)[1]
    assert not np.array_equal(
        np.asarray(regularize.rect_mask(w0, full.deltas[1], 40.0)),
        np.asarray(regularize.rect_mask(w1[1], full.deltas[1], 40.0)),
    )
    # The previous-edit cache holds every batch's keys, masked or not.
    np.testing.assert_allclose(
        np.asarray(s2.prev_kkt[1]),
        sum(r.keys[1] @ r.keys[1].T for r in reports),
        rtol=1e-5,
        atol=1e-5,
    )


def test_rollback_after_rect_and_every_batch_prune_is_exact(tiny):
    for fields in (
        dict(rect_keep_percent=40.0),
        dict(prune=True, prune_when="every_batch"),
        dict(
            rect_keep_percent=20.0,
            prune=True,
            prune_when="every_batch",
            prune_reference="original",
            prune_log_base=1.2,
            prune_double_add=False,
        ),
    ):
        ed = _editor(tiny, **fields)
        states, reports = _run(ed)
        if fields.get("prune"):
            assert set(reports[1].regularizer["prune"]) == {"1", "2"}
        back = ed.rollback(states[2], 1)
        _assert_kernels_equal(_kernels(ed, back), _kernels(ed, states[1]))
        _assert_kernels_equal(_kernels(ed, ed.rollback(states[2], 2)), _kernels(ed, states[0]))
        # A short journal folds PRUNE into the base exactly as well.
        short = _editor(tiny, max_journal=1, **fields)
        s, _ = _run(short, batches=BATCHES + BATCHES[:1])
        _assert_kernels_equal(_kernels(short, short.rollback(s[3], 1)), _kernels(short, s[2]))


def test_prune_at_end_official_and_original_and_rollback(tiny):
    ed = _editor(tiny, prune=True)  # official: last batch, ln, added on top
    (_, s1, s2), reports = _run(ed)
    pruned, info = ed.prune(s2)
    w1, w2, wp = _kernels(ed, s1), _kernels(ed, s2), _kernels(ed, pruned)
    for l in LAYERS:
        d = reports[1].deltas[l]  # Δ of the last batch; σ_max of W_{T-1}
        s_d, s_w = (np.linalg.svd(x, compute_uv=False) for x in (d, w1[l]))
        assert info[str(l)]["restrained"] == int(np.sum(s_d > s_w[0]))
        want = w2[l] + np.asarray(regularize.prune(d, w1[l], math.e))  # W_T + Δ'
        np.testing.assert_array_equal(wp[l], want)
        if info[str(l)]["restrained"] == 0:  # then Δ' = Δ: MEMIT with its last batch twice
            assert np.linalg.norm(wp[l] - (w1[l] + 2 * d)) / np.linalg.norm(d) < 1e-5
    _assert_kernels_equal(_kernels(ed, ed.rollback(pruned, 1)), w1)  # the batch and PRUNE
    with pytest.raises(ValueError, match="already ran"):
        ed.prune(pruned)
    assert pruned.num_edits == s2.num_edits
    np.testing.assert_array_equal(np.asarray(pruned.prev_kkt[1]), np.asarray(s2.prev_kkt[1]))

    orig = _editor(
        tiny, prune=True, prune_reference="original", prune_log_base=1.2, prune_double_add=False
    )
    (o0, _, o2), _ = _run(orig)
    po, info = orig.prune(o2)
    w0, wo2, wpo = _kernels(orig, o0), _kernels(orig, o2), _kernels(orig, po)
    for l in LAYERS:
        want = w0[l] + np.asarray(regularize.prune(wo2[l] - w0[l], w0[l], 1.2))  # W0 + Δ'
        np.testing.assert_array_equal(wpo[l], want)
        if info[str(l)]["restrained"] == 0:  # then W0 + Δ' = W_T
            assert np.linalg.norm(wpo[l] - wo2[l]) / np.linalg.norm(wo2[l] - w0[l]) < 1e-5
    # After a restore (empty journal) the original mode still runs; the official one refuses.
    restored = orig.restore_state(orig.state_arrays(o2))
    again, _ = orig.prune(restored)
    _assert_kernels_equal(_kernels(orig, orig.rollback(again, 0)), _kernels(orig, again))
    with pytest.raises(ValueError, match="journal"):
        ed.prune(ed.restore_state(ed.state_arrays(s2)))


def test_a_failed_prune_leaves_the_state_as_it_was(tiny, monkeypatch):
    ed = _editor(tiny, prune=True, prune_when="every_batch")
    s0 = ed.init_state()
    before = _kernels(ed, s0)

    def nan_prune(delta, w_ref, log_base):
        return jnp.full(delta.shape, jnp.nan), jnp.float32(1.0), jnp.int32(0)

    monkeypatch.setattr(regularize, "prune_details", nan_prune)
    with pytest.raises(editor.EditError, match="PRUNE"):
        ed.apply(s0, list(BATCHES[0]))
    _assert_kernels_equal(_kernels(ed, s0), before)
    assert s0.journal == () and s0.num_edits == 0


# --------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(rect_keep_percent=150.0), r"regularize\.rect_keep_percent=150\.0"),
        (dict(rect_keep_percent=-1.0), r"regularize\.rect_keep_percent=-1\.0"),
        (dict(rect_keep_percent=float("nan")), r"regularize\.rect_keep_percent=nan"),
        (dict(prune_reference="last"), r"regularize\.prune_reference='last'"),
        (dict(prune_when="often"), r"regularize\.prune_when='often'"),
        (dict(prune_log_base=1.0), r"regularize\.prune_log_base=1\.0"),
        (dict(prune_log_base=0.5), r"regularize\.prune_log_base=0\.5"),
        (dict(prune=True, prune_reference="original"), r"regularize\.prune_double_add=True"),
    ],
)
def test_bad_regularizer_values_name_the_field(fields, match):
    cfg = config.EditConfig(regularize=config.RegularizeConfig(**fields))
    with pytest.raises(config.ConfigValueError, match=match):
        cfg.validate()


def test_defaults_are_off_and_overrides_and_hparams_import_keep_the_section():
    cfg = config.EditConfig()
    assert not cfg.regularize.rect and not cfg.regularize.prune
    cfg = overrides.override(cfg, "regularize.rect_keep_percent", "40")
    cfg = overrides.override(cfg, "regularize.prune_when", "every_batch")
    assert cfg.regularize.rect_keep_percent == 40.0 and cfg.regularize.prune_when == "every_batch"
    with pytest.raises(overrides.OverrideError, match=r"regularize\.prune_reference"):
        overrides.override(cfg, "regularize.prune_reference", "newest")
    # The official MEMIT_rect JSON (hparams/MEMIT_rect/llama3-8b.json, its numbers) imports onto
    # a config with RECT on; the regularizer comes from the config, as the driver's --alg_name.
    official = dict(
        layers=[4, 5, 6, 7, 8],
        v_num_grad_steps=25,
        v_lr=0.5,
        mom2_update_weight=15000,
        add_prev_edits=True,
        update_norm_lambda=0,
        prob_cutoff=-1,
        spectral_norm=2,
        condition_num=50,
        calculate_norms=False,
    )
    got = config.from_reference_hparams(official, base=cfg, method="MEMIT_seq")
    assert got.regularize == cfg.regularize and got.regularize is not cfg.regularize
    assert got.search.mpes_patience == 1 and got.solve.cov_weight == 15000.0


# --------------------------------------------------------------------------------------------------
# PRUNE at the end of an experiments/edit.py run (three requests in batches of 1)

REQUESTS = [
    *testing.EDIT_REQUESTS,
    {
        "case_id": 9,
        "prompt": "The language spoken by {} is",
        "subject": "Carol White",
        "target_new": "Greek",
        "target_true": "Dutch",
    },
]


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory, gpt2_tok):
    from flax import nnx

    root = tmp_path_factory.mktemp("prune_run")
    cfg = testing.tiny_config(
        "gpt2",
        vocab_size=len(gpt2_tok),
        num_layers=4,
        bos_token_id=50256,
        eos_token_id=50256,
        max_position_embeddings=256,
    )
    graphdef, params = nnx.split(models.build(cfg))
    jaxedit.save_hf(
        LanguageModel(config=cfg, tokenizer=gpt2_tok, graphdef=graphdef, params=params),
        root / "model",
    )
    docs = [f"Document {i} talks about cities, food and languages of the world." for i in range(30)]
    corpus.write_text_corpus(docs, root / "corpus.txt")
    (root / "requests.json").write_text(json.dumps(REQUESTS))
    return root


def _edit(root: Path, workdir: str, *args: str) -> subprocess.CompletedProcess:
    cmd = testing.edit_command(
        ROOT,
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=1",
        "--evaluate=false",
        "--config.method=MEMIT_seq",
        "--config.solve.norm_lambda=0",
        "--config.regularize.prune=true",
        f"--workdir={root / workdir}",
        *args,
    )
    env = {**os.environ, "JAXEDIT_DATA": str(testing.require_shared("data"))}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def _exported(path: Path) -> list[np.ndarray]:
    params = jaxedit.load(path).params["transformer"]["h"]
    return [np.asarray(params[l]["mlp"]["c_proj"]["kernel"][...]) for l in LAYERS]


@pytest.mark.slow  # four binary runs, ≈ 1.5 min on 2 cores
def test_edit_binary_prunes_once_after_the_last_batch_and_resumes_safely(run_setup):
    root = run_setup
    full = _edit(root, "full", f"--export_dir={root / 'full_out'}", f"--dump_dir={root / 'dump'}")
    assert full.returncode == 0, full.stderr[-3000:]
    lines = [json.loads(l) for l in (root / "full" / "batches.jsonl").read_text().splitlines()]
    assert [("prune" in l) for l in lines] == [False, False, True]
    assert set(lines[2]["prune"]["layers"]) == {"1", "2"}
    # the last line's norms are the pruned model's (and those before PRUNE are kept beside them)
    for layer, w in zip(LAYERS, _exported(root / "full_out")):
        assert lines[2]["weight_norm"][str(layer)] == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert set(lines[2]["weight_norm_before_prune"]) == {"1", "2"}
    assert json.loads((root / "full" / "run.json").read_text())["label"].endswith("+PRUNE")
    step, meta, _ = inspect_checkpoint(root / "full" / "checkpoint")
    assert step == 3 and meta["prune_applied"] is True
    # Official PRUNE: W_T + Δ' with Δ' = PRUNE(Δ3) against W_{T-1} = W0 + Δ1 + Δ2.
    w0 = _exported(root / "model")
    deltas = [np.load(root / "dump" / f"batch_{k:03d}.npz") for k in range(3)]
    for i, (layer, w) in enumerate(zip(LAYERS, _exported(root / "full_out"))):
        d = [z[f"delta_L{layer}"].T for z in deltas]  # the dump is in HF orientation
        w_prev = w0[i] + d[0] + d[1]
        added = np.asarray(regularize.prune(d[2], w_prev, math.e))
        np.testing.assert_allclose(w, w_prev + d[2] + added, rtol=0, atol=1e-5)
        assert np.abs(added).max() > 1e-3  # PRUNE's addition is visible at that tolerance

    # Stopped after two batches, then resumed: the same model; a rerun of the finished run does
    # not apply PRUNE again.
    part = _edit(root, "part", "--max_batches=2")
    assert part.returncode == 0, part.stderr[-3000:]
    rest = _edit(root, "part", f"--export_dir={root / 'part_out'}")
    assert rest.returncode == 0, rest.stderr[-3000:]
    again = _edit(root, "part", f"--export_dir={root / 'again_out'}")
    assert again.returncode == 0, again.stderr[-3000:]
    for a, b, c in zip(
        _exported(root / "full_out"), _exported(root / "part_out"), _exported(root / "again_out")
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    part_lines = (root / "part" / "batches.jsonl").read_text().splitlines()
    assert [json.loads(l)["batch"] for l in part_lines] == [0, 1, 2]


def test_regularized_configs_validate():
    for name in ("memit_prune_smollm2", "memit_rect_smollm2", "memit_prune_original_smollm2"):
        cfg = config.load_config_file(ROOT / "configs" / f"{name}.py")
        cfg.validate(num_layers=30)
        assert cfg.method == "MEMIT_seq" and cfg.search.mpes_patience == 4
    rect = config.load_config_file(ROOT / "configs" / "memit_rect_llama3_8b.py")
    assert rect.regularize == dataclasses.replace(config.RegularizeConfig(), rect_keep_percent=40.0)


def test_default_labels_tell_the_comparison_runs_apart():
    labels = {
        name: config.default_label(config.load_config_file(ROOT / "configs" / f"{name}.py"))
        for name in (
            "encore_smollm2",
            "memit_seq_smollm2",
            "memit_mpes_smollm2",
            "memit_prune_smollm2",
            "memit_prune_original_smollm2",
            "memit_rect_smollm2",
            "memit_lti_smollm2",
            "memit_lti_rect_smollm2",
        )
    }
    assert labels == {
        "encore_smollm2": "ENCORE",
        "memit_seq_smollm2": "MEMIT",
        "memit_mpes_smollm2": "MEMIT+MPES",
        "memit_prune_smollm2": "MEMIT+MPES+PRUNE",
        "memit_prune_original_smollm2": "MEMIT+MPES+PRUNE(original)",
        "memit_rect_smollm2": "MEMIT+MPES+RECT",
        "memit_lti_smollm2": "MEMIT+LTI",
        "memit_lti_rect_smollm2": "MEMIT+LTI+RECT",
    }
    aligned = config.load_config_file(ROOT / "configs" / "memit_lti_smollm2.py")
    aligned.search.teacher_positions = "aligned"
    aligned.regularize.prune, aligned.regularize.prune_when = True, "every_batch"
    assert config.default_label(aligned) == "MEMIT+LTI(aligned)+PRUNE(every batch)"


@pytest.mark.slow  # five small binary runs, ≈ 1.5 min on 2 cores
def test_prune_at_end_forked_from_a_plain_run_equals_the_full_run(run_setup):
    """--fork_from: a PRUNE-at-end run started from a plain run's checkpoint before its last batch
    gives the same model as the PRUNE run from scratch, with the plain run's first lines; a fork
    whose first batches would differ is refused, naming why."""
    root = run_setup
    plain = _edit(root, "plain", "--config.regularize.prune=false")
    assert plain.returncode == 0, plain.stderr[-3000:]
    fork = _edit(root, "fork", f"--fork_from={root / 'plain'}", f"--export_dir={root / 'fork_out'}")
    assert fork.returncode == 0, fork.stderr[-3000:]
    whole = _edit(root, "whole", f"--export_dir={root / 'whole_out'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    for a, b in zip(_exported(root / "fork_out"), _exported(root / "whole_out")):
        np.testing.assert_array_equal(a, b)

    def lines(run):
        return [json.loads(l) for l in (root / run / "batches.jsonl").read_text().splitlines()]

    assert lines("fork")[:2] == lines("plain")[:2]  # copied, times included
    assert [("prune" in l) for l in lines("fork")] == [False, False, True]
    run = json.loads((root / "fork" / "run.json").read_text())
    assert run["forked_from"] == {
        "workdir": str(root / "plain"),
        "batches": 2,
        "label": "MEMIT+MPES",
    }
    # Refused: another search setting (its first batches differ), a step at or after the last
    # batch (PRUNE would be missing), and --fork_at alone; none leaves a run directory.
    other = _edit(root, "bad1", f"--fork_from={root / 'plain'}", "--config.search.lr=0.1")
    assert other.returncode == 2 and "differs from this one in config" in other.stderr
    late = _edit(root, "bad2", f"--fork_from={root / 'plain'}", "--fork_at=3")
    assert late.returncode == 2 and "--fork_at=3" in late.stderr and "steps 1..2" in late.stderr
    alone = _edit(root, "bad3", "--fork_at=1")
    assert alone.returncode == 2 and "--fork_at needs --fork_from" in alone.stderr
    nowhere = _edit(root, "bad4", f"--fork_from={root / 'nowhere'}")
    assert nowhere.returncode == 2 and "holds no run.json" in nowhere.stderr
    assert not any((root / f"bad{i}").exists() for i in (1, 2, 3, 4))
