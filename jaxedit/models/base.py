"""The forward contract shared by both families: interventions and taps as data, no hooks.

A `Probe` says, for one forward pass, what to add to the residual stream and what to read from it;
the answer comes back in a `ModelOutput`. This replaces the reference code's `nethook.TraceDict`
string hooks:

* (a) `delta` `[b, d]` is added to the residual stream *after* block `delta_layer`, at token
  `delta_index[b]` of each row (the target-activation search patches h_L at the subject's last
  token);
* (b) `key_layers`: the input of the MLP output projection (`down_proj` / `c_proj`, MEMIT's keys k)
  at those layers, `[b, f]` gathered at `read_index` or `[b, t, f]` when `read_index` is None;
* (c) `resid_layers`: the residual stream after those blocks (after any delta), `[b, d]` or
  `[b, t, d]`.

Switches that let the editor do less work: `start_layer` with `hidden` resumes the pass from a
residual stream cached after block `start_layer - 1` (the search only re-runs the blocks after the
edited one), `stop_layer` ends it after that block without computing logits, and `logits_index`
`[b, p]` computes logits only at the positions a loss needs (the full `[b, t, v]` logits of a 128k
vocabulary are the largest tensor of a forward pass).

Window mode (`window_start` + `kv_cache`): `hidden` `[b, w, d]` is the residual after block
`start_layer - 1` at positions `window_start[b] + arange(w)` only; each later block attends with the
window's queries over the full-length keys/values of an earlier pass (`kv_layers`), with the
window's own keys/values written in. Positions before the window are not recomputed: when a delta is
added at the window's first token, nothing before it changes (causality), so this gives the full
pass's results at the window positions. `delta_index`, `read_index` and `logits_index` then count
within the window. With `start_layer == 0` (no `hidden`), the window's `window_size` tokens are read
from `input_ids` and embedded: one decoding step over a KV cache.

All positions count from the left (right padding): `positions = arange(t)` for every row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.numerics import matmul_precision

Array = jax.Array


def _static(default):
    return dataclasses.field(default=default, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Probe:
    """What one forward pass adds to, and reads from, the residual stream (see module docstring)."""

    read_index: Array | None = None  # [b] token read by key/resid taps; None = all tokens
    delta: Array | None = None  # [b, d] added after block `delta_layer`
    delta_index: Array | None = None  # [b] token that receives `delta`
    hidden: Array | None = None  # [b, t, d] residual after block start_layer - 1
    logits_index: Array | None = None  # [b, p] positions where logits are computed
    window_start: Array | None = (
        None  # [b] window mode: `hidden` covers positions start + arange(w)
    )
    kv_cache: dict | None = None  # window mode: {layer: (k, v)} full-length, from a previous pass
    delta_layer: int = _static(-1)
    key_layers: tuple[int, ...] = _static(())
    resid_layers: tuple[int, ...] = _static(())
    start_layer: int = _static(0)
    stop_layer: int | None = _static(None)  # last block to run; None = all and compute logits
    kv_layers: tuple[int, ...] = _static(())  # return attention keys/values of these blocks
    window_size: int = _static(1)  # window mode from layer 0: tokens per row from window_start


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """What a forward pass returns: logits (None when stopped early) and the requested taps."""

    logits: Array | None
    keys: dict[int, Array]
    residuals: dict[int, Array]
    kv: dict[int, tuple[Array, Array]] = dataclasses.field(default_factory=dict)


def _gather_rows(x: Array, index: Array | None) -> Array:
    """x `[b, t, ...]` at `index[b]` -> `[b, ...]`; identity when index is None."""
    if index is None:
        return x
    return jnp.take_along_axis(x, index[:, None, *([None] * (x.ndim - 2))], axis=1)[:, 0]


def add_at(h: Array, index: Array, delta: Array) -> Array:
    """h `[b, t, d]` + delta `[b, d]` at token `index[b]` of each row."""
    onehot = jax.nn.one_hot(index, h.shape[1], dtype=h.dtype)  # [b, t]
    return h + onehot[:, :, None] * delta[:, None, :].astype(h.dtype)


def pre_norm_block(
    h: Array, ctx: dict, cache, attn_norm, attn, mlp_norm, mlp
) -> tuple[Array, dict]:
    """One pre-norm transformer block (both families): h + attn(norm(h)), then + mlp(norm(h)).

    `attn(x, ctx, cache)` returns (output, its keys/values); `mlp(x)` returns (output, MEMIT's keys:
    the input of its output projection). Returns the new residual and {"keys", "kv"}.
    """
    out, kv = attn(attn_norm(h), ctx, cache)
    h = h + out
    out, keys = mlp(mlp_norm(h))
    return h + out, {"keys": keys, "kv": kv}


class CausalLM(nnx.Module):
    """Base of the two families. Subclasses define `embed`, `context`, `block`, `final_norm`,
    `unembed` and `num_layers`; the loop over blocks and all probe semantics live here."""

    num_layers: int
    family: str = ""

    def _setup(self, cfg) -> None:
        """Checks the config's family and records what the block loop needs."""
        if cfg.family != self.family:
            raise ValueError(
                f"{type(self).__name__} needs a {self.family} config, got family={cfg.family!r}"
            )
        self.config = cfg
        self.num_layers = cfg.num_layers

    # The family's parts, defined by each subclass.
    def embed(self, input_ids: Array, positions: Array) -> Array:
        raise NotImplementedError

    def context(self, positions: Array, mask: Array, query_pos: Array | None = None) -> dict:
        raise NotImplementedError

    def block(self, i: int, h: Array, ctx: dict, cache=None) -> tuple[Array, dict]:
        raise NotImplementedError

    def final_norm(self, h: Array) -> Array:
        raise NotImplementedError

    def unembed(self, h: Array) -> Array:
        raise NotImplementedError

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        probe: Probe | None = None,
    ) -> ModelOutput:
        """Runs the model.

        Args:
          input_ids: `[b, t]` int token ids, right-padded.
          attention_mask: `[b, t]` 1 for real tokens, 0 for padding (default all ones).
          probe: interventions and taps; default none (plain logits).
        Returns:
          ModelOutput with logits `[b, t, v]` (or `[b, p, v]` with `logits_index`) in float32.

        Every matmul is traced at `config.matmul_precision` (`jaxedit.numerics`), whatever the
        caller's global precision flag says.
        """
        with self.precision_scope():
            return self._forward(input_ids, attention_mask, probe or Probe())

    def precision_scope(self):
        """Context under which this model's matmuls are traced (for code that calls submodules)."""
        return matmul_precision(self.config.matmul_precision)

    def _forward(self, input_ids: Array, attention_mask: Array | None, probe: Probe) -> ModelOutput:
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        window_start = probe.window_start
        window = window_start is not None
        if window_start is not None:
            if probe.kv_cache is None or (probe.start_layer > 0) != (probe.hidden is not None):
                raise ValueError(
                    "window mode needs kv_cache, and hidden [b, w, d] exactly when "
                    "start_layer > 0 (from layer 0: window_size tokens of input_ids)"
                )
            w = probe.hidden.shape[1] if probe.hidden is not None else probe.window_size
            query_pos = window_start[:, None] + jnp.arange(w, dtype=jnp.int32)[None, :]
            ctx = self.context(positions, attention_mask, query_pos)
        else:
            ctx = self.context(positions, attention_mask)
        if probe.start_layer == 0 and window:  # embed only the window's tokens (KV-cached decoding)
            h = self.embed(
                jnp.take_along_axis(input_ids, jnp.minimum(query_pos, t - 1), axis=1), query_pos
            )
        elif probe.start_layer == 0:
            h = self.embed(input_ids, positions)
        else:
            if probe.hidden is None:
                raise ValueError("Probe.start_layer > 0 needs Probe.hidden (the cached residual)")
            h = probe.hidden
        last = self.num_layers - 1 if probe.stop_layer is None else probe.stop_layer
        for layer in (probe.key_layers, probe.resid_layers, (probe.delta_layer,)):
            bad = [i for i in layer if i >= 0 and not probe.start_layer - 1 <= i <= last]
            bad += [i for i in layer if i == probe.start_layer - 1 and layer is probe.key_layers]
            if bad:
                raise ValueError(
                    f"probe layers {bad} outside the blocks run [{probe.start_layer}, {last}]"
                )
        keys, residuals, kv = {}, {}, {}

        def after_block(i, h):
            if i == probe.delta_layer and probe.delta is not None:
                h = add_at(h, probe.delta_index, probe.delta)
            if i in probe.resid_layers:
                residuals[i] = _gather_rows(h, probe.read_index)
            return h

        if probe.start_layer > 0:  # the cached residual is the output of block start_layer - 1
            h = after_block(probe.start_layer - 1, h)
        window_cache = probe.kv_cache if window else None  # set in window mode (checked above)
        for i in range(probe.start_layer, last + 1):
            h, aux = self.block(i, h, ctx, None if window_cache is None else window_cache[i])
            if i in probe.key_layers:
                keys[i] = _gather_rows(aux["keys"], probe.read_index)
            if i in probe.kv_layers:
                kv[i] = aux["kv"]
            h = after_block(i, h)
        if probe.stop_layer is not None:
            return ModelOutput(logits=None, keys=keys, residuals=residuals, kv=kv)
        if probe.logits_index is not None:
            h = jnp.take_along_axis(h, probe.logits_index[:, :, None], axis=1)
        logits = self.unembed(self.final_norm(h)).astype(jnp.float32)
        return ModelOutput(logits=logits, keys=keys, residuals=residuals, kv=kv)
