"""Norm analysis (reference §8): norms of the edited matrices and the "activation norm proportion".

Weights. The edited matrix of layer l is the MLP output projection W_l (`down_proj` for Llama,
`mlp.c_proj` for GPT-2; `models.rewrite_path`), a kernel stored `[d_ff, d_model]`:

* `weight_norms`: ‖W_l‖_F for every layer (the paper's norm-growth figure plots this against edits).
* `distance_from_original`: ‖W_l − W_l^orig‖_F; with `per_numel=True` divided by
  numel(W_l) = d_ff·d_model, the reference's `distance_from_original` record (reference §8, Q21).

Activations. The paper's code for its activation-norm figure does not exist; this is jaxedit's
stated definition (the reconstruction suggested in reference §8). Both families are pre-norm
residual networks,

    h_{-1} = embed(x)          Llama: token embeddings; GPT-2: token + position embeddings
    h_l    = h_{l-1} + a_l + m_l,   a_l = attn_l(norm(h_{l-1})),  m_l = mlp_l(norm(h_{l-1} + a_l))
    h_L    = h_{num_layers-1}   the final residual, before the final norm

so h_L = h_{-1} + Σ_l (a_l + m_l) exactly. The contributions are read from one forward pass with
the existing `Probe` taps, no hooks: m_l = k_l @ W_l (+ c_proj bias for GPT-2), with k_l the
`key_layers` tap (the input of W_l), computed by the model's own Dense layer; a_l = (h_l − h_{l−1})
− m_l from the `resid_layers` taps. At every real (non-padding) token t, with ‖·‖ the L2 norm over
d_model:

    total_t         = Σ_j (‖a_{j,t}‖ + ‖m_{j,t}‖)      (all layers j; the embedding is not counted)
    mlp_share[l]    = mean_t ‖m_{l,t}‖ / total_t
    attn_share[l]   = mean_t ‖a_{l,t}‖ / total_t
    mlp_norm[l]     = mean_t ‖m_{l,t}‖,   attn_norm[l] = mean_t ‖a_{l,t}‖
    mlp_to_final[l] = mean_t ‖m_{l,t}‖ / ‖h_{L,t}‖

The mean is over all real tokens of all texts pooled (token-weighted, not per-text), so
Σ_l (mlp_share[l] + attn_share[l]) = 1. Texts are tokenized with the model's tokenizer convention
(special tokens included, e.g. a BOS token counts as a token) and cut to their first `max_length`
tokens; `skip_first_token=True` leaves position 0 out of the means (it still conditions the others).
Contributions are computed in the parameters' dtype and compared in float32 (with bfloat16
parameters a_l also absorbs the rounding of the two residual additions of block l).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.lm import LanguageModel
from jaxedit.models import ModelConfig, Probe, rewrite_path
from jaxedit.shapes import bucket

Array = jax.Array


def _params_and_config(model_or_params, config: ModelConfig | None):
    if isinstance(model_or_params, LanguageModel):
        return model_or_params.params, config or model_or_params.config
    if config is None:
        raise ValueError("pass the ModelConfig with a bare parameter State")
    return model_or_params, config


def _kernel(params, path) -> Array:
    for p in path:
        params = params[p]
    return params[...]


def _layers(config: ModelConfig, layers) -> tuple[int, ...]:
    layers = tuple(range(config.num_layers)) if layers is None else tuple(int(l) for l in layers)
    bad = [l for l in layers if not 0 <= l < config.num_layers]
    if bad or not layers:
        raise ValueError(
            f"layers {list(layers)}: need at least one, all in [0, {config.num_layers})"
        )
    return layers


def _fro(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


@jax.jit
def _frobenius(kernels: tuple[Array, ...]) -> Array:
    return jnp.stack([_fro(k) for k in kernels])


@jax.jit
def _frobenius_diff(now: tuple[Array, ...], orig: tuple[Array, ...]) -> Array:
    return jnp.stack(
        [_fro(a.astype(jnp.float32) - b.astype(jnp.float32)) for a, b in zip(now, orig)]
    )


def weight_norms(model_or_params, config: ModelConfig | None = None, layers=None) -> np.ndarray:
    """‖W_l‖_F of the MLP output kernels (the edited matrices), float32 `[len(layers)]`.

    Args:
      model_or_params: a `LanguageModel` or its `params` State (then `config` is required).
      config: the model's config (taken from the LanguageModel when omitted).
      layers: which layers, in order; default all `num_layers`.
    """
    params, config = _params_and_config(model_or_params, config)
    kernels = tuple(_kernel(params, rewrite_path(config, l)) for l in _layers(config, layers))
    return np.asarray(_frobenius(kernels))


def distance_from_original(
    params,
    original_params,
    config: ModelConfig | None = None,
    layers=None,
    *,
    per_numel: bool = False,
) -> np.ndarray:
    """‖W_l − W_l^orig‖_F of the MLP output kernels, float32 `[len(layers)]`.

    Args:
      params, original_params: the edited and the original parameters (States or `LanguageModel`s).
      config: the model's config (taken from a LanguageModel when omitted).
      layers: which layers, in order; default all.
      per_numel: divide by numel(W_l), the reference's `distance_from_original` record
        (reference §8, Q21).
    """
    params, config = _params_and_config(params, config)
    original_params, _ = _params_and_config(original_params, config)
    layers = _layers(config, layers)
    now = tuple(_kernel(params, rewrite_path(config, l)) for l in layers)
    orig = tuple(_kernel(original_params, rewrite_path(config, l)) for l in layers)
    out = np.asarray(_frobenius_diff(now, orig))
    if per_numel:
        out = out / np.array([k.size for k in now], np.float32)
    return out


# --------------------------------------------------------------------------------------------------
# activations


def _module_at(module, path: tuple):
    for p in path:
        module = module[p] if isinstance(p, int) else getattr(module, p)
    return module


def _contributions(model, ids: Array, mask: Array):
    """One forward pass -> h_{-1} `[b, t, d]`, per layer (a_l, m_l) `[b, t, d]`, h_L; float32."""
    with model.precision_scope():  # the sublayer calls below run outside the model's __call__
        return _contributions_traced(model, ids, mask)


def _contributions_traced(model, ids: Array, mask: Array):
    cfg = model.config
    layers = tuple(range(cfg.num_layers))
    out = model(ids, mask, Probe(key_layers=layers, resid_layers=layers, stop_layer=layers[-1]))
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    prev = model.embed(ids, positions).astype(jnp.float32)
    embed, parts = prev, []
    for l in layers:
        w_out = _module_at(model, rewrite_path(cfg, l)[:-1])  # the Dense holding W_l (and bias)
        m = w_out(out.keys[l]).astype(jnp.float32)
        h = out.residuals[l].astype(jnp.float32)
        parts.append((h - prev - m, m))
        prev = h
    return embed, parts, prev


@functools.partial(jax.jit, static_argnums=0)
def _contribution_arrays(graphdef, params, ids, mask):
    embed, parts, final = _contributions(nnx.merge(graphdef, params), ids, mask)
    return embed, jnp.stack([a for a, _ in parts]), jnp.stack([m for _, m in parts]), final


def sublayer_contributions(model: LanguageModel, ids, mask=None) -> dict[str, np.ndarray]:
    """The residual-stream decomposition of one batch (for checks and per-token plots).

    Args:
      model: the model.
      ids: `[b, t]` right-padded token ids; mask: `[b, t]` 1 for real tokens (default all ones).
    Returns:
      float32 numpy `embed` `[b, t, d]` (h_{-1}), `attn` and `mlp` `[num_layers, b, t, d]`
      (a_l, m_l) and `final` `[b, t, d]` (h_L); embed + Σ_l (attn_l + mlp_l) = final.
    """
    ids = jnp.asarray(ids, jnp.int32)
    mask = jnp.ones(ids.shape, jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
    embed, attn, mlp, final = _contribution_arrays(model.graphdef, model.params, ids, mask)
    return {
        "embed": np.asarray(embed),
        "attn": np.asarray(attn),
        "mlp": np.asarray(mlp),
        "final": np.asarray(final),
    }


_SUMS = ("mlp_share", "attn_share", "mlp_norm", "attn_norm", "mlp_to_final")


@functools.partial(jax.jit, static_argnums=0)
def _norm_sums(graphdef, params, ids, mask, weight):
    """Per-layer sums over the tokens with weight 1 of the five quantities of `_SUMS`, `[5, L]`, and
    the sums of ‖h_{-1}‖ and ‖h_L‖."""
    embed, parts, final = _contributions(nnx.merge(graphdef, params), ids, mask)
    a = jnp.stack([jnp.linalg.norm(a, axis=-1) for a, _ in parts])  # [L, b, t]
    m = jnp.stack([jnp.linalg.norm(m, axis=-1) for _, m in parts])
    total = jnp.sum(a + m, axis=0)  # [b, t]
    final_norm = jnp.linalg.norm(final, axis=-1)
    keep = weight > 0  # padding may hold anything: select, never multiply or divide by it

    def total_over_tokens(x):
        return jnp.sum(jnp.where(keep, x, 0.0), axis=(-2, -1))

    def ratio(x, y):
        return x / jnp.where(keep, y, 1.0)

    per_token = (ratio(m, total), ratio(a, total), m, a, ratio(m, final_norm))
    sums = jnp.stack([total_over_tokens(q) for q in per_token])
    extra = jnp.stack(
        [total_over_tokens(jnp.linalg.norm(embed, axis=-1)), total_over_tokens(final_norm)]
    )
    return sums, extra


@dataclasses.dataclass
class NormProportion:
    """Per-layer means over tokens (definitions in the module docstring); arrays `[num_layers]`."""

    mlp_share: np.ndarray
    attn_share: np.ndarray
    mlp_norm: np.ndarray
    attn_norm: np.ndarray
    mlp_to_final: np.ndarray
    embed_norm: float  # mean ‖h_{-1}‖
    final_norm: float  # mean ‖h_L‖
    num_tokens: int
    num_texts: int

    def as_dict(self) -> dict:
        """JSON-ready: lists of floats."""
        out: dict[str, list[float] | float | int] = {
            k: [float(x) for x in getattr(self, k)] for k in _SUMS
        }
        out.update(
            embed_norm=self.embed_norm,
            final_norm=self.final_norm,
            num_tokens=self.num_tokens,
            num_texts=self.num_texts,
        )
        return out


def _tokenize(model: LanguageModel, texts, max_length: int) -> list[list[int]]:
    seqs: list[list[int]] = []
    for text in texts:
        if isinstance(text, str):
            if model.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token id lists, not strings")
            # truncated by the tokenizer: a long document is never a token list beyond the
            # model's context (and transformers does not warn about one)
            seq = list(model.tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
        else:
            seq = [int(x) for x in text]
        if not seq:
            raise ValueError(f"text {len(seqs)} has no tokens")
        seqs.append(seq[:max_length])
    return seqs


def activation_norm_proportion(
    model: LanguageModel,
    texts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_length: int = 128,
    batch_size: int = 16,
    pad_to: int | None = None,
    skip_first_token: bool = False,
) -> NormProportion:
    """Each sublayer's share of the residual stream's additive contributions (module docstring).

    Args:
      model: the (possibly edited) model.
      texts: strings (tokenized with the model's tokenizer) or token id lists.
      max_length: each text is cut to its first `max_length` tokens (at most the model's context).
      batch_size: rows per forward pass; the last batch is padded with empty rows, so a call
        compiles one shape.
      pad_to: the padded length (default the longest text rounded up to 16); padding does not
        change the result.
      skip_first_token: leave position 0 (e.g. BOS, often an attention sink with outsized norms)
        out of the means.
    Returns:
      `NormProportion` with token-weighted means over all real tokens of all texts.
    """
    seqs = _tokenize(model, texts, min(max_length, model.config.max_position_embeddings))
    if not seqs:
        raise ValueError("no texts")
    context = model.config.max_position_embeddings
    t = pad_to or min(bucket(max(map(len, seqs))), context)
    if t < max(map(len, seqs)) or t > context:
        raise ValueError(f"pad_to={t} must fit the longest text and the model's context")
    batch_size = max(1, min(batch_size, len(seqs)))
    sums, extra, count = np.zeros((len(_SUMS), model.config.num_layers)), np.zeros(2), 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        ids = np.full((batch_size, t), model.pad_id, np.int32)
        mask = np.zeros((batch_size, t), np.int32)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        weight = mask.copy()
        if skip_first_token:
            weight[:, 0] = 0
        s, e = _norm_sums(
            model.graphdef, model.params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(weight)
        )
        sums += np.asarray(s, np.float64)
        extra += np.asarray(e, np.float64)
        count += int(weight.sum())
    if count == 0:
        raise ValueError("no tokens to average over")
    means = sums / count
    mlp_share, attn_share, mlp_norm, attn_norm, mlp_to_final = (  # the rows of `_SUMS`
        means[i].astype(np.float32) for i in range(len(_SUMS))
    )
    return NormProportion(
        mlp_share=mlp_share,
        attn_share=attn_share,
        mlp_norm=mlp_norm,
        attn_norm=attn_norm,
        mlp_to_final=mlp_to_final,
        embed_norm=float(extra[0] / count),
        final_norm=float(extra[1] / count),
        num_tokens=count,
        num_texts=len(seqs),
    )


__all__ = [
    "NormProportion",
    "activation_norm_proportion",
    "distance_from_original",
    "sublayer_contributions",
    "weight_norms",
]
