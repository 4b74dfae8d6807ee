"""Closed-form updates (`jaxedit.solve`) against small float64 numpy references of the reference §4
formulas, and against the official MEMIT / ENCORE / AlphaEdit golden arrays (SmolLM2-135M, layer 4).

Orientation: jaxedit returns the kernel increment dW `[f, d]`; docs/reference.md's Δ `[d, f]`
is dWᵀ.
Float64 tests enable x64 only inside a context (other test files in the process run in float32).
"""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest

from jaxedit import solve
from jaxedit.testing import require_shared

F, D, N = 23, 13, 5  # d_ff, d_model, edits: distinct primes so a transposed axis cannot pass
TOP = 15  # rank of the covariance's "large" subspace in the AlphaEdit fixture; F - TOP = null dims
THRESHOLD = 2e-2


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


def rel_err(actual, expected) -> float:
    """Relative Frobenius error, computed in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# ------------------------------------------------------- numpy references (reference §4, math form)


def np_memit_delta(k, r, c0, lam_p, lam_n=0.0, prev=None):
    """reference §4.2-4.4: Δ = R Aᵀ, A = solve(λ_p C0 + λ_n I + S_prev + K Kᵀ, K). Returns
    (Δ, A)."""
    mat = lam_p * c0 + lam_n * np.eye(len(c0)) + k @ k.T
    if prev is not None:
        mat = mat + prev
    adj_k = np.linalg.solve(mat, k)
    return r @ adj_k.T, adj_k


def np_projector(c0, threshold):
    """reference §4.5: P = U₀U₀ᵀ from the SVD of the unscaled C0."""
    u, s, _ = np.linalg.svd(c0, full_matrices=False)
    u0 = u[:, s < threshold]
    return u0 @ u0.T, u0.shape[1]


def np_alphaedit_delta(k, r, p, s_all, l2):
    """reference §4.5: Δ = Xᵀ, X = solve(P S_all + λ I, P K Rᵀ)."""
    x = np.linalg.solve(p @ s_all + l2 * np.eye(len(p)), p @ k @ r.T)
    return x.T


def np_emmet_delta(k, r, c0, lam_p, lam_n=0.0, mu=0.1, ridge_always=False):
    """reference §4.6 with the reference's explicit inverses: Δ = R D⁻¹ Kᵀ C⁻¹, D = KᵀC⁻¹K
    (+ μI)."""
    c_inv = np.linalg.inv(lam_p * c0 + lam_n * np.eye(len(c0)))
    d = k.T @ c_inv @ k
    if ridge_always or k.shape[1] > 1:
        d = d + mu * np.eye(k.shape[1])
    adj_k = (np.linalg.inv(d) @ k.T @ c_inv).T
    return r @ adj_k.T


# ---------------------------------------------------------------- fixtures


def make_problem(seed: int = 0, n: int = N):
    """Keys, residual, a covariance-like C0 (mean of token outer products) and an S_prev."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(F, 300)) * rng.uniform(0.2, 1.0, size=(F, 1))
    c0 = tokens @ tokens.T / tokens.shape[1]
    k = rng.normal(size=(F, n))
    r = rng.normal(size=(D, n)) * 0.1
    k_prev = rng.normal(size=(F, 2 * n))
    return k, r, c0, k_prev @ k_prev.T


def make_lowrank_problem(seed: int = 1):
    """C0 = Q diag(s) Qᵀ: TOP eigenvalues ≥ 0.1, F - TOP below THRESHOLD; K0 in the top subspace."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(F, F)))
    s = np.concatenate([rng.uniform(0.1, 2.0, TOP), rng.uniform(1e-4, 5e-3, F - TOP)])
    c0 = (q * s) @ q.T
    c0 = 0.5 * (c0 + c0.T)
    k0 = q[:, :TOP] @ rng.normal(size=(TOP, N))  # "preserved" keys: live where C0 is large
    k = rng.normal(size=(F, N))
    r = rng.normal(size=(D, N)) * 0.1
    k_prev = rng.normal(size=(F, N))
    return k, r, c0, k0, k_prev @ k_prev.T


MEMIT_VARIANTS = {
    # name: (cov_weight, norm_lambda, use_prev)
    "memit_original": (15000.0, 0.0, False),
    "memit_sequential": (15000.0, 0.0, True),
    "encore": (15000.0, 20.0, True),
    "small_weight": (0.5, 2.0, True),  # S_prev and KKᵀ dominate: another regime of the formula
}


# ---------------------------------------------------------------- MEMIT / ENCORE


@pytest.mark.parametrize("method", ["cholesky", "lu"])
@pytest.mark.parametrize("variant", sorted(MEMIT_VARIANTS))
def test_memit_float64_matches_numpy_and_normal_equations(x64, variant, method):
    lam_p, lam_n, use_prev = MEMIT_VARIANTS[variant]
    k, r, c0, s_prev = make_problem()
    prev = s_prev if use_prev else None
    kwargs = dict(cov_weight=lam_p, norm_lambda=lam_n, prev_kkt=prev, method=method)

    dw = solve.memit_update(k, r, c0, **kwargs)
    adj_k = solve.memit_adj_k(k, c0, **kwargs)
    assert dw.shape == (F, D) and dw.dtype == np.float64
    assert adj_k.shape == (F, N)

    delta_ref, adj_ref = np_memit_delta(k, r, c0, lam_p, lam_n, prev)
    assert rel_err(adj_k, adj_ref) < 1e-10
    assert rel_err(dw, delta_ref.T) < 1e-10  # kernel orientation = Δᵀ
    assert rel_err(np.asarray(adj_k) @ r.T, dw) < 1e-12

    # reference §12.3: Δ (λ_p C0 + S_prev + λ_n I + K Kᵀ) = R Kᵀ.
    mat = lam_p * c0 + lam_n * np.eye(F) + k @ k.T + (s_prev if use_prev else 0.0)
    assert rel_err(np.asarray(dw).T @ mat, r @ k.T) < 1e-10


def test_memit_variants_relations(x64):
    k, r, c0, s_prev = make_problem()
    lam_p = 15000.0
    original = solve.memit_update(k, r, c0, cov_weight=lam_p)
    zero_prev = solve.memit_update(k, r, c0, cov_weight=lam_p, prev_kkt=np.zeros((F, F)))
    assert rel_err(zero_prev, original) < 1e-12

    # S_prev is NOT scaled by λ_p (Q13): same as folding S_prev / λ_p into C0.
    seq = solve.memit_update(k, r, c0, cov_weight=lam_p, prev_kkt=s_prev)
    folded = solve.memit_update(k, r, c0 + s_prev / lam_p, cov_weight=lam_p)
    assert rel_err(seq, folded) < 1e-10
    assert rel_err(seq, original) > 1e-6  # the cache matters

    # ENCORE's λ_n shrinks the increment monotonically.
    norms = [
        np.linalg.norm(
            solve.memit_update(k, r, c0, cov_weight=1.0, norm_lambda=lam, prev_kkt=s_prev)
        )
        for lam in (0.0, 1.0, 10.0, 100.0)
    ]
    assert all(a > b for a, b in itertools.pairwise(norms)), norms


@pytest.mark.parametrize("method", ["cholesky", "lu"])
def test_memit_float32(method):
    k, r, c0, s_prev = make_problem(seed=3)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    dw = solve.memit_update(
        f32(k),
        f32(r),
        f32(c0),
        cov_weight=15000.0,
        norm_lambda=20.0,
        prev_kkt=f32(s_prev),
        method=method,
    )
    assert dw.dtype == np.float32 and dw.shape == (F, D)
    delta_ref, _ = np_memit_delta(k, r, c0, 15000.0, 20.0, s_prev)
    assert rel_err(dw, delta_ref.T) < 1e-4


# ---------------------------------------------------------------- AlphaEdit


@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_null_space_projector_float64(x64, method):
    _, _, c0, k0, _ = make_lowrank_problem()
    p, dim = solve.null_space_projector(c0, THRESHOLD, method=method)
    p = np.asarray(p)
    p_ref, dim_ref = np_projector(c0, THRESHOLD)
    assert p.shape == (F, F) and p.dtype == np.float64
    assert int(dim) == dim_ref == F - TOP
    assert rel_err(p, p_ref) < 1e-10
    np.testing.assert_allclose(p, p.T, atol=1e-14)
    np.testing.assert_allclose(p @ p, p, atol=1e-12)
    assert abs(np.trace(p) - (F - TOP)) < 1e-10
    assert np.linalg.norm(p @ k0) < 1e-12 * np.linalg.norm(k0)  # preserved keys are untouched


def test_null_space_projector_float32_and_threshold_is_traced():
    _, _, c0, k0, _ = make_lowrank_problem()
    c0_32 = np.asarray(c0, np.float32)
    p, dim = solve.null_space_projector(c0_32, THRESHOLD)
    assert p.dtype == np.float32 and int(dim) == F - TOP
    p_ref, _ = np_projector(c0, THRESHOLD)
    assert rel_err(p, p_ref) < 1e-5
    assert np.linalg.norm(np.asarray(p, np.float64) @ k0) < 1e-5 * np.linalg.norm(k0)

    size = solve.null_space_projector._cache_size()
    _, dim_all = solve.null_space_projector(c0_32, 10.0)
    _, dim_none = solve.null_space_projector(c0_32, 1e-6)
    assert (int(dim_all), int(dim_none)) == (F, 0)
    assert solve.null_space_projector._cache_size() == size


def test_alphaedit_float64(x64):
    k, r, c0, k0, s_prev = make_lowrank_problem()
    p, _ = solve.null_space_projector(c0, THRESHOLD)
    s_all = s_prev + np.asarray(solve.key_gram(k))
    dw = solve.alphaedit_update(k, r, p, s_all, l2=10.0)
    assert dw.shape == (F, D) and dw.dtype == np.float64
    p_np = np.asarray(p)
    assert rel_err(dw, np_alphaedit_delta(k, r, p_np, s_all, 10.0).T) < 1e-10
    # X = P(K Rᵀ − S_all X) / λ lies in range(P): the edit leaves the preserved keys' outputs alone.
    assert rel_err(p_np @ np.asarray(dw), dw) < 1e-10
    assert np.linalg.norm(k0.T @ np.asarray(dw)) < 1e-10 * np.linalg.norm(k0) * np.linalg.norm(dw)


def test_alphaedit_float32():
    k, r, c0, _, s_prev = make_lowrank_problem(seed=5)
    p_ref, _ = np_projector(c0, THRESHOLD)
    s_all = s_prev + k @ k.T
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    dw = solve.alphaedit_update(f32(k), f32(r), f32(p_ref), f32(s_all), l2=10.0)
    assert dw.dtype == np.float32
    assert rel_err(dw, np_alphaedit_delta(k, r, p_ref, s_all, 10.0).T) < 1e-4


# ---------------------------------------------------------------- EMMET


@pytest.mark.parametrize("n", [1, N])
@pytest.mark.parametrize("ridge_always", [False, True])
@pytest.mark.parametrize("lam_n", [0.0, 3.0])
def test_emmet_float64_matches_explicit_inverse(x64, n, ridge_always, lam_n):
    k, r, c0, _ = make_problem(seed=7, n=n)
    lam_p, mu = 15000.0, 0.1
    dw = solve.emmet_update(
        k, r, c0, cov_weight=lam_p, norm_lambda=lam_n, emmet_lambda=mu, ridge_always=ridge_always
    )
    assert dw.shape == (F, D)
    ref = np_emmet_delta(k, r, c0, lam_p, lam_n, mu, ridge_always)
    assert rel_err(dw, ref.T) < 1e-8
    adj_k = solve.emmet_adj_k(
        k, c0, cov_weight=lam_p, norm_lambda=lam_n, emmet_lambda=mu, ridge_always=ridge_always
    )
    assert rel_err(np.asarray(adj_k) @ r.T, dw) < 1e-12

    fit = float(solve.update_diagnostics(dw, k, r)["fit_rel_err"])
    if n == 1 and not ridge_always:
        assert fit < 1e-10  # Q15: no ridge for a single edit, so the edit is exact
    else:
        assert fit > 1e-6


def test_emmet_equality_constraint_as_ridge_vanishes(x64):
    k, r, c0, _ = make_problem(seed=8)
    fits = []
    for mu in (1e-2, 1e-6, 1e-12):  # D = KᵀC⁻¹K ~ 1e-3 here
        dw = solve.emmet_update(k, r, c0, cov_weight=15000.0, emmet_lambda=mu)
        fits.append(rel_err(k.T @ np.asarray(dw), r.T))  # Δ K = R  <=>  Kᵀ dW = Rᵀ
    assert fits[-1] < 1e-8 and fits[0] > fits[1] > fits[2], fits


def test_emmet_float32():
    k, r, c0, _ = make_problem(seed=9)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    dw = solve.emmet_update(f32(k), f32(r), f32(c0), cov_weight=15000.0, emmet_lambda=0.1)
    assert dw.dtype == np.float32
    assert rel_err(dw, np_emmet_delta(k, r, c0, 15000.0, 0.0, 0.1).T) < 1e-4


# ---------------------------------------------------------------- compilation


def test_float_hyperparameters_do_not_recompile():
    k, r, c0, s_prev = (np.asarray(a, np.float32) for a in make_problem(seed=11, n=7))
    cases = [
        (solve.memit_update, (k, r, c0), "cov_weight", dict(norm_lambda=0.0, prev_kkt=s_prev)),
        (solve.memit_update, (k, r, c0), "norm_lambda", dict(cov_weight=1.0, prev_kkt=s_prev)),
        (solve.alphaedit_update, (k, r, c0, s_prev), "l2", {}),
        (solve.emmet_update, (k, r, c0), "emmet_lambda", dict(cov_weight=1.0)),
    ]
    for fn, args, name, fixed in cases:
        fn(*args, **fixed, **{name: 1.0})
        size = fn._cache_size()
        outs = [np.asarray(fn(*args, **fixed, **{name: v})) for v in (2.0, 3.5, 10.0)]
        assert fn._cache_size() == size, name
        assert rel_err(outs[0], outs[2]) > 1e-6, name  # the value is really used


# ------------------------------------------------------------ golden parity (SmolLM2-135M, layer 4)


@pytest.fixture(scope="module")
def golden():
    folder = require_shared("golden")
    for name in ("cov.npz", "MEMIT.npz", "ENCORE.npz", "AlphaEdit.npz", "meta.json"):
        require_shared("golden", name)
    arrays = {"C0": np.load(folder / "cov.npz")["C0_L4"]}
    for method in ("MEMIT", "ENCORE", "AlphaEdit"):
        with np.load(folder / f"{method}.npz") as z:
            arrays[method] = {key: z[key] for key in z.files if "_L4_" in key or key == "P_L4"}
    arrays["meta"] = json.loads((folder / "meta.json").read_text())
    return arrays


GOLDEN_LAMBDA_N = {"MEMIT": 0.0, "ENCORE": 20.0}


def _golden_memit_check(golden, method: str, dtype) -> None:
    z = golden[method]
    c0 = golden["C0"].astype(dtype)
    k0 = z["b0_L4_K"].astype(dtype)
    tol = 1e-3 if dtype == np.float32 else 1e-10
    for batch, prev in ((0, None), (1, k0 @ k0.T)):  # batch 1: SEQ_prev = batch-0 K Kᵀ
        k = z[f"b{batch}_L4_K"].astype(dtype)
        r = z[f"b{batch}_L4_resid"].astype(dtype)
        kwargs = dict(cov_weight=15000.0, norm_lambda=GOLDEN_LAMBDA_N[method], prev_kkt=prev)
        golden_adj_k = z[f"b{batch}_L4_adj_k"]
        golden_delta = z[f"b{batch}_L4_resid"] @ golden_adj_k.T  # [d, f]: upd_matrix
        adj_k = solve.memit_adj_k(k, c0, **kwargs)
        assert adj_k.dtype == dtype
        assert rel_err(adj_k, golden_adj_k) < tol, (method, batch)
        # One full update per test keeps the suite fast; memit_update == adj_k Rᵀ is tested above.
        dw = solve.memit_update(k, r, c0, **kwargs) if batch == 1 else np.asarray(adj_k) @ r.T
        assert dw.dtype == dtype
        assert rel_err(np.asarray(dw).T, golden_delta) < tol, (method, batch)


@pytest.mark.parametrize("method", ["MEMIT", "ENCORE"])
def test_golden_memit_encore_float32(golden, method):
    _golden_memit_check(golden, method, np.float32)


@pytest.mark.parametrize("method", ["MEMIT", "ENCORE"])
def test_golden_memit_encore_float64(golden, x64, method):
    _golden_memit_check(golden, method, np.float64)


def _golden_alphaedit_deltas(golden, p, dtype) -> None:
    z = golden["AlphaEdit"]
    s_all = 0.0
    for batch in (0, 1):
        k = z[f"b{batch}_L4_K"].astype(dtype)
        r = z[f"b{batch}_L4_resid"].astype(dtype)
        s_all = s_all + solve.key_gram(k)  # S_all includes the current batch
        dw = solve.alphaedit_update(k, r, p, s_all, l2=10.0)
        assert dw.dtype == dtype
        assert rel_err(np.asarray(dw).T, z[f"b{batch}_L4_Delta"]) < 1e-3, batch


def test_golden_alphaedit_float32(golden):
    p, dim = solve.null_space_projector(golden["C0"], THRESHOLD)
    assert int(dim) == golden["meta"]["cov"]["4"]["nullspace_dim_thr_2em2"] == 1188
    # Measured on CPU: 3.8e-5 (LAPACK float32 eigh; torch's float32 SVD is 3.4e-6 off float64).
    assert rel_err(p, golden["AlphaEdit"]["P_L4"]) < 2e-4
    _golden_alphaedit_deltas(golden, p, np.float32)  # measured 5.5e-5


def test_golden_alphaedit_float64_solve(golden, x64):
    # The solve alone, from the golden (float32) P; the float64 projector is 3.4e-6 from P_L4 and
    # costs a float64 eigh of 1536², so it is left to the float32 test above.
    _golden_alphaedit_deltas(golden, golden["AlphaEdit"]["P_L4"].astype(np.float64), np.float64)
