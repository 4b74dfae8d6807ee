"""Leaf modules and numerics shared by both families.

Kernels are stored `[in, out]` (Flax orientation); Hugging Face `nn.Linear.weight` is `[out, in]`
and the converter owns that transpose (GPT-2's `Conv1D.weight` is already `[in, out]`). Norms,
softmax and RoPE run in float32 whatever the parameter dtype, as in the Hugging Face
implementations, so fp32 logits match the PyTorch reference to ~1e-5.

Einsum letters: b batch rows, t/s time, d model dim, f MLP dim, v vocab, h query heads, k kv heads,
g query heads per kv head, e head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def _normal(rngs: nnx.Rngs, shape, dtype, std: float = 0.02) -> Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), kernel `[in, out]`."""

    def __init__(self, d_in: int, d_out: int, *, use_bias: bool, dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_normal(rngs, (d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if use_bias else None

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...]
        y = jnp.einsum("...i,io->...o", x.astype(kernel.dtype), kernel)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Embedding(nnx.Module):
    """Token (or position) embedding `[vocab, d]`; `attend` is the tied output head."""

    def __init__(self, num: int, dim: int, *, dtype, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_normal(rngs, (num, dim), dtype))

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: Array) -> Array:
        table = self.embedding[...]
        return jnp.einsum("...d,vd->...v", x.astype(table.dtype), table)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: normalise in float32, cast back, then scale (HF `LlamaRMSNorm` order)."""

    def __init__(self, dim: int, eps: float, *, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return self.scale[...] * y


class LayerNorm(nnx.Module):
    """GPT-2 LayerNorm with affine scale and bias, statistics in float32."""

    def __init__(self, dim: int, eps: float, *, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def gelu_new(x: Array) -> Array:
    """GPT-2's tanh approximation of GELU (HF `gelu_new`)."""
    return jax.nn.gelu(x, approximate=True)


def rope_tables(inv_freq: np.ndarray, positions: Array) -> tuple[Array, Array]:
    """cos/sin tables `[b, t, e]` for rotate-half RoPE (HF layout: frequencies repeated twice)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate-half RoPE on `[b, t, heads, e]`, computed in float32 (as HF does for fp32 models)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def attention_bias(mask: Array, q_len: int | None = None) -> Array:
    """Additive causal + key-padding bias `[b, 1, t, t]` in float32 (0 keep, finfo.min drop).

    Right padding is assumed: positions are counted from the left, and a padded query row only
    attends to real tokens before it, so it never produces NaNs.
    """
    t = mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    keep = causal[None, :, :] & mask[:, None, :].astype(bool)
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[:, None, :, :]


def window_bias(mask: Array, query_pos: Array) -> Array:
    """Additive bias `[b, 1, w, t]` for queries at absolute positions `query_pos [b, w]` over all
    `t` keys: a key is visible if it is real (mask) and not after the query."""
    t = mask.shape[-1]
    keep = (jnp.arange(t)[None, None, :] <= query_pos[:, :, None]) & mask[:, None, :].astype(bool)
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[:, None, :, :]


def merge_cache(cache: Array, new: Array, query_pos: Array) -> Array:
    """Writes the window's keys/values `new [b, w, ...]` into a full-length cache `[b, t, ...]` at
    `query_pos [b, w]` (positions past the end are dropped)."""
    rows = jnp.arange(cache.shape[0])[:, None]
    return cache.at[rows, query_pos].set(new.astype(cache.dtype), mode="drop")


def attend(q: Array, k: Array, v: Array, bias: Array) -> Array:
    """Grouped-query scaled dot-product attention.

    Args:
      q: `[b, t, h, e]` queries; k, v: `[b, s, k, e]` keys/values with h a multiple of k.
      bias: `[b, 1, t, s]` additive mask.
    Returns:
      `[b, t, h, e]` attention output in q's dtype.
    """
    b, t, h, e = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, e)
    scores = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(e).astype(np.float32) + bias[:, :, None, :, :]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v)
    return out.reshape(b, t, h, e)
