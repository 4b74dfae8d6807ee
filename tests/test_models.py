"""Model shapes, the probe contract and abstract full-size configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxedit import models
from jaxedit.models import ConfigError, ModelConfig, Probe
from jaxedit.testing import tiny_config


def _batch():
    ids = jnp.array([[5, 7, 11, 13, 17, 19, 23], [29, 31, 37, 41, 0, 0, 0]], jnp.int32)
    mask = jnp.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], jnp.int32)
    return ids, mask


def test_logit_shapes_and_dtype(family):
    cfg = tiny_config(family)
    model = models.build(cfg)
    ids, mask = _batch()
    out = model(ids, mask)
    assert out.logits.shape == (2, 7, 61)
    assert out.logits.dtype == jnp.float32
    assert out.keys == {} and out.residuals == {}


def test_padding_does_not_change_real_tokens(family):
    model = models.build(tiny_config(family))
    ids, mask = _batch()
    padded = model(ids, mask).logits[1, :4]
    alone = model(ids[1:, :4], mask[1:, :4]).logits[0]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_probe_taps_shapes(family):
    cfg = tiny_config(family)
    model = models.build(cfg)
    ids, mask = _batch()
    idx = jnp.array([3, 2])
    out = model(ids, mask, Probe(read_index=idx, key_layers=(0, 2), resid_layers=(1,)))
    assert set(out.keys) == {0, 2} and out.keys[0].shape == (2, cfg.intermediate_size)
    assert out.residuals[1].shape == (2, cfg.hidden_size)
    full = model(ids, mask, Probe(key_layers=(1,), resid_layers=(1,), stop_layer=1))
    assert full.logits is None
    assert full.keys[1].shape == (2, 7, cfg.intermediate_size)
    np.testing.assert_allclose(full.residuals[1][jnp.arange(2), idx], out.residuals[1], atol=1e-6)


def test_keys_are_down_proj_input(family):
    """The key tap is exactly what the rewrite kernel multiplies: out = keys @ W (+ b)."""
    cfg = tiny_config(family)
    model = models.build(cfg)
    ids, mask = _batch()
    layer = 1
    before = model(ids, mask, Probe(resid_layers=(layer - 1,), stop_layer=layer - 1)).residuals[0]
    out = model(ids, mask, Probe(key_layers=(layer,), resid_layers=(layer,), stop_layer=layer))
    block = model.model.layers[layer] if family == "llama" else model.transformer.h[layer]
    ln = block.input_layernorm if family == "llama" else block.ln_1
    attn = block.self_attn if family == "llama" else block.attn
    ctx = model.context(jnp.broadcast_to(jnp.arange(7), (2, 7)), mask)
    h_mid = before + attn(ln(before), ctx)[0]
    proj = block.mlp.down_proj if family == "llama" else block.mlp.c_proj
    np.testing.assert_allclose(h_mid + proj(out.keys[layer]), out.residuals[layer], atol=1e-5)


def test_delta_and_resume_from_cached_residual(family):
    """Adding a delta after block L and resuming from the cached residual equals the full pass."""
    model = models.build(tiny_config(family))
    ids, mask = _batch()
    delta = jax.random.normal(jax.random.key(0), (2, 30))
    idx = jnp.array([3, 2])
    full = model(ids, mask, Probe(delta=delta, delta_index=idx, delta_layer=0))
    cached = model(ids, mask, Probe(resid_layers=(0,), stop_layer=0)).residuals[0]
    resumed = model(
        ids, mask, Probe(hidden=cached, start_layer=1, delta=delta, delta_index=idx, delta_layer=0)
    )
    np.testing.assert_allclose(full.logits, resumed.logits, atol=1e-5)
    plain = model(ids, mask)
    # Causal: positions before the patched token are unchanged, the patched one is not.
    np.testing.assert_allclose(full.logits[0, :3], plain.logits[0, :3], atol=1e-5)
    assert np.abs(full.logits[0, 3:] - plain.logits[0, 3:]).max() > 1e-4


def test_logits_index_gathers_positions(family):
    model = models.build(tiny_config(family))
    ids, mask = _batch()
    pos = jnp.array([[0, 6], [1, 3]])
    some = model(ids, mask, Probe(logits_index=pos)).logits
    allv = model(ids, mask).logits
    np.testing.assert_allclose(some, jnp.take_along_axis(allv, pos[:, :, None], axis=1), atol=1e-6)


def test_jit_over_graphdef_and_state(family):
    model = models.build(tiny_config(family))
    graphdef, state = nnx.split(model)
    ids, mask = _batch()
    f = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m).logits)
    np.testing.assert_allclose(f(state, ids, mask), model(ids, mask).logits, atol=1e-6)


def test_probe_layer_out_of_range_is_an_error():
    model = models.build(tiny_config("llama"))
    ids, mask = _batch()
    with pytest.raises(ValueError, match="outside the blocks"):
        model(ids, mask, Probe(key_layers=(2,), stop_layer=1))


LLAMA3_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
GPT2_XL = {
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_embd": 1600,
    "n_layer": 48,
    "n_head": 25,
    "n_positions": 1024,
}


@pytest.mark.parametrize(
    "hf,params,rewrite",
    [
        (LLAMA3_8B, 8_030_261_248, (14336, 4096)),
        (GPT2_XL, 1_557_611_200, (6400, 1600)),
    ],
)
def test_full_size_shapes_without_memory(hf, params, rewrite):
    cfg = ModelConfig.from_hf(hf)
    abstract = models.build_abstract(cfg)
    _, state = nnx.split(abstract)
    leaves = jax.tree.leaves(state)
    assert sum(int(np.prod(x.shape)) for x in leaves) == params
    node = state
    for p in models.rewrite_path(cfg, 5):
        node = node[p]
    assert tuple(node.shape) == rewrite


def test_config_layouts_and_rejections():
    old = dict(
        LLAMA3_8B,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    new = dict(LLAMA3_8B)
    new.pop("rope_theta")
    new["rope_parameters"] = {"rope_theta": 500000.0, **old["rope_scaling"]}
    a, b = ModelConfig.from_hf(old), ModelConfig.from_hf(new)
    assert a.rope_theta == b.rope_theta == 500000.0 and a.rope_scaling == b.rope_scaling
    assert a.head_dim == 128
    for bad, field in [
        (dict(LLAMA3_8B, attention_bias=True), "attention_bias"),
        (dict(LLAMA3_8B, mlp_bias=True), "mlp_bias"),
        (dict(LLAMA3_8B, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type"),
        (dict(LLAMA3_8B, hidden_act="gelu"), "hidden_act"),
        (dict(GPT2_XL, activation_function="relu"), "activation_function"),
        (dict(GPT2_XL, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "mistral"}, "model_type"),
    ]:
        with pytest.raises(ConfigError, match=field):
            ModelConfig.from_hf(bad)


def test_window_mode_equals_full_pass(family):
    """Re-running only a window of positions from cached keys/values gives the full pass's
    outputs."""
    cfg = tiny_config(family)
    model = models.build(cfg)
    ids, mask = _batch()
    z = 0
    start = jnp.array([3, 1])
    w = 3
    delta = jax.random.normal(jax.random.key(1), (2, cfg.hidden_size))
    full = model(ids, mask, Probe(delta=delta, delta_index=start, delta_layer=z))
    clean = model(ids, mask, Probe(resid_layers=(z,), kv_layers=tuple(range(cfg.num_layers))))
    rows = jnp.arange(2)[:, None]
    window_pos = start[:, None] + jnp.arange(w)[None, :]
    hidden = clean.residuals[z][rows, window_pos]
    out = model(
        ids,
        mask,
        Probe(
            hidden=hidden,
            start_layer=z + 1,
            window_start=start,
            kv_cache=clean.kv,
            delta=delta,
            delta_index=jnp.zeros(2, jnp.int32),
            delta_layer=z,
            logits_index=jnp.array([[0, 1, 2], [0, 1, 2]]),
        ),
    )
    expected = full.logits[rows, window_pos]
    np.testing.assert_allclose(out.logits[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(out.logits[1, :3], expected[1, :3], atol=1e-5)  # row 1 real: 1..3


def test_window_from_layer0_is_a_kv_cached_decode_step(family):
    """Window mode from the embedding (one token over the cache) = the full pass at that position,
    and the cached greedy decoder equals step-by-step argmax over full passes, rows of different
    lengths."""
    from jaxedit.lm import _decode

    cfg = tiny_config(family)
    model = models.build(cfg)
    graphdef, params = nnx.split(model)
    ids = jnp.array([[5, 9, 3, 7, 0, 0, 0, 0, 0, 0], [4, 8, 0, 0, 0, 0, 0, 0, 0, 0]], jnp.int32)
    lengths = jnp.array([4, 2])
    out = _decode(graphdef, params, ids, lengths, 5, jnp.int32(-1), jax.random.key(0), 0)
    for row in range(2):
        seq = [int(x) for x in ids[row, : int(lengths[row])]]
        for _ in range(5):
            x = jnp.array([seq], jnp.int32)
            seq.append(int(jnp.argmax(model(x).logits[0, -1])))
        assert [int(x) for x in out[row, : len(seq)]] == seq
    # Sampling is a function of the key only.
    a = _decode(graphdef, params, ids, lengths, 5, jnp.int32(-1), jax.random.key(3), 4)
    b = _decode(graphdef, params, ids, lengths, 5, jnp.int32(-1), jax.random.key(3), 4)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="window mode"):
        model(
            ids,
            None,
            Probe(
                window_start=lengths,
                start_layer=0,
                hidden=jnp.zeros((2, 1, cfg.hidden_size)),
                kv_cache={},
            ),
        )
