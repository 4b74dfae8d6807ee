"""The published alternatives to ENCORE's norm constraint: RECT and PRUNE (WORKSPACE.md).

RECT (Gu et al. 2024, as the ENCORE repository runs it) keeps only the entries of a batch's update
that change their weight the most, relative to the weight:

    r_ij = |ΔW_ij / (W_ij + ε)|,   k = int(N · (100 − keep) / 100),   τ = the k-th smallest r,
    ΔW_ij ← ΔW_ij if r_ij ≥ τ else 0          (keep = 100: k = 0, everything is kept)

with W the kernel the update is added to (earlier batches included). Without ties, N − k + 1
entries survive (the entry at τ is kept, as the repository's `r >= kthvalue` does).

PRUNE (Ma et al. 2025) restrains the singular values of an update that exceed the largest singular
value σ_max of a reference matrix:

    Δ = U diag(σ) Vᵀ,   F(σ) = log_b σ − log_b σ_max + σ_max  for σ > σ_max, else σ,
    Δ' = U diag(F(σ)) Vᵀ

F is continuous at σ_max (F(σ_max) = σ_max) and grows like log σ above it. Which Δ, which
reference and where Δ' goes depend on the mode (`RegularizeConfig`, `prune_layer`): the official
repository's "official_last_batch" (the last batch's Δ, σ_max of the weights before that batch, Δ'
added on top of the edited weights: W_{T−1} + Δ + Δ') or the paper's "original" (the total
Δ = W_T − W0, σ_max(W0), W0 + Δ' replacing it).

Everything here is a pure function of arrays, jitted, in float32 (float64 when a float64 update
comes in), with the matmul precision set inside.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxedit.numerics import HIGHEST, traced_at

__all__ = ["prune", "prune_details", "prune_layer", "prune_restrain", "rect", "rect_mask"]

Array = jax.Array
RECT_EPS = 1e-8  # the repository's ε, added to the signed weight


def _rect_k(n: int, keep_percent: float) -> int:
    """The repository's k = int(N · (100 − keep) / 100), in Python float arithmetic as it does."""
    return int(n * (100 - keep_percent) / 100)


@functools.partial(jax.jit, static_argnames=("keep_percent",))
def rect_mask(w: Array, dw: Array, keep_percent: float, eps: float | Array = RECT_EPS) -> Array:
    """RECT's mask (bool, the shape of `w`): True where ΔW is kept.

    Args:
      w: the kernel ΔW will be added to: the current, already edited weights.
      dw: the update ΔW (same shape).
      keep_percent: the share of entries kept, in (0, 100] (official 40, the RECT paper 20).
      eps: added to the signed weight before dividing (the repository's 1e-8).

    Numerics: ε is added to the weight in float32 (the repository adds it to its float32 weight
    tensor); the ratio is computed in float32, or in float64 when `dw` is float64 (a
    `solve.float64` run: the repository's update is float64, so is its ratio). Float32 is what a
    TPU has; ratios that float32 cannot tell apart are ties, and ties at τ are kept. The threshold
    is an element of a full sort of the N ratios (O(N log N); `lax.top_k` with k ≈ 0.6 N is far
    slower, and `jnp.partition` is built on it).
    """
    n = w.size
    k = _rect_k(n, keep_percent)
    if k <= 0:  # keep = 100: nothing is dropped (k = 0 has no k-th value)
        return jnp.ones(w.shape, bool)
    dtype = jnp.result_type(dw.dtype, jnp.float32)
    den = (w.astype(jnp.float32) + jnp.float32(eps)).astype(dtype)
    r = jnp.abs(dw.astype(dtype) / den)
    tau = jnp.sort(r.reshape(-1))[min(k, n) - 1]
    return r >= tau


@functools.partial(jax.jit, static_argnames=("keep_percent",))
def rect(w: Array, dw: Array, keep_percent: float, eps: float | Array = RECT_EPS) -> Array:
    """ΔW with the entries RECT drops set to 0 (`rect_mask`); the dtype of `dw`."""
    return jnp.where(rect_mask(w, dw, keep_percent, eps), dw, jnp.zeros((), dw.dtype))


@jax.jit
def prune_restrain(sigma: Array, sigma_max: Array | float, log_base: Array | float) -> Array:
    """PRUNE's F: log_b σ − log_b σ_max + σ_max for σ > σ_max (strictly), σ otherwise."""
    sigma = jnp.asarray(sigma)
    dtype = jnp.result_type(sigma.dtype, jnp.float32)
    sigma, smax = sigma.astype(dtype), jnp.asarray(sigma_max, dtype)
    log_b = jnp.log(jnp.asarray(log_base, dtype))
    above = sigma > smax
    safe = jnp.where(above, sigma, smax)  # no log of 0 in the branch not taken
    restrained = (jnp.log(safe) - jnp.log(smax)) / log_b + smax
    return jnp.where(above, restrained, sigma)


@jax.jit
@traced_at(HIGHEST)
def prune_details(
    delta: Array, w_ref: Array, log_base: Array | float
) -> tuple[Array, Array, Array]:
    """(Δ', σ_max(w_ref), how many singular values of Δ were restrained).

    Float32 throughout (inputs are cast; the repository's PRUNE runs in float32 on GPU), the
    reconstruction matmul at HIGHEST precision. The reduced SVD keeps all min(m, n) components, as
    the repository's `torch.svd` reconstruction does; the original PRUNE keeps only the first
    rank(Δ) of them, and the rest have σ ≈ 0 < σ_max, which F leaves unchanged, so the two agree
    up to float rounding.
    """
    delta = delta.astype(jnp.float32)
    sigma_max = jnp.linalg.svd(w_ref.astype(jnp.float32), compute_uv=False)[0]
    u, s, vt = jnp.linalg.svd(delta, full_matrices=False)
    s_new = prune_restrain(s, sigma_max, log_base)
    restrained = jnp.matmul(u * s_new[None, :], vt, precision=jax.lax.Precision.HIGHEST)
    return restrained, sigma_max, jnp.sum(s > sigma_max)


@jax.jit
def prune(delta: Array, w_ref: Array, log_base: Array | float) -> Array:
    """Δ' = U diag(F(σ)) Vᵀ of Δ = U diag(σ) Vᵀ against σ_max(w_ref) (`prune_details`)."""
    return prune_details(delta, w_ref, log_base)[0]


def prune_layer(
    reference: str,
    log_base: float,
    double_add: bool,
    *,
    previous: Array,
    current: Array,
    delta: Array | None,
    original: Array,
) -> tuple[Array, str, dict]:
    """PRUNE of one edited kernel in a `RegularizeConfig` mode.

    Args:
      reference: "official_last_batch" (Δ = the last batch's `delta`, σ_max of `previous`) or
        "original" (Δ = `current` − `original`, σ_max of `original`).
      log_base: b of F.
      double_add: official mode only: True adds Δ' to `current` (the repository: W_{T−1} + Δ + Δ'),
        False to `previous` (Δ' replaces Δ). The original mode always replaces: W0 + Δ'.
      previous / current: the kernel before / after the last batch.
      delta: the last batch's update as added (float32); unused by the original reference.
      original: the unedited kernel W0.

    Returns:
      (Δ' in float32, the kernel it is added to: "current", "previous" or "original", a record of
      σ_max, the restrained count and ‖Δ‖, ‖Δ'‖). The editor adds Δ' to that kernel once, in
      float32, rounded to the kernel's dtype, and its journal replays exactly that.
    """
    if reference == "official_last_batch":
        if delta is None:
            raise ValueError("official PRUNE needs the last batch's update")
        d, ref, onto = delta, previous, ("current" if double_add else "previous")
    elif reference == "original":
        d = current.astype(jnp.float32) - original.astype(jnp.float32)
        ref, onto = original, "original"
    else:
        raise ValueError(f"prune reference {reference!r}: 'official_last_batch' or 'original'")
    restrained, sigma_max, count = prune_details(d, ref, float(log_base))
    info = {
        "sigma_max": float(sigma_max),
        "restrained": int(count),
        "delta_norm": float(jnp.linalg.norm(d.astype(jnp.float32))),
        "restrained_norm": float(jnp.linalg.norm(restrained)),
        "onto": onto,
    }
    return restrained, onto, info


def prune_kernels(cfg, previous: dict, current: dict, deltas: dict, original: dict, *, add):
    """`prune_layer` of every edited kernel as `cfg` (a `RegularizeConfig`) says.

    Args:
      cfg: the regularizer config (reference, log base, double add).
      previous / current / original: layer -> the kernel before the last batch / now / unedited.
      deltas: layer -> the last batch's update as added (unused by the original reference).
      add: (kernel, Δ') -> the new kernel; the editor's float32 add rounded to the kernel's dtype,
        the operation its journal replays.

    Returns:
      (layer -> Δ', the kernel it is added to, layer -> the new kernel, a JSON record per layer).
    """
    pruned, info, onto = {}, {}, ""
    for layer in current:
        pruned[layer], onto, info[str(layer)] = prune_layer(
            cfg.prune_reference,
            cfg.prune_log_base,
            cfg.prune_double_add,
            previous=previous[layer],
            current=current[layer],
            delta=deltas.get(layer),
            original=original[layer],
        )
    bases = {"current": current, "previous": previous, "original": original}[onto]
    return pruned, onto, {l: add(bases[l], d) for l, d in pruned.items()}, info


def rect_update(w: Array, dw: Array, keep_percent: float) -> tuple[Array, dict]:
    """(ΔW masked by `rect_mask`, a JSON record: entries kept, ‖ΔW‖ before the mask)."""
    mask = rect_mask(w, dw, float(keep_percent))
    record = {
        "kept": int(mask.sum()),
        "full_delta_norm": float(jnp.linalg.norm(dw.astype(jnp.float32))),
    }
    return jnp.where(mask, dw, jnp.zeros((), dw.dtype)), record
