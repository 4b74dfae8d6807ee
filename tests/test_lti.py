"""LTI in the target search (WORKSPACE.md) on tiny random models with the GPT-2 tokenizer.

The loss reduces to MEMIT's without its KL term when the LTI weights are zero; the teacher rows sit
at the stated positions in each mode (checked against plain full forwards of the prefixed texts,
built here from the strings); KL(student ‖ teacher) is 0 at δ = 0 when the teacher is the
unprefixed model; the loss terms at the returned δ against a full forward (mid layer above, at and
below the target layer); MPES combines with LTI; two sequential batches in the Editor; config
validation; the official MEMIT_lti / AlphaEdit_lti JSON import and its defaulting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxedit import config, editor, lti, overrides, prompts, search, stats
from jaxedit.models import Probe
from jaxedit.requests import EditRequest

# `lm` (tests/conftest.py): a random 4-block model of each family with the GPT-2 vocabulary. The
# templates and requests are test_search's (subject last, so δ reaches the target positions).
Z_LAYER = 2
MID = 3  # above the target layer: the mid-layer term depends on δ
TEMPLATES = (("{}",), ("Hello. {}", "Note that {}"))
REQUESTS = (
    EditRequest(0, "I like {}", "Paris", "Rome"),
    EditRequest(1, "We met {}", "John", " piano"),
    EditRequest(2, "They drink {}", "coffee", " New York"),
)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = config.SearchConfig(lr=1.0, num_steps=8, clamp_norm_factor=4.0, loss_threshold=1e-9)
LTI = dataclasses.replace(
    BASE, lti=True, midlayer=MID, nll_factor=0.125, last_kl_factor=0.0725, mid_kl_factor=0.0425
)


def run(lm, hp, requests=REQUESTS, prefix=prompts.lti_prefix):
    """The search result (host arrays), its batch and its teacher rows."""
    batch, _ = search.build_search_batch(
        lm.tokenizer,
        requests,
        TEMPLATES,
        max_length=lm.config.max_position_embeddings,
        kl_position="last" if hp.lti else "subject",
    )
    teacher = None
    if hp.lti:
        teacher = search.build_teacher_batch(
            lm.tokenizer, requests, TEMPLATES, batch, positions=hp.teacher_positions, prefix=prefix
        )
    res = search.search_targets(lm.graphdef, lm.params, batch, hp, Z_LAYER, teacher=teacher)
    return jax.tree.map(np.asarray, res), batch, teacher


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl(s, t) -> float:
    return float(np.sum(np.exp(s) * (s - t), -1))


# --------------------------------------------------------------------------------------------------
# The rows, written out from the strings (independent of jaxedit.prompts)


def rows_of(tok, req: EditRequest, prefix: str) -> list[dict]:
    """Per row (rewriting prompts, then the KL prompt): the student's and the teacher's token ids,
    the student's target positions and subject-last index, and the same two recomputed on the
    teacher's own tokens."""
    target = req.target_new if req.target_new.startswith(" ") else " " + req.target_new
    target_ids = tok(target)["input_ids"]
    tail = tok.decode(target_ids[:-1])
    t = len(target_ids)
    rows = []
    for context in [c for group in TEMPLATES for c in group]:
        filled = context.replace("{}", req.prompt)
        head = filled[: filled.index("{}")]
        text = filled.replace("{}", req.subject) + tail
        ids, pids = tok(text)["input_ids"], tok(prefix + text)["input_ids"]
        rows.append(
            dict(
                ids=ids,
                teacher_ids=pids,
                pos=[len(ids) - t + k for k in range(t)],
                target=target_ids,
                lookup=len(tok(head + req.subject)["input_ids"]) - 1,
                aligned_pos=[len(pids) - t + k for k in range(t)],
                aligned_lookup=len(tok(prefix + head + req.subject)["input_ids"]) - 1,
            )
        )
    ids = tok(req.subject + " is a")["input_ids"]  # the KL prompt: no prefix, its last token
    lookup = len(tok(req.subject)["input_ids"]) - 1
    rows.append(
        dict(
            ids=ids, teacher_ids=ids, pos=[len(ids) - 1], lookup=lookup, aligned_pos=[len(ids) - 1]
        )
    )
    rows[-1]["aligned_lookup"] = lookup
    return rows


def full_forward(lm, ids, layer, delta=None, delta_index=None):
    """Final log-probs `[t, v]` and the logit lens of block `layer`'s output `[t, v]` of one row
    (a plain forward of the whole row; δ added after Z_LAYER at `delta_index` when given)."""
    model = nnx.merge(lm.graphdef, lm.params)
    probe = Probe(resid_layers=(layer,))
    if delta is not None:
        probe = Probe(
            resid_layers=(layer,),
            delta=jnp.asarray(delta)[None],
            delta_index=jnp.asarray([delta_index]),
            delta_layer=Z_LAYER,
        )
    out = model(jnp.asarray([ids]), None, probe)
    lens = model.unembed(model.final_norm(out.residuals[layer][0]))
    return log_softmax(out.logits[0]), log_softmax(lens)


# --------------------------------------------------------------------------------------------------


def test_zero_lti_weights_give_memit_without_its_kl_term(lm):
    memit, _, _ = run(lm, dataclasses.replace(BASE, kl_factor=0.0))
    zero = dataclasses.replace(LTI, nll_factor=1.0, last_kl_factor=0.0, mid_kl_factor=0.0)
    got, _, _ = run(lm, zero)
    # The same loss at every δ visited, so the same trajectory and targets.
    np.testing.assert_allclose(got.history["loss"], memit.history["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.stop_steps, memit.stop_steps)
    scale = np.linalg.norm(memit.targets, axis=-1).max()
    np.testing.assert_allclose(got.targets, memit.targets, rtol=0, atol=1e-5 * scale)
    assert (got.history["kl"] == 0).all() and (got.history["mid_kl"] == 0).all()
    # Not a vacuous equality: MEMIT's own KL term changes the trajectory.
    with_kl, _, _ = run(lm, BASE)
    assert not np.allclose(with_kl.history["loss"][1:], memit.history["loss"][1:], rtol=1e-4)


@pytest.mark.parametrize("positions", ["official", "aligned"])
def test_teacher_rows_at_the_stated_positions(lm, gpt2_tok, positions):
    batch, _ = search.build_search_batch(gpt2_tok, REQUESTS, TEMPLATES, kl_position="last")
    tb = search.build_teacher_batch(gpt2_tok, REQUESTS, TEMPLATES, batch, positions=positions)
    ref = jax.tree.map(np.asarray, lti.teacher_log_probs(lm.graphdef, lm.params, tb, MID))
    last_block = lm.config.num_layers - 1
    ref_top = jax.tree.map(
        np.asarray, lti.teacher_log_probs(lm.graphdef, lm.params, tb, last_block)
    )
    key = "" if positions == "official" else "aligned_"
    misaligned = 0
    for j, req in enumerate(REQUESTS):
        for i, row in enumerate(rows_of(gpt2_tok, req, prompts.lti_prefix(req))):
            want_last, want_mid = full_forward(lm, row["teacher_ids"], MID)
            # "official": the unprefixed row's indices read in the prefixed sequence.
            for k, pos in enumerate(row[key + "pos"]):
                np.testing.assert_allclose(ref["last"][j, i, k], want_last[pos], atol=2e-5)
            lookup = row[key + "lookup"]
            np.testing.assert_allclose(ref["mid"][j, i], want_mid[lookup], atol=2e-5)
            # The lens of the last block is the model's own next-token distribution.
            np.testing.assert_allclose(ref_top["mid"][j, i], want_last[lookup], atol=2e-5)
            misaligned += row["pos"] != row["aligned_pos"]
    # The two modes differ on every rewriting row (only the unprefixed KL row agrees).
    assert misaligned == len(REQUESTS) * (len(TEMPLATES[0]) + len(TEMPLATES[1]))


def test_aligned_positions_read_the_subject_and_the_target(gpt2_tok):
    batch, _ = search.build_search_batch(gpt2_tok, REQUESTS, TEMPLATES, kl_position="last")
    tb = search.build_teacher_batch(gpt2_tok, REQUESTS, TEMPLATES, batch, positions="aligned")
    official = search.build_teacher_batch(gpt2_tok, REQUESTS, TEMPLATES, batch)
    for j, req in enumerate(REQUESTS):
        subject_end = gpt2_tok(" " + req.subject)["input_ids"][-1]
        ids = np.asarray(tb.input_ids[j])
        after_prefix = len(gpt2_tok(prompts.lti_prefix(req))["input_ids"])
        for i in range(len(TEMPLATES[0]) + len(TEMPLATES[1])):
            # The subject after the prefix (the prefix holds a copy of it too).
            assert ids[i, tb.lookup[j, i]] == subject_end and tb.lookup[j, i] >= after_prefix
            # "official" reads the unprefixed index: inside the prefix.
            assert official.lookup[j, i] == batch.lookup[j, i] < after_prefix
        # The KL row is the student's own row in both modes.
        np.testing.assert_array_equal(tb.target_pos[j, -1], batch.target_pos[j, -1])
        np.testing.assert_array_equal(official.target_pos[j, -1], batch.target_pos[j, -1])
        np.testing.assert_array_equal(official.target_pos[j], batch.target_pos[j])


@pytest.mark.parametrize("positions", ["official", "aligned"])
def test_kl_is_zero_at_delta_zero_when_the_teacher_is_the_unprefixed_model(lm, positions):
    hp = dataclasses.replace(LTI, teacher_positions=positions)
    empty, _, _ = run(lm, hp, prefix=lambda req: "")
    np.testing.assert_allclose(empty.history["kl"][0], 0.0, atol=1e-6)
    np.testing.assert_allclose(empty.history["mid_kl"][0], 0.0, atol=1e-6)
    assert (empty.history["kl"][1] > 1e-6).all()  # δ moves the student away from it
    prefixed, _, _ = run(lm, hp)
    assert (prefixed.history["kl"][0] > 1e-4).all() and (prefixed.history["mid_kl"][0] > 1e-4).all()


@pytest.mark.parametrize("midlayer", [MID, Z_LAYER, 1])
def test_loss_terms_at_the_returned_delta_against_a_full_forward(lm, gpt2_tok, midlayer):
    hp = dataclasses.replace(LTI, midlayer=midlayer)
    res, _, tb = run(lm, hp)
    ref = jax.tree.map(np.asarray, lti.teacher_log_probs(lm.graphdef, lm.params, tb, midlayer))
    for j, req in enumerate(REQUESTS):
        stop, delta = res.stop_steps[j], res.delta[j]
        last_kl, mid_kl, nll = [], [], []
        for i, row in enumerate(rows_of(gpt2_tok, req, prompts.lti_prefix(req))):
            logp, lens = full_forward(lm, row["ids"], midlayer, delta, row["lookup"])
            if midlayer <= Z_LAYER:
                # Block midlayer's output before δ (the official code reads it before adding δ
                # when it is the target layer): the clean model's.
                _, lens = full_forward(lm, row["ids"], midlayer)
            for k, pos in enumerate(row["pos"]):
                last_kl.append(kl(logp[pos], ref["last"][j, i, k]))
            mid_kl.append(kl(lens[row["lookup"]], ref["mid"][j, i]))
            if i < len(TEMPLATES[0]) + len(TEMPLATES[1]):
                nll.append(-np.mean([logp[p, y] for p, y in zip(row["pos"], row["target"])]))
        h0 = np.linalg.norm(res.target_init[j])
        wd = hp.weight_decay * np.linalg.norm(delta) / h0**2
        want = dict(
            kl=hp.last_kl_factor * np.mean(last_kl),
            mid_kl=hp.mid_kl_factor * np.mean(mid_kl),
            nll=np.mean(nll),
        )
        want["loss"] = hp.nll_factor * want["nll"] + want["kl"] + want["mid_kl"] + wd
        for name, value in want.items():
            got = res.history[name][stop, j]
            np.testing.assert_allclose(got, value, rtol=1e-3, atol=1e-6, err_msg=name)
        mid = res.history["mid_kl"][: stop + 1, j]
        if midlayer > Z_LAYER:
            assert np.ptp(mid) > 1e-4 * mid[0], mid  # δ reaches the mid layer
        else:
            np.testing.assert_allclose(mid, mid[0], rtol=1e-6)  # constant in δ


def test_mpes_combines_with_lti(lm, gpt2_tok):
    hp = dataclasses.replace(LTI, nll_factor=1.0, num_steps=12)
    fixed, _, _ = run(lm, hp)
    mpes_hp = dataclasses.replace(hp, mpes_patience=2)
    mpes, _, _ = run(lm, mpes_hp)
    n = hp.num_steps
    np.testing.assert_array_equal(fixed.stop_steps, n - 1)
    assert (mpes.stop_steps < n - 1).any(), mpes.stop_steps
    n_context = len(TEMPLATES[1])
    for j, stop in enumerate(mpes.stop_steps):
        np.testing.assert_allclose(
            mpes.history["loss"][: stop + 1, j], fixed.history["loss"][: stop + 1, j], rtol=1e-5
        )
        assert np.isnan(mpes.history["mid_kl"][stop + 1 :, j]).all()
        full = n_context * len(search.target_token_ids(gpt2_tok, REQUESTS[j].target_new))
        successes = int((mpes.history["num_correct"][: stop + 1, j] == full).sum())
        if stop < n - 1:  # stopped by MPES, at the patience-th all-correct iteration
            assert successes == mpes_hp.mpes_patience
            assert mpes.history["num_correct"][stop, j] == full
        else:
            assert successes < mpes_hp.mpes_patience


def test_two_sequential_batches_in_the_editor(lm):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, len(lm.tokenizer) - 1, 48).tolist() for _ in range(6)]
    cov, _ = stats.collect_second_moments(lm, docs, (1, 2))
    layer_stats = editor.LayerStats(cov={layer: jnp.asarray(c) for layer, c in cov.items()})
    hp = dataclasses.replace(LTI, nll_factor=1.0, num_steps=12, mpes_patience=2)
    cfg = config.EditConfig(
        method="MEMIT_seq",
        layers=(1, 2),
        search=hp,
        solve=config.SolveConfig(cov_weight=1.0),
        templates=TEMPLATES,
    )
    ed = editor.Editor(lm, cfg, layer_stats, TEMPLATES)
    state = ed.init_state()
    batches = (REQUESTS[:2], (EditRequest(3, "She saw {}", "Mary", " Tokyo"), REQUESTS[2]))
    for batch in batches:
        state, rep = ed.apply(state, list(batch))
        assert (rep.stop_steps <= hp.num_steps - 1).all() and np.isfinite(rep.targets).all()
        assert set(rep.history) >= {"kl", "mid_kl"}
        assert np.isfinite(rep.history["mid_kl"][0]).all()
        assert all(np.abs(np.asarray(rep.deltas[layer])).max() > 0 for layer in (1, 2))
        # the teacher pass is timed on its own, as a part of the search time
        assert 0 < rep.teacher_time < rep.search_time
        assert rep.summary()["teacher_time_s"] == rep.teacher_time
    assert state.num_edits == 4 and len(state.journal) == 2
    # without LTI there is no teacher pass, and no teacher time in the batch's line
    plain_cfg = dataclasses.replace(cfg, search=config.SearchConfig())
    plain = editor.Editor(lm, plain_cfg, layer_stats, TEMPLATES)
    _, rep = plain.apply(plain.init_state(), list(REQUESTS[:1]))
    assert rep.teacher_time == 0 and "teacher_time_s" not in rep.summary()


# --------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("constr_pos", "last", r"search\.constr_pos='last'.*crashes.*fix: set search\.constr_pos"),
        ("constr_pos", "all", r"search\.constr_pos='all'.*fix"),
        ("constr_pos", "middle", r"search\.constr_pos='middle'.*fix"),
        ("teacher_positions", "shifted", r"search\.teacher_positions='shifted'.*fix"),
        ("nll_factor", -1.0, r"search\.nll_factor=-1\.0.*fix"),
        ("mid_kl_factor", float("nan"), r"search\.mid_kl_factor=nan"),
        ("midlayer", -1, r"search\.midlayer=-1.*fix: set search\.midlayer"),
    ],
)
def test_config_validation_names_the_field(field, value, match):
    hp = dataclasses.replace(LTI, **{field: value})
    with pytest.raises(config.ConfigValueError, match=match):
        hp.validate()


def test_config_validation_against_the_model_and_the_command_line():
    cfg = config.EditConfig(layers=(1, 2), search=dataclasses.replace(LTI, midlayer=4))
    cfg.validate()
    with pytest.raises(config.ConfigValueError, match=r"search\.midlayer=4: the model has blocks"):
        cfg.validate(num_layers=4)
    got = overrides.override(cfg, "search.teacher_positions", "aligned")
    assert got.search.teacher_positions == "aligned" and cfg.search.teacher_positions == "official"
    with pytest.raises(overrides.OverrideError, match=r"search\.teacher_positions"):
        overrides.override(cfg, "search.teacher_positions", "shifted")
    assert overrides.override(cfg, "search.lti", "false").search.lti is False
    # LTI off: midlayer unset is fine (the default config).
    config.SearchConfig().validate()


def test_lti_search_without_teacher_rows_is_refused(lm):
    batch, _ = search.build_search_batch(lm.tokenizer, REQUESTS, TEMPLATES, kl_position="last")
    with pytest.raises(ValueError, match="teacher rows"):
        search.search_targets(lm.graphdef, lm.params, batch, LTI, Z_LAYER)


# The official hparams/MEMIT_lti/llama3-8b.json's fields (WORKSPACE.md).
MEMIT_LTI_LLAMA3 = {
    "layers": [4, 5, 6, 7, 8],
    "clamp_norm_factor": 4,
    "layer_selection": "all",
    "fact_token": "subject_last",
    "v_num_grad_steps": 30,
    "v_lr": 0.5,
    "v_loss_layer": 31,
    "v_weight_decay": 1e-3,
    "mid_kl_factor": 0.0425,
    "last_kl_factor": 0.0725,
    "nll_factor": 0.125,
    "mom2_adjustment": True,
    "mom2_update_weight": 15000,
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "layer_module_tmp": "model.layers.{}",
    "mlp_module_tmp": "model.layers.{}.mlp",
    "attn_module_tmp": "model.layers.{}.self_attn",
    "ln_f_module": "model.norm",
    "lm_head_module": "lm_head",
    "mom2_dataset": "wikipedia",
    "mom2_n_samples": 10000,
    "mom2_dtype": "float32",
    "midlayers": [15],
    "constr_pos": "subject",
    "add_prev_edits": True,
    "calculate_objective_value": False,
    "calculate_norms": False,
    "update_norm_lambda": 0,
}


def test_official_memit_lti_json_imports(tmp_path, caplog):
    path = tmp_path / "llama3-8b.json"
    path.write_text(json.dumps(MEMIT_LTI_LLAMA3))
    base = config.load_config_file(CONFIGS / "encore_llama3_8b.py")  # MPES and λ_n on
    with caplog.at_level(logging.WARNING):
        cfg = config.from_reference_hparams(path, base=base, method="MEMIT_seq")
    assert not [r for r in caplog.records if "defaulted" in r.getMessage()]
    s = cfg.search
    assert (s.lti, s.midlayer, s.constr_pos, s.teacher_positions) == (
        True,
        15,
        "subject",
        "official",
    )
    assert (s.nll_factor, s.last_kl_factor, s.mid_kl_factor) == (0.125, 0.0725, 0.0425)
    assert (s.lr, s.num_steps, s.clamp_norm_factor, s.weight_decay) == (0.5, 30, 4.0, 1e-3)
    assert (s.mpes_patience, s.stop_prob) == (0, 0.0)  # no prob_cutoff: no MPES
    assert (cfg.solve.cov_weight, cfg.solve.norm_lambda, cfg.stats.num_samples) == (
        15000.0,
        0.0,
        10000,
    )
    assert not base.search.lti  # the base is not modified
    cfg.validate(num_layers=32)


def test_lti_json_with_missing_fields_is_defaulted_and_reported(tmp_path, caplog):
    # MEMIT_lti_prune / AlphaEdit_lti lack update_norm_lambda; drop the other defaulted ones too.
    hp = {k: v for k, v in MEMIT_LTI_LLAMA3.items() if k not in LTI_DEFAULTED}
    hp["midlayers"] = [10, 15]  # each hook call overwrites: the last in forward order is used
    path = tmp_path / "memit_lti_prune.json"
    path.write_text(json.dumps(hp))
    base = config.load_config_file(CONFIGS / "encore_llama3_8b.py")
    assert base.solve.norm_lambda == 20.0
    with caplog.at_level(logging.WARNING):
        cfg = config.from_reference_hparams(path, base=base)
    (record,) = [r for r in caplog.records if "defaulted" in r.getMessage()]
    message = record.getMessage()
    assert str(path) in message
    for text in ("update_norm_lambda=0", "calculate_norms=false", "nll_factor=0.0925"):
        assert text in message, message
    assert cfg.solve.norm_lambda == 0.0 and cfg.search.nll_factor == 0.0925
    assert cfg.search.midlayer == 15
    # A required field of the official class cannot be defaulted.
    del hp["mid_kl_factor"]
    with pytest.raises(config.ConfigValueError, match=r"required fields \['mid_kl_factor'\]"):
        config.from_reference_hparams(hp)
    # constr_pos="last" imports, and the config then refuses it.
    bad = config.from_reference_hparams({**MEMIT_LTI_LLAMA3, "constr_pos": "last"})
    with pytest.raises(config.ConfigValueError, match=r"search\.constr_pos='last'"):
        bad.validate()


LTI_DEFAULTED = ("update_norm_lambda", "calculate_norms", "nll_factor")
