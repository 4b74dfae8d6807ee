"""Closed-form weight updates of MEMIT, sequential MEMIT, ENCORE, AlphaEdit and EMMET (reference
§3-§4).

Orientation. jaxedit keeps the rewritten matrix as a Flax kernel `[d_ff, d_model]` = `[f, d]`
(`[in, out]`), the transpose of docs/reference.md's W `[d, f]`. With keys `K: [f, n]`, spread
residual `R: [d, n]` and the uncentred second moment `C0: [f, f]`, every solver returns the
**kernel** increment

    dW = A Rᵀ  [f, d],  the transpose of docs/reference.md's Δ = R Aᵀ
    (`upd_matrix = resid @ adj_k.T`).

Equations (λ_p = `cov_weight` = `mom2_update_weight`, λ_n = `norm_lambda` = `update_norm_lambda`,
S_prev = Σ_{earlier batches} K_b K_bᵀ, S_all = S_prev + K Kᵀ):

* MEMIT (§4.2), sequential MEMIT (§4.3) and ENCORE (§4.4), one formula:

      A = (λ_p C0 + λ_n I + S_prev + K Kᵀ)⁻¹ K,   dW = A Rᵀ.

  Original MEMIT is λ_n = 0 without S_prev; ENC's MEMIT baseline adds S_prev; ENCORE has λ_n > 0.
  The matrix is symmetric positive definite, so the default solve is Cholesky; `method="lu"` is the
  reference's `torch.linalg.solve`.
* AlphaEdit (§4.5): P = U₀U₀ᵀ with U₀ the singular vectors of the unscaled C0 whose singular value
  is below an absolute threshold (2e-2), and

      dW = X = (P S_all + λ I)⁻¹ P K Rᵀ   (LU: P S_all is not symmetric),

  with S_all **including** the current batch's K Kᵀ (the caller adds it, e.g. with `key_gram`).
* EMMET (§4.6): C = λ_p C0 (+ λ_n I), D = Kᵀ C⁻¹ K (+ μ I when n > 1, the reference's quirk Q15;
  always with `ridge_always=True`, as in UME's older `unified_main.py`) and

      A = C⁻¹ K D⁻¹,   dW = A Rᵀ   (reference: Δ = R (KᵀC⁻¹K + μI)⁻¹ KᵀC⁻¹).

  The reference forms explicit inverses and falls back to `pinv(D)` only when `inverse` raises;
  here both are solves and there is no fallback (not jittable). The ridge μ keeps D invertible for
  n > 1.

Precision (§4.7). Compute is float32 unless an input is float64 (which needs `jax_enable_x64`);
then everything runs in float64, as MEMIT/ENCORE/EMMET do in the reference. Every matmul uses
`Precision.HIGHEST` and the bodies trace under `numerics.traced_at("highest")` (whatever the model's
or the editing config's precision), so XLA never substitutes TF32/bf16 passes on GPU/TPU. Results
come back in the compute dtype; cast them when adding to a lower-precision kernel. A Cholesky
factorisation of a matrix that is not numerically positive definite yields NaNs rather than an error
(e.g. a rank-deficient C0 with λ_n = 0 and a tiny λ_p): use `method="lu"` there.

Compilation. All functions are `jax.jit`-ed. Float hyperparameters (`cov_weight`, `norm_lambda`,
`l2`, `emmet_lambda`, `threshold`) are traced, so a sweep over them reuses one executable (pass
Python floats or float arrays consistently: an int and a float are different abstract signatures).
`method` and `ridge_always` are static; `prev_kkt=None` and an array are two structures and compile
separately.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from jaxedit.numerics import HIGHEST, traced_at

__all__ = [
    "alphaedit_update",
    "emmet_adj_k",
    "emmet_update",
    "key_gram",
    "memit_adj_k",
    "memit_update",
    "null_space_projector",
    "update_diagnostics",
]

SolveMethod = Literal["cholesky", "lu"]
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _compute_dtype(*arrays: jax.Array | None) -> jnp.dtype:
    """float64 if any input is float64 (x64 on), else float32 (bf16/f16 inputs are upcast)."""
    return jnp.result_type(*(a.dtype for a in arrays if a is not None), jnp.float32)


def _spd_solve(a: jax.Array, b: jax.Array, method: SolveMethod) -> jax.Array:
    """Solves a x = b for symmetric positive definite `a`."""
    if method == "cholesky":
        # Cholesky reads one triangle only; `a` is symmetric by construction (up to rounding).
        return jsl.cho_solve(jsl.cho_factor(a, lower=True), b)
    if method == "lu":
        return jnp.linalg.solve(a, b)
    raise ValueError(f"method={method!r}: expected 'cholesky' or 'lu'")


def _eye_like(a: jax.Array) -> jax.Array:
    return jnp.eye(a.shape[0], dtype=a.dtype)


@jax.jit
@traced_at(HIGHEST)
def key_gram(keys: jax.Array) -> jax.Array:
    """K Kᵀ `[f, f]` of keys `[f, n]`, the increment of the sequential caches S_prev / S_all (Q13).

    Float32 keys give float32 (the reference's AlphaEdit cache); cast keys to float64 for the
    MEMIT/ENCORE cache, which the reference keeps in float64.
    """
    keys = keys.astype(_compute_dtype(keys))
    return _mm(keys, keys.T)


@functools.partial(jax.jit, static_argnames=("method",))
@traced_at(HIGHEST)
def memit_adj_k(
    keys: jax.Array,
    cov: jax.Array,
    *,
    cov_weight: float | jax.Array,
    norm_lambda: float | jax.Array = 0.0,
    prev_kkt: jax.Array | None = None,
    method: SolveMethod = "cholesky",
) -> jax.Array:
    """The reference's `adj_k` = (λ_p C0 + λ_n I + S_prev + K Kᵀ)⁻¹ K, `[f, n]` (reference
    §4.2-4.4).

    Args:
      keys: K `[f, n]`, this batch's keys at the layer.
      cov: C0 `[f, f]`, the uncentred second moment (unscaled).
      cov_weight: λ_p (`mom2_update_weight`).
      norm_lambda: λ_n (`update_norm_lambda`; 0 for MEMIT, > 0 for ENCORE).
      prev_kkt: S_prev `[f, f]` = Σ K_b K_bᵀ over **earlier** batches, or None (original MEMIT).
      method: "cholesky" (default; the matrix is SPD) or "lu" (`jnp.linalg.solve`, as torch does).
    """
    dtype = _compute_dtype(keys, cov, prev_kkt)
    keys, cov = keys.astype(dtype), cov.astype(dtype)
    cov_weight, norm_lambda = jnp.asarray(cov_weight, dtype), jnp.asarray(norm_lambda, dtype)
    mat = cov_weight * cov + norm_lambda * _eye_like(cov) + _mm(keys, keys.T)
    if prev_kkt is not None:
        mat = mat + prev_kkt.astype(dtype)
    return _spd_solve(mat, keys, method)


@functools.partial(jax.jit, static_argnames=("method",))
@traced_at(HIGHEST)
def memit_update(keys: jax.Array, resid: jax.Array, cov: jax.Array, **options: Any) -> jax.Array:
    """Kernel increment dW = A Rᵀ `[f, d]` of MEMIT / sequential MEMIT / ENCORE (reference
    §4.2-4.4).

    A = `memit_adj_k(keys, cov, **options)`; `resid` is R `[d, n]`; `options` are the keyword
    arguments of `memit_adj_k` (`cov_weight`, `norm_lambda`, `prev_kkt`, `method`). dW minimises
    ‖Kᵀ(W+dW) − Vᵀ‖² + λ_p‖K₀ᵀdW‖² + ‖K_pᵀdW‖² + λ_n‖dW‖²_F, i.e. it satisfies the normal equations
    (λ_p C0 + S_prev + λ_n I + K Kᵀ) dW = K Rᵀ.
    """
    dtype = _compute_dtype(keys, resid, cov, options.get("prev_kkt"))
    adj_k = memit_adj_k(keys.astype(dtype), cov.astype(dtype), **options)
    return _mm(adj_k, resid.astype(dtype).T)


@functools.partial(jax.jit, static_argnames=("method",))
@traced_at(HIGHEST)
def null_space_projector(
    cov: jax.Array,
    threshold: float | jax.Array = 2e-2,
    *,
    method: Literal["eigh", "svd"] = "eigh",
) -> tuple[jax.Array, jax.Array]:
    """AlphaEdit's projector P = U₀U₀ᵀ `[f, f]` and the null-space dimension (reference §4.5, Q14).

    U₀ are the singular vectors of the **unscaled** C0 whose singular value is < `threshold`
    (absolute, so the dimension depends on C0 being a mean over tokens). C0 is symmetric, so its
    singular values are |eigenvalues| and `eigh` (default) spans the same subspace as the
    reference's `torch.linalg.svd` at about half the cost; `method="svd"` is the reference's
    algorithm. A mask over the spectrum (not boolean indexing) keeps the output shape fixed, so
    this jits and the threshold stays traced.

    Accuracy on the golden SmolLM2 layer-4 C0 (float32, CPU), relative Frobenius vs a float64
    projector: eigh 3.9e-5, svd 3.5e-6, the golden torch P 3.4e-6 (jax's CPU float32 eigh vectors
    are less orthogonal); float64 input gives ~1e-15. Eigenvalues within rounding of the threshold
    could flip between implementations; there the nearest ones sit ~1e-3 relative away from 2e-2
    (0.019979 and 0.020032), far above float32 eigen-solver error, so the dimension (1188) is
    unambiguous.

    Returns:
      (P, dim): P in the compute dtype of `cov`, dim an int32 scalar.
    """
    cov = cov.astype(_compute_dtype(cov))
    if method == "eigh":
        evals, vecs = jnp.linalg.eigh(cov)
        svals = jnp.abs(evals)
    elif method == "svd":
        vecs, svals, _ = jnp.linalg.svd(cov, full_matrices=False)
    else:
        raise ValueError(f"method={method!r}: expected 'eigh' or 'svd'")
    mask = svals < jnp.asarray(threshold, cov.dtype)
    u0 = vecs * mask.astype(cov.dtype)[None, :]
    return _mm(u0, u0.T), jnp.sum(mask, dtype=jnp.int32)


@jax.jit
@traced_at(HIGHEST)
def alphaedit_update(
    keys: jax.Array,
    resid: jax.Array,
    null_proj: jax.Array,
    kkt_all: jax.Array,
    *,
    l2: float | jax.Array,
) -> jax.Array:
    """AlphaEdit kernel increment dW = X = (P S_all + λ I)⁻¹ P K Rᵀ, shape `[f, d]` (reference
    §4.5).

    X is already in kernel orientation (the reference writes Δ = Xᵀ into its `[d, f]` weight).

    Args:
      keys: K `[f, n]`.
      resid: R `[d, n]`.
      null_proj: P `[f, f]` from `null_space_projector`.
      kkt_all: S_all `[f, f]` = Σ K_b K_bᵀ over all batches **including the current one**.
      l2: λ (`L2`, 10 in the shipped hparams).
    """
    dtype = _compute_dtype(keys, resid, null_proj, kkt_all)
    keys, resid = keys.astype(dtype), resid.astype(dtype)
    proj, kkt_all = null_proj.astype(dtype), kkt_all.astype(dtype)
    lhs = _mm(proj, kkt_all) + jnp.asarray(l2, dtype) * _eye_like(proj)
    rhs = _mm(_mm(proj, keys), resid.T)
    return jnp.linalg.solve(lhs, rhs)


@functools.partial(jax.jit, static_argnames=("ridge_always", "method"))
@traced_at(HIGHEST)
def emmet_adj_k(
    keys: jax.Array,
    cov: jax.Array,
    *,
    emmet_lambda: float | jax.Array = 0.1,
    cov_weight: float | jax.Array,
    norm_lambda: float | jax.Array = 0.0,
    ridge_always: bool = False,
    method: SolveMethod = "cholesky",
) -> jax.Array:
    """EMMET's A = C⁻¹ K (Kᵀ C⁻¹ K + μ I)⁻¹ `[f, n]` with C = λ_p C0 (+ λ_n I) (reference §4.6,
    Q15).

    The ridge μ = `emmet_lambda` is added only when n > 1 (n is static, from the shape), as in UME's
    `emmet_main.py`; `ridge_always=True` adds it for n = 1 too. `method` is the solve for C (SPD).
    """
    dtype = _compute_dtype(keys, cov)
    keys, cov = keys.astype(dtype), cov.astype(dtype)
    cov_weight, norm_lambda = jnp.asarray(cov_weight, dtype), jnp.asarray(norm_lambda, dtype)
    c_mat = cov_weight * cov + norm_lambda * _eye_like(cov)
    c_inv_k = _spd_solve(c_mat, keys, method)  # C⁻¹ K  [f, n]
    d_mat = _mm(keys.T, c_inv_k)  # Kᵀ C⁻¹ K  [n, n]
    d_mat = 0.5 * (d_mat + d_mat.T)
    if ridge_always or keys.shape[1] > 1:
        d_mat = d_mat + jnp.asarray(emmet_lambda, dtype) * _eye_like(d_mat)
    # A = C⁻¹ K D⁻¹  (D symmetric): Aᵀ = D⁻¹ (C⁻¹ K)ᵀ.
    return jnp.linalg.solve(d_mat, c_inv_k.T).T


@functools.partial(jax.jit, static_argnames=("ridge_always", "method"))
@traced_at(HIGHEST)
def emmet_update(keys: jax.Array, resid: jax.Array, cov: jax.Array, **options: Any) -> jax.Array:
    """EMMET kernel increment dW = C⁻¹ K (Kᵀ C⁻¹ K + μ I)⁻¹ Rᵀ, shape `[f, d]` (reference §4.6).

    As μ → 0 the edit becomes exact, Kᵀ dW = Rᵀ (the equality-constrained "batched ROME" solution).
    `resid` is R `[d, n]`; `options` are the keyword arguments of `emmet_adj_k` (`cov_weight`,
    `norm_lambda`, `emmet_lambda` traced; `ridge_always`, `method` static).
    """
    dtype = _compute_dtype(keys, resid, cov)
    adj_k = emmet_adj_k(keys.astype(dtype), cov.astype(dtype), **options)
    return _mm(adj_k, resid.astype(dtype).T)


@jax.jit
@traced_at(HIGHEST)
def update_diagnostics(dw: jax.Array, keys: jax.Array, resid: jax.Array) -> dict[str, jax.Array]:
    """Scalars for logging one layer's update: ‖dW‖_F, ‖R‖_F and how well dW reproduces R on K.

    `fit_rel_err` = ‖Kᵀ dW − Rᵀ‖_F / ‖R‖_F (0 for an exact edit; EMMET with μ → 0).
    """
    dtype = _compute_dtype(dw, keys, resid)
    dw, keys, resid = dw.astype(dtype), keys.astype(dtype), resid.astype(dtype)
    resid_fro = jnp.linalg.norm(resid)
    fit = jnp.linalg.norm(_mm(keys.T, dw) - resid.T)
    return {
        "delta_fro": jnp.linalg.norm(dw),
        "resid_fro": resid_fro,
        "fit_rel_err": fit / jnp.maximum(resid_fro, jnp.finfo(dtype).tiny),
    }
