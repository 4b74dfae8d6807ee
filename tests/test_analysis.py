"""Norm analysis: weight norms against numpy and the residual-stream decomposition behind the
activation norm proportion (reference §8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxedit import analysis, models
from jaxedit.lm import LanguageModel
from jaxedit.models import rewrite_path
from jaxedit.testing import tiny_config


class _CharTokenizer:
    """One id per character (ids < 61)."""

    def __call__(self, text, truncation=False, max_length=None):
        ids = [ord(c) % 61 for c in text]
        return {"input_ids": ids[:max_length] if truncation else ids}


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _tiny(family: str, seed: int = 0) -> LanguageModel:
    """A tiny model with every parameter perturbed, so biases and norm scales are not 0 / 1."""
    cfg = tiny_config(family)
    graphdef, params = nnx.split(models.build(cfg, seed=seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    params = jax.tree.unflatten(treedef, leaves)
    return LanguageModel(config=cfg, tokenizer=_CharTokenizer(), graphdef=graphdef, params=params)


def _with_kernel(model: LanguageModel, layer: int, value) -> LanguageModel:
    params = jax.tree.map(lambda x: x, model.params)
    _get(params, rewrite_path(model.config, layer)).set_value(value)
    return model.replace(params=params)


def _kernel(model, layer) -> np.ndarray:
    return np.asarray(_get(model.params, rewrite_path(model.config, layer))[...])


def _batch():
    ids = np.array([[5, 7, 11, 13, 17, 19, 23, 3], [29, 31, 37, 41, 0, 0, 0, 0]], np.int32)
    mask = np.array([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
    return ids, mask


def _docs(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 61, size).tolist() for size in rng.integers(1, 40, n)]


def test_decomposition_reproduces_final_residual(family):
    lm = _tiny(family)
    ids, mask = _batch()
    c = analysis.sublayer_contributions(lm, ids, mask)
    rebuilt = c["embed"] + c["attn"].sum(0) + c["mlp"].sum(0)
    np.testing.assert_allclose(rebuilt, c["final"], atol=1e-5)
    # `final` is h_L before the final norm: the model's own head on it gives the model's logits.
    module = lm.module
    logits = module.unembed(module.final_norm(jnp.asarray(c["final"])))
    lengths = mask.sum(1)
    want = lm.logits_from_ids(ids, lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(logits)[row, :n], want[row, :n], atol=1e-5)


def test_contributions_match_explicit_sublayers(family):
    lm = _tiny(family)
    ids, mask = _batch()
    c = analysis.sublayer_contributions(lm, ids, mask)
    module = lm.module
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    ctx = module.context(positions, jnp.asarray(mask))
    h = jnp.asarray(c["embed"])
    for layer in range(lm.config.num_layers):
        if family == "llama":
            blk = module.model.layers[layer]
            attn = blk.self_attn(blk.input_layernorm(h), ctx)[0]
            mid = blk.post_attention_layernorm(h + attn)
            keys = jax.nn.silu(blk.mlp.gate_proj(mid)) * blk.mlp.up_proj(mid)
            bias = 0.0
        else:
            blk = module.transformer.h[layer]
            attn = blk.attn(blk.ln_1(h), ctx)[0]
            keys = models.layers.gelu_new(blk.mlp.c_fc(blk.ln_2(h + attn)))
            bias = np.asarray(blk.mlp.c_proj.bias[...])
            assert np.abs(bias).max() > 0.01  # the bias is really exercised
        mlp = np.asarray(keys, np.float64) @ _kernel(lm, layer).astype(np.float64) + bias
        np.testing.assert_allclose(c["mlp"][layer], mlp, atol=1e-5)
        np.testing.assert_allclose(c["attn"][layer], np.asarray(attn), atol=1e-5)
        h = h + attn + jnp.asarray(mlp, jnp.float32)


def test_proportions_sum_to_one_and_match_per_token_definition(family):
    lm = _tiny(family)
    docs = _docs()
    res = analysis.activation_norm_proportion(lm, docs, batch_size=2)
    assert res.num_tokens == sum(map(len, docs)) and res.num_texts == len(docs)
    np.testing.assert_allclose(res.mlp_share.sum() + res.attn_share.sum(), 1.0, rtol=1e-5)
    # The same figures in numpy from the per-token decomposition (one padded batch, real tokens).
    ids = np.zeros((len(docs), 48), np.int32)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = d
    mask = (np.arange(48)[None] < np.array([len(d) for d in docs])[:, None]).astype(np.int32)
    c = analysis.sublayer_contributions(lm, ids, mask)
    real = mask.astype(bool)
    a = np.linalg.norm(c["attn"].astype(np.float64), axis=-1)[:, real]  # [L, tokens]
    m = np.linalg.norm(c["mlp"].astype(np.float64), axis=-1)[:, real]
    total = (a + m).sum(0)
    per_tok = {
        "mlp_share": m / total,
        "attn_share": a / total,
        "mlp_norm": m,
        "attn_norm": a,
        "mlp_to_final": m / np.linalg.norm(c["final"].astype(np.float64), axis=-1)[real],
    }
    for key, value in per_tok.items():
        np.testing.assert_allclose(getattr(res, key), value.mean(1), rtol=1e-5, err_msg=key)


def test_padding_and_batching_do_not_change_the_result(family):
    lm = _tiny(family)
    docs = _docs(7, seed=3)
    ref = analysis.activation_norm_proportion(lm, docs, batch_size=7).as_dict()
    for kwargs in (dict(batch_size=1), dict(batch_size=3, pad_to=64)):
        got = analysis.activation_norm_proportion(lm, docs, **kwargs).as_dict()
        assert got["num_tokens"] == ref["num_tokens"]
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, err_msg=f"{key} {kwargs}")
    # Per token: a padded row equals the row alone at its real tokens.
    ids, mask = _batch()
    padded = analysis.sublayer_contributions(lm, ids, mask)
    alone = analysis.sublayer_contributions(lm, ids[1:, :4])
    for key in ("attn", "mlp"):
        np.testing.assert_allclose(padded[key][:, 1, :4], alone[key][:, 0], atol=1e-5)


def test_strings_skip_first_token_and_errors():
    lm = _tiny("llama")
    texts = ["the cat sat", "on a mat, quietly"]
    ids = [[ord(ch) % 61 for ch in t] for t in texts]
    a = analysis.activation_norm_proportion(lm, texts).as_dict()
    b = analysis.activation_norm_proportion(lm, ids).as_dict()
    assert a == b
    cut = analysis.activation_norm_proportion(lm, texts, max_length=5)
    assert cut.num_tokens == 10
    skip = analysis.activation_norm_proportion(lm, texts, skip_first_token=True)
    assert skip.num_tokens == a["num_tokens"] - 2
    with pytest.raises(ValueError, match="pad_to"):
        analysis.activation_norm_proportion(lm, texts, pad_to=8)
    long = analysis.activation_norm_proportion(lm, ["x" * 100], max_length=1000)
    assert long.num_tokens == lm.config.max_position_embeddings


def test_scaling_one_layer_raises_its_mlp_share(family):
    """Importance hacking: a larger W_out gives its layer a larger share of the stream."""
    lm = _tiny(family)
    docs = _docs(4, seed=5)
    before = analysis.activation_norm_proportion(lm, docs)
    hacked = _with_kernel(lm, 1, 10.0 * _kernel(lm, 1))
    after = analysis.activation_norm_proportion(hacked, docs)
    assert after.mlp_share[1] > 2 * before.mlp_share[1]
    assert after.mlp_norm[1] > 5 * before.mlp_norm[1]
    assert after.mlp_to_final[1] > before.mlp_to_final[1]
    # Layer 0 runs before the change: same norms, smaller share of the larger total.
    np.testing.assert_allclose(after.mlp_norm[0], before.mlp_norm[0], rtol=1e-5)
    np.testing.assert_allclose(after.attn_norm[:2], before.attn_norm[:2], rtol=1e-5)
    assert after.mlp_share[0] < before.mlp_share[0] and after.attn_share[0] < before.attn_share[0]


def test_weight_norms_and_distance_against_numpy(family):
    lm = _tiny(family)
    layers = range(lm.config.num_layers)
    want = [np.linalg.norm(_kernel(lm, l).astype(np.float64)) for l in layers]
    np.testing.assert_allclose(analysis.weight_norms(lm), want, rtol=1e-6)
    np.testing.assert_allclose(
        analysis.weight_norms(lm.params, lm.config, layers=[2, 0]), [want[2], want[0]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="ModelConfig"):
        analysis.weight_norms(lm.params)

    delta = np.random.default_rng(0).normal(size=_kernel(lm, 1).shape).astype(np.float32)
    edited = _with_kernel(lm, 1, _kernel(lm, 1) + delta)
    dist = analysis.distance_from_original(edited, lm)
    np.testing.assert_allclose(dist, [0.0, np.linalg.norm(delta), 0.0], rtol=1e-5, atol=1e-7)
    per_numel = analysis.distance_from_original(
        edited.params, lm.params, lm.config, layers=[1], per_numel=True
    )
    np.testing.assert_allclose(per_numel, [np.linalg.norm(delta) / delta.size], rtol=1e-5)
    # The original model is untouched by the edit.
    np.testing.assert_allclose(analysis.weight_norms(lm), want, rtol=1e-6)
