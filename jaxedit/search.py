"""Target-activation search (reference §2): every request of a batch in one jitted `lax.while_loop`.

For request j the search finds δ_j so that z_j = h₀_j + δ_j, written into the residual stream after
block `z_layer` at the subject's last token, makes the model predict the new target in every
context:

    L_j(δ) = NLL_j + kl_factor · KL(q_cur ‖ q₀) + weight_decay · ‖δ‖ / ‖h₀‖²        (§2.5, quirk Q1)

NLL_j is the mean over the rewriting prompts (context templates × the prompt, teacher-forced with
the target minus its last token) of the per-prompt mean token NLL; the KL term is at the subject's
last token of "{subject} is a". Per iteration, in the reference order (§2.6):

    1. forward/loss;  2. MPES: if every target position of the MPES prompts is argmax, count += 1,
    stop at count == patience (cumulative, quirk Q3), or the probability rule;  3. stop if L < 5e-2;
    4. stop at the last iteration (so at most num_steps - 1 Adam steps, Q4);  5. Adam step;
    6. project δ onto ‖δ‖ ≤ clamp·‖h₀‖.

Batching. The rows of all requests (n_templates + 1 each, r-major) go through the model together.
The losses of different requests are independent and Adam is elementwise, so freezing the updates of
stopped requests reproduces request-by-request runs; the loop ends when every request has stopped.
Once at most half of the slots are live, the live requests are compacted into a smaller batch and
the loop goes on there (`search_targets`), so early-stopping requests (MPES) also save time inside a
large batch.

Doing less work than the reference: blocks 0..z_layer do not depend on δ, so their output is
computed once and each iteration re-runs only blocks z_layer+1..; logits are computed only at the
target positions and the KL position, not for the whole sequence; the gradient is taken with respect
to δ only (no weight gradients).

LTI (`search.lti`, `jaxedit.lti`): the teacher pass runs once before the loop (`search_targets`
takes its rows); the loss becomes nll_factor·NLL + KL_last + KL_mid + weight decay (no `kl_factor`
term). The student's mid-layer residual at the subject's last token is the window's δ position,
read in the same re-run when `midlayer` > z_layer; at or below z_layer it does not depend on δ and
is read once from the clean pass.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxedit import lti, sharding
from jaxedit.config import SearchConfig
from jaxedit.models import Probe
from jaxedit.prompts import (  # noqa: F401 (re-exported: the search's public API)
    SearchBatch,
    TeacherBatch,
    build_search_batch,
    build_teacher_batch,
    flatten_templates,
    target_token_ids,
)
from jaxedit.shapes import bucket_pow2

if TYPE_CHECKING:
    from jaxedit.requests import EditRequest

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What the search returns (all `[r]`-leading arrays; history `[num_steps, r]`, NaN after the
    stop).

    `stop_steps[j]` is the number of Adam steps applied to request j (= the iteration at which it
    stopped), `target_prob[j]` the mean target probability over its rewriting prompts at that
    iteration.

    `search_targets` returns JAX arrays; the editor holds host (numpy) arrays in one it builds for
    given targets (no search).
    """

    targets: Array | np.ndarray  # z = h0 + delta, [r, d]
    target_init: Array | np.ndarray  # h0, [r, d]
    delta: Array | np.ndarray
    stop_steps: Array | np.ndarray
    target_prob: Array | np.ndarray
    loss: Array | np.ndarray  # final loss, [r]
    history: dict[str, Array | np.ndarray]
    # seconds of LTI's teacher pass (0 without LTI; the first call includes its compilation)
    teacher_time: float = dataclasses.field(default=0.0, metadata=dict(static=True))


def _norm(x: Array) -> Array:
    """‖x‖ over the last axis with a zero (sub)gradient at 0, like torch.norm."""
    sq = jnp.sum(x * x, axis=-1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


# Compaction: once at most half of a batch's slots are still searching (and at least
# `_COMPACT_MIN_STEPS` iterations remain), the live requests are gathered into the next power-of-two
# batch (never below `min_bucket`) and the loop goes on there, so a batch costs about Σ_j steps_j
# rather than r · max_j steps_j. MPES stops most requests after ~10 of 25 iterations while a few run
# to the end; without compaction a batch of 100 waits for its slowest request at full width.
COMPACT_MIN_BUCKET = 8
_COMPACT_MIN_STEPS = 3


def _split_rows(x: Array, r: int, g: int) -> Array:
    return x.reshape(r, g, *x.shape[1:])


def _merge_rows(x: Array) -> Array:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


_HIST_KEYS = ("loss", "nll", "kl", "wd", "avg_prob", "delta_norm")


def _hist_keys(hp: SearchConfig) -> tuple[str, ...]:
    """History rows: with LTI, "kl" is the weighted KL_last and "mid_kl" the weighted KL_mid."""
    return _HIST_KEYS + (("mid_kl",) if hp.lti else ())


def _optimizer(hp: SearchConfig):
    return optax.inject_hyperparams(optax.adam)(learning_rate=hp.lr)


@functools.partial(jax.jit, static_argnames=("graphdef", "z_layer"))
def _prepare(graphdef, params, batch: SearchBatch, hp: SearchConfig, z_layer: int, lti_ref=None):
    """The clean pass (δ = 0) and the initial loop state; every context leaf is request-major
    `[r, ...]`.

    One clean pass gives the residual after z_layer, the keys/values of the later blocks (positions
    before each row's window are unaffected by δ) and the reference distribution q0; with LTI
    (`lti_ref`: the teacher) and `midlayer` <= z_layer also the student's constant mid-layer lens.
    """
    model = nnx.merge(graphdef, params)
    r, g, t = batch.input_ids.shape
    ids = batch.input_ids.reshape(r * g, t)
    mask = batch.mask.reshape(r * g, t)
    lookup = batch.lookup.reshape(r * g)
    logits_index = jnp.asarray(batch.target_pos).reshape(r * g, -1)  # a no-op under jit
    mid_below = hp.lti and hp.midlayer < z_layer
    clean = model(
        ids,
        mask,
        Probe(
            resid_layers=(z_layer, hp.midlayer) if mid_below else (z_layer,),
            logits_index=logits_index,
            kv_layers=tuple(range(z_layer + 1, model.num_layers)),
        ),
    )
    prefix = clean.residuals[z_layer]
    h0 = prefix.reshape(r, g, t, -1)[jnp.arange(r), 0, batch.lookup[:, 0]].astype(jnp.float32)
    start = batch.window_start.reshape(r * g)
    window_pos = start[:, None] + jnp.arange(batch.window_len)[None, :]
    window_hidden = jnp.take_along_axis(prefix, jnp.minimum(window_pos, t - 1)[:, :, None], axis=1)
    rows = dict(
        ids=ids,
        mask=mask,
        hidden=window_hidden,
        start=start,
        kv=clean.kv,
        delta_index=lookup - start,
        logits_index=logits_index - start[:, None],
    )
    logp0 = jax.nn.log_softmax(clean.logits.reshape(r, g, -1, model.config.vocab_size), axis=-1)
    ctx = dict(
        rows=jax.tree.map(lambda x: _split_rows(x, r, g), rows),
        h0=h0,
        h0_norm=_norm(h0),
        kl_ref=logp0[:, g - 1, 0],  # q0 at the KL prompt, [r, v]
        target_ids=batch.target_ids,
        target_mask=batch.target_mask,
    )
    if hp.lti:
        ctx["lti_ref"] = lti_ref
        if hp.midlayer <= z_layer:  # block midlayer's output does not see δ (added after z_layer)
            h_mid = clean.residuals[hp.midlayer][jnp.arange(r * g), lookup]
            ctx["lti_mid"] = lti.logit_lens(model, h_mid).reshape(r, g, -1)
    init = dict(
        it=jnp.int32(0),
        delta=jnp.zeros_like(h0),
        opt_state=_optimizer(hp).init(jnp.zeros_like(h0)),
        done=~batch.valid,
        count=jnp.zeros((r,), jnp.int32),
        stop_step=jnp.zeros((r,), jnp.int32),
        prob=jnp.zeros((r,), jnp.float32),
        loss=jnp.zeros((r,), jnp.float32),
        history={k: jnp.full((hp.num_steps, r), jnp.nan, jnp.float32) for k in _hist_keys(hp)}
        | {"num_correct": jnp.full((hp.num_steps, r), -1, jnp.int32)},
    )
    return ctx, init


@functools.partial(jax.jit, static_argnames=("graphdef", "z_layer"))
def _run(graphdef, params, ctx, state, hp: SearchConfig, z_layer: int, min_live: Array):
    """Search iterations on the slots of `ctx` until every slot has stopped, or (for compaction)
    until at most `min_live` are live with at least `_COMPACT_MIN_STEPS` iterations left."""
    model = nnx.merge(graphdef, params)
    r, g = ctx["target_ids"].shape[:2]
    n_rw = g - 1
    rows = jax.tree.map(_merge_rows, ctx["rows"])
    mid_above = hp.lti and hp.midlayer > z_layer
    window_probe = dict(
        hidden=rows["hidden"],
        start_layer=z_layer + 1,
        window_start=rows["start"],
        kv_cache=rows["kv"],
        delta_index=rows["delta_index"],
        delta_layer=z_layer,
        logits_index=rows["logits_index"],
    )
    if mid_above:  # the subject's last token is the window's δ position: recomputed every step
        window_probe.update(resid_layers=(hp.midlayer,), read_index=rows["delta_index"])
    h0_norm, kl_ref = ctx["h0_norm"], jax.lax.stop_gradient(ctx["kl_ref"])
    target_ids = ctx["target_ids"][:, :n_rw]
    tmask = ctx["target_mask"][:, :n_rw]
    mpes_rows = jnp.arange(n_rw) >= (1 if hp.mpes_prompts == "context" else 0)

    def loss_fn(delta):
        rows_delta = jnp.repeat(delta, g, axis=0)
        out = model(rows["ids"], rows["mask"], Probe(delta=rows_delta, **window_probe))
        logits = out.logits.reshape(r, g, -1, model.config.vocab_size)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = jnp.take_along_axis(logp[:, :n_rw], target_ids[..., None], axis=-1)[..., 0]
        nll_rows = -jnp.sum(jnp.where(tmask > 0, tok, 0.0), -1) / jnp.maximum(
            jnp.sum(tmask, -1), 1.0
        )  # [r, n_rw]
        nll = jnp.mean(nll_rows, -1)
        dnorm = _norm(delta)
        wd_num = dnorm if hp.weight_decay_form == "norm" else dnorm**2
        wd = hp.weight_decay * wd_num / (h0_norm**2)
        extra = {}
        if hp.lti:  # MEMIT's KL term is dropped: the KL prompt's row of KL_last replaces it
            if mid_above:
                mid_logp = lti.logit_lens(model, out.residuals[hp.midlayer]).reshape(r, g, -1)
            else:
                mid_logp = ctx["lti_mid"]
            last_kl, mid_kl = lti.kl_terms(logp, mid_logp, ctx["lti_ref"], ctx["target_mask"])
            kl = hp.last_kl_factor * last_kl
            extra["mid_kl"] = hp.mid_kl_factor * mid_kl
            loss = hp.nll_factor * nll + kl + extra["mid_kl"] + wd
        else:
            q = logp[:, n_rw, 0]
            kl = hp.kl_factor * jnp.sum(jnp.exp(q) * (q - kl_ref), -1)
            loss = nll + kl + wd
        hit = (jnp.argmax(logits[:, :n_rw], -1) == target_ids) & (tmask > 0)
        hit_rows = hit & mpes_rows[None, :, None]
        all_correct = jnp.all(hit_rows | (tmask == 0) | ~mpes_rows[None, :, None], axis=(1, 2))
        aux = dict(
            loss=loss,
            nll=nll,
            kl=kl,
            wd=wd,
            avg_prob=jnp.mean(jnp.exp(-nll_rows), -1),
            num_correct=jnp.sum(hit_rows, axis=(1, 2)).astype(jnp.int32),
            delta_norm=dnorm,
            all_correct=all_correct,
            **extra,
        )
        return jnp.sum(loss), aux

    opt = _optimizer(hp)
    n = hp.num_steps

    def cond(s):
        live = jnp.sum(~s["done"])
        compact = (live <= min_live) & (n - s["it"] >= _COMPACT_MIN_STEPS)
        return (s["it"] < n) & (live > 0) & ~compact

    def body(s):
        it, done = s["it"], s["done"]
        (_, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(s["delta"])
        live = ~done
        history = {
            k: v.at[it].set(jnp.where(live, aux[k].astype(v.dtype), v[it]))
            for k, v in s["history"].items()
        }
        count = s["count"] + (live & aux["all_correct"]).astype(jnp.int32)
        stop = jnp.zeros_like(done)
        if hp.mpes_patience > 0:
            stop = stop | (count >= hp.mpes_patience)
        stop = stop | ((hp.stop_prob > 0) & (aux["avg_prob"] > hp.stop_prob))
        stop = stop | (aux["loss"] < hp.loss_threshold) | (it == n - 1)
        stop = stop & live
        new_done = done | stop
        updates, opt_state = opt.update(grad, s["opt_state"], s["delta"])
        moving = ~new_done[:, None]
        delta = s["delta"] + jnp.where(moving, updates, 0.0)
        max_norm = hp.clamp_norm_factor * h0_norm
        dn = _norm(delta)
        scale = jnp.where(dn > max_norm, max_norm / jnp.where(dn > 0, dn, 1.0), 1.0)
        delta = jnp.where(moving, delta * scale[:, None], delta)
        return dict(
            it=it + 1,
            delta=delta,
            opt_state=opt_state,
            done=new_done,
            count=count,
            stop_step=jnp.where(stop, it, s["stop_step"]),
            prob=jnp.where(stop, aux["avg_prob"], s["prob"]),
            loss=jnp.where(stop, aux["loss"], s["loss"]),
            history=history,
        )

    return jax.lax.while_loop(cond, body, state)


@jax.jit
def _take(ctx, state, idx: Array, pad: Array):
    """The slots `idx` of the context and the loop state (history is `[steps, r]`; the optimizer
    state's arrays are `[r, d]`, its step count a scalar); slots where `pad` is set are inert
    (stopped) copies."""
    take = lambda x: x[idx]  # noqa: E731
    ctx = jax.tree.map(take, ctx)
    state = dict(state)
    history = state.pop("history")
    opt_state = state.pop("opt_state")
    it = state.pop("it")
    state = jax.tree.map(take, state)
    state["done"] = state["done"] | pad
    state["history"] = {k: v[:, idx] for k, v in history.items()}
    state["opt_state"] = jax.tree.map(lambda x: x[idx] if x.ndim else x, opt_state)
    state["it"] = it
    return ctx, state


def _place_state(mesh, state):
    """The loop state's `[r, ...]` leaves over `data` (history is `[steps, r]`: replicated, it is
    small; the scalar counters stay as they are)."""
    out = {k: v for k, v in state.items() if k in ("it", "history")}
    r = state["done"].shape[0]
    rest = {k: v for k, v in state.items() if k not in out}
    placed = jax.tree.map(
        lambda x: sharding.place_rows(mesh, x) if x.ndim and x.shape[0] == r else x, rest
    )
    return out | placed


def search_targets(
    graphdef,
    params,
    batch: SearchBatch,
    hp: SearchConfig,
    z_layer: int,
    *,
    teacher: TeacherBatch | None = None,
    min_bucket: int = COMPACT_MIN_BUCKET,
    mesh=None,
) -> SearchResult:
    """Runs the target search for every request of `batch` on the model `(graphdef, params)`.

    With `hp.lti`, `teacher` holds LTI's teacher rows (`build_teacher_batch`, with `batch` built
    with `kl_position="last"`); the teacher pass runs once, on `params`, before the loop.

    The iterations run in jitted `lax.while_loop`s; between them the live requests are compacted
    into smaller batches (see `COMPACT_MIN_BUCKET`; `min_bucket=0` keeps the full batch to the end).
    Each request's trajectory does not depend on which slot or batch width it is run in, so
    compaction changes results only by float rounding.

    With a `mesh` (`params` placed on it, `batch.num_requests` a multiple of its data size), the
    request rows are split over the mesh's `data` axis and compacted batches stay multiples of it.
    """
    r = batch.num_requests
    n = hp.num_steps
    data = sharding.data_size(mesh)
    batch = sharding.place_rows(mesh, batch)
    lti_ref, teacher_time = None, 0.0
    if hp.lti:
        if teacher is None:
            raise ValueError("search.lti needs the teacher rows (prompts.build_teacher_batch)")
        t0 = time.perf_counter()
        teacher = sharding.place_rows(mesh, teacher)
        lti_ref = jax.block_until_ready(
            lti.teacher_log_probs(graphdef, params, teacher, hp.midlayer)
        )
        teacher_time = time.perf_counter() - t0
    ctx, state = _prepare(graphdef, params, batch, hp, z_layer, lti_ref)
    h0 = ctx["h0"]
    out_keys = ("delta", "stop_step", "prob", "loss")
    out = {k: np.zeros(np.shape(state[k]), state[k].dtype) for k in out_keys}
    history = {k: np.zeros(v.shape, v.dtype) for k, v in state["history"].items()}
    members, real = np.arange(r), np.ones(r, bool)  # original request of each slot; False = padding
    while True:
        size = len(members)
        min_live = size // 2 if min_bucket > 0 and size // 2 >= min_bucket else -1
        state = _run(graphdef, params, ctx, state, hp, z_layer, jnp.int32(min_live))
        host = jax.tree.map(
            sharding.to_host, {k: state[k] for k in (*out_keys, "it", "done", "history")}
        )
        for k in out_keys:
            out[k][members[real]] = host[k][real]
        for k, v in host["history"].items():
            history[k][:, members[real]] = v[:, real]
        live = np.flatnonzero(~host["done"])
        if live.size == 0 or host["it"] >= n:
            break
        new_size = -(-bucket_pow2(live.size, min_bucket) // data) * data
        idx = np.concatenate([live, np.full(new_size - live.size, live[0])])
        pad = np.arange(new_size) >= live.size
        ctx, state = _take(ctx, state, jnp.asarray(idx), jnp.asarray(pad))
        if mesh is not None:  # the gathered slots back over `data`
            ctx, state = sharding.place_rows(mesh, ctx), _place_state(mesh, state)
        members, real = members[idx], ~pad
    delta = jnp.asarray(out["delta"])
    return SearchResult(
        targets=h0 + delta,
        target_init=h0,
        delta=delta,
        stop_steps=jnp.asarray(out["stop_step"]),
        target_prob=jnp.asarray(out["prob"]),
        loss=jnp.asarray(out["loss"]),
        history={k: jnp.asarray(v) for k, v in history.items()},
        teacher_time=teacher_time,
    )


def search_requests(
    graphdef,
    params,
    tokenizer,
    requests: Sequence[EditRequest],
    templates,
    hp: SearchConfig,
    z_layer: int,
    *,
    pad_requests_to: int | None = None,
    max_length: int | None = None,
    mesh=None,
) -> tuple[SearchResult, list[dict]]:
    """Tokenizes `requests` (`build_search_batch`; with `hp.lti` also LTI's teacher rows at
    `hp.teacher_positions`, `build_teacher_batch`) and runs `search_targets` on them. Returns the
    result and the per-request records of `build_search_batch`."""
    batch, infos = build_search_batch(
        tokenizer,
        requests,
        templates,
        pad_requests_to=pad_requests_to,
        max_length=max_length,
        kl_position="last" if hp.lti else "subject",
    )
    teacher = None
    if hp.lti:
        teacher = build_teacher_batch(
            tokenizer,
            requests,
            templates,
            batch,
            positions=hp.teacher_positions,
            max_length=max_length,
        )
    res = search_targets(graphdef, params, batch, hp, z_layer, teacher=teacher, mesh=mesh)
    return res, infos
