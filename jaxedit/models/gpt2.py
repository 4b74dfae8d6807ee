"""GPT-2 causal LM as `flax.nnx` modules with Hugging Face attribute names.

Learned positions, pre-LayerNorm blocks, fused `c_attn` (q|k|v along the output axis), `gelu_new`
MLP and a head tied to `wte`. HF's `Conv1D.weight` is already `[in, out]`, so kernels here equal the
checkpoint tensors with no transpose; `transformer.h.17.mlp.c_proj.weight` is
`('transformer', 'h', 17, 'mlp', 'c_proj', 'kernel')`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.models import base, layers
from jaxedit.models.config import ModelConfig

Array = jax.Array


class GPT2Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.c_attn = layers.Dense(d, 3 * d, use_bias=True, dtype=dtype, rngs=rngs)
        self.c_proj = layers.Dense(d, d, use_bias=True, dtype=dtype, rngs=rngs)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, x: Array, ctx: dict, cache=None) -> tuple[Array, tuple[Array, Array]]:
        """Returns the output and this call's keys/values (see LlamaAttention for `cache`)."""
        b, t, d = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        shape = (b, t, self.num_heads, self.head_dim)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        kv = (k, v)
        if cache is not None:
            k = layers.merge_cache(cache[0], k, ctx["query_pos"])
            v = layers.merge_cache(cache[1], v, ctx["query_pos"])
        out = layers.attend(q, k, v, ctx["bias"])
        return self.c_proj(out.reshape(b, t, d)), kv


class GPT2MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.c_fc = layers.Dense(
            cfg.hidden_size, cfg.intermediate_size, use_bias=True, dtype=dtype, rngs=rngs
        )
        self.c_proj = layers.Dense(
            cfg.intermediate_size, cfg.hidden_size, use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Array) -> tuple[Array, Array]:
        keys = layers.gelu_new(self.c_fc(x))  # MEMIT's k: input of c_proj
        return self.c_proj(keys), keys


class GPT2Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.ln_1 = layers.LayerNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)
        self.attn = GPT2Attention(cfg, dtype=dtype, rngs=rngs)
        self.ln_2 = layers.LayerNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)
        self.mlp = GPT2MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, h: Array, ctx: dict, cache=None) -> tuple[Array, dict]:
        return base.pre_norm_block(h, ctx, cache, self.ln_1, self.attn, self.ln_2, self.mlp)


class GPT2Model(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.wte = layers.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.wpe = layers.Embedding(
            cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs
        )
        self.h = nnx.List([GPT2Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.ln_f = layers.LayerNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype)


class GPT2LMHeadModel(base.CausalLM):
    """GPT-2 causal LM; `transformer.*` mirrors the HF module tree, the head is `wte.attend`."""

    family = "gpt2"

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self._setup(cfg)
        self.transformer = GPT2Model(cfg, dtype=dtype, rngs=rngs)

    def embed(self, input_ids: Array, positions: Array) -> Array:
        return self.transformer.wte(input_ids) + self.transformer.wpe(positions)

    def context(self, positions: Array, mask: Array, query_pos: Array | None = None) -> dict:
        del positions
        if query_pos is None:
            return {"bias": layers.attention_bias(mask)}
        return {"bias": layers.window_bias(mask, query_pos), "query_pos": query_pos}

    def block(self, i: int, h: Array, ctx: dict, cache=None) -> tuple[Array, dict]:
        return self.transformer.h[i](h, ctx, cache)

    def final_norm(self, h: Array) -> Array:
        return self.transformer.ln_f(h)

    def unembed(self, h: Array) -> Array:
        return self.transformer.wte.attend(h)
