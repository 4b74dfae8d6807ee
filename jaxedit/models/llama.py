"""Llama-family causal LM as `flax.nnx` modules with Hugging Face attribute names.

Covers Llama 2/3 and SmolLM: RMSNorm, rotate-half RoPE (with Llama-3 `rope_scaling`), grouped-query
attention, SwiGLU MLP, explicit `head_dim`, tied or untied head. A state path reads like the HF
parameter name: `model.layers.5.mlp.down_proj.weight` is
`('model', 'layers', 5, 'mlp', 'down_proj', 'kernel')`, stored transposed (`[in, out]`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.models import base
from jaxedit.models.config import ModelConfig, rope_inv_freq
from jaxedit.models.layers import (
    Dense,
    Embedding,
    RMSNorm,
    apply_rope,
    attend,
    attention_bias,
    merge_cache,
    rope_tables,
    window_bias,
)

Array = jax.Array


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        d, e = cfg.hidden_size, cfg.head_dim
        self.q_proj = Dense(d, cfg.num_heads * e, use_bias=False, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(d, cfg.num_kv_heads * e, use_bias=False, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(d, cfg.num_kv_heads * e, use_bias=False, dtype=dtype, rngs=rngs)
        self.o_proj = Dense(cfg.num_heads * e, d, use_bias=False, dtype=dtype, rngs=rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, e

    def __call__(self, x: Array, ctx: dict, cache=None) -> tuple[Array, tuple[Array, Array]]:
        """Returns the output and this call's (post-RoPE) keys/values. With `cache` (full-length
        keys/values of a previous pass), `x` is a window at `ctx["query_pos"]` whose keys/values
        replace the cached ones there."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, ctx["cos"], ctx["sin"])
        k = apply_rope(k, ctx["cos"], ctx["sin"])
        kv = (k, v)
        if cache is not None:
            k = merge_cache(cache[0], k, ctx["query_pos"])
            v = merge_cache(cache[1], v, ctx["query_pos"])
        out = attend(q, k, v, ctx["bias"])
        return self.o_proj(out.reshape(b, t, -1)), kv


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Dense(d, f, use_bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = Dense(d, f, use_bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Dense(f, d, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        keys = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)  # MEMIT's k: input of down_proj
        return self.down_proj(keys), keys


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.self_attn = LlamaAttention(cfg, dtype=dtype, rngs=rngs)
        self.mlp = LlamaMLP(cfg, dtype=dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)

    def __call__(self, h: Array, ctx: dict, cache=None) -> tuple[Array, dict]:
        return base.pre_norm_block(
            h,
            ctx,
            cache,
            self.input_layernorm,
            self.self_attn,
            self.post_attention_layernorm,
            self.mlp,
        )


class LlamaModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [LlamaDecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)


class LlamaForCausalLM(base.CausalLM):
    """Llama causal LM; `model.*` and `lm_head` mirror the HF module tree."""

    family = "llama"

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self._setup(cfg)
        # A static constant (hashable tuple), not a parameter.
        self.inv_freq = tuple(float(x) for x in rope_inv_freq(cfg))
        self.model = LlamaModel(cfg, dtype=dtype, rngs=rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Dense(cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype, rngs=rngs)
        )

    def embed(self, input_ids: Array, positions: Array) -> Array:
        del positions  # RoPE is applied inside attention
        return self.model.embed_tokens(input_ids)

    def context(self, positions: Array, mask: Array, query_pos: Array | None = None) -> dict:
        pos = positions if query_pos is None else query_pos
        cos, sin = rope_tables(np.asarray(self.inv_freq, np.float32), pos)
        if query_pos is None:
            return {"cos": cos, "sin": sin, "bias": attention_bias(mask)}
        return {
            "cos": cos,
            "sin": sin,
            "bias": window_bias(mask, query_pos),
            "query_pos": query_pos,
        }

    def block(self, i: int, h: Array, ctx: dict, cache=None) -> tuple[Array, dict]:
        return self.model.layers[i](h, ctx, cache)

    def final_norm(self, h: Array) -> Array:
        return self.model.norm(h)

    def unembed(self, h: Array) -> Array:
        if self.lm_head is None:
            return self.model.embed_tokens.attend(h)
        return self.lm_head(h)
