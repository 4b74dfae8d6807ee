"""LTI ("learn the inference", WORKSPACE.md) inside the target search: the in-context teacher
and the two KL terms of its loss.

The teacher is the current (already edited) model, run once per request batch before the search
loop, with no δ, on the rewriting prompts behind the prefix "Imagine that {prompt} {target}\\n"
(the KL prompt without it; `jaxedit.prompts.build_teacher_batch` builds the rows and says where
they are read). It gives, detached, per request:

* `last` `[r, g, p, v]`: last-layer log-probabilities at the target positions of each rewriting row
  and at the KL prompt's last token (every entry of the KL row is that token; only entry 0 counts);
* `mid` `[r, g, v]`: the logit lens of block `midlayer` (final norm, unembedding, log-softmax) at
  the subject's last token of each row.

The student (the search's forward with δ) is compared with it in the loss:

    L(δ) = nll_factor · NLL + last_kl_factor · KL_last + mid_kl_factor · KL_mid + weight decay

with KL_last the mean over the R·T + 1 rows (R rewriting prompts × T target tokens, and the KL
prompt) and KL_mid the mean over the R + 1 rows of KL(student ‖ teacher) = Σ p_s (log p_s − log
p_t): the official `kl_div(teacher, student, log_target=True, reduction="batchmean")`. Everything
here is float32, whatever the model's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.models import Probe
from jaxedit.prompts import TeacherBatch

Array = jax.Array


def logit_lens(model, h: Array) -> Array:
    """Log-probabilities `[..., v]` (float32) of the residual `h` `[..., d]` read through the
    model's final norm and unembedding (the tied embedding or the separate head; neither family's
    head has a bias), at the model's matmul precision."""
    with model.precision_scope():
        logits = model.unembed(model.final_norm(h))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def kl(student: Array, teacher: Array) -> Array:
    """KL(student ‖ teacher) over the last axis of two log-probability arrays (float32)."""
    s, t = student.astype(jnp.float32), teacher.astype(jnp.float32)
    return jnp.sum(jnp.exp(s) * (s - t), axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "midlayer"))
def teacher_log_probs(graphdef, params, tb: TeacherBatch, midlayer: int) -> dict[str, Array]:
    """The teacher pass: one full forward of the teacher rows on `(graphdef, params)`, no δ.

    Returns {"last": `[r, g, p, v]`, "mid": `[r, g, v]`} log-probabilities (float32, see the module
    docstring), with no gradient.
    """
    model = nnx.merge(graphdef, params)
    r, g, t = tb.input_ids.shape
    out = model(
        tb.input_ids.reshape(r * g, t),
        tb.mask.reshape(r * g, t),
        Probe(
            resid_layers=(midlayer,),
            read_index=jnp.asarray(tb.lookup).reshape(r * g),  # jnp.asarray: a no-op under jit
            logits_index=jnp.asarray(tb.target_pos).reshape(r * g, -1),
        ),
    )
    last = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
    mid = logit_lens(model, out.residuals[midlayer])
    ref = dict(last=last.reshape(r, g, *last.shape[1:]), mid=mid.reshape(r, g, -1))
    return jax.lax.stop_gradient(ref)


def kl_terms(
    logp: Array, mid_logp: Array, ref: dict[str, Array], target_mask: Array
) -> tuple[Array, Array]:
    """The unweighted KL_last and KL_mid of each request, `[r]` each.

    Args:
      logp: the student's last-layer log-probabilities `[r, g, p, v]` at the teacher's `last`
        positions of the unprefixed rows (rewriting rows: target positions; KL row: its last token).
      mid_logp: the student's logit lens at block `midlayer` `[r, g, v]`.
      ref: the teacher (`teacher_log_probs`).
      target_mask: `[r, g, p]`, 1 at the real target positions of the rewriting rows (KL row: 0).
    """
    g, p = logp.shape[1], logp.shape[2]
    kl_row = (jnp.arange(g)[:, None] == g - 1) & (jnp.arange(p)[None, :] == 0)  # [g, p]
    weights = jnp.where(kl_row[None], 1.0, target_mask.astype(jnp.float32))
    per_entry = kl(logp, ref["last"])  # [r, g, p]
    last = jnp.sum(weights * per_entry, axis=(1, 2)) / jnp.sum(weights, axis=(1, 2))
    mid = jnp.mean(kl(mid_logp, ref["mid"]), axis=-1)
    return last, mid
