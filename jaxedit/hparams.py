"""The papers' hyperparameters (reference §5) as `EditConfig`s, one function per (method, model).

`configs/{method}_{model}.py` files call `paper_config` so the numbers live in one table here.
Reference names are in the comments (v_lr, mom2_update_weight, update_norm_lambda, prob_cutoff,
L2...).
"""

from __future__ import annotations

import dataclasses

from jaxedit.config import (
    FIXED_TEMPLATES,
    EditConfig,
    RegularizeConfig,
    SearchConfig,
    SolveConfig,
    StatsConfig,
)
from jaxedit.errors import InputError

# model -> (layers, v_num_grad_steps, mom2_update_weight, mom2_n_samples)
MODELS: dict[str, tuple[tuple[int, ...], int, float, int]] = {
    "gpt2_xl": ((13, 14, 15, 16, 17), 20, 20000.0, 100000),
    "llama2_7b": ((4, 5, 6, 7, 8), 25, 15000.0, 100000),
    "llama3_8b": ((4, 5, 6, 7, 8), 25, 15000.0, 10000),
}
MODEL_SOURCES = {
    "gpt2_xl": "openai-community/gpt2-xl",
    "llama2_7b": "meta-llama/Llama-2-7b-hf",
    "llama3_8b": "meta-llama/Meta-Llama-3-8B",
    "smollm2": "smollm2-135m",
}
# ENCORE per model: (update_norm_lambda, prob_cutoff -> mpes_patience)
ENCORE = {"gpt2_xl": (10.0, 4), "llama2_7b": (10.0, 3), "llama3_8b": (20.0, 2)}
# EMMET (UME; Llama-2 from the "corrected algo hyperparameters" commit): layers, λ_p, μ, steps.
# UME has no Llama-3 setting: the Llama-2 one is used [inferred].
EMMET: dict[str, tuple[tuple[int, ...], float, float, int]] = {
    "gpt2_xl": ((17,), 1000.0, 0.1, 20),
    "llama2_7b": ((5,), 10000.0, 0.1, 25),
    "llama3_8b": ((5,), 10000.0, 0.1, 25),
}


# The official repository's regularized MEMIT variants (REGULARIZERS.md §1.3, §5.2;
# hparams/MEMIT_prune, hparams/MEMIT_rect): MEMIT_seq's numbers, the driver's regularizer, and
# prob_cutoff = -k -> MPES patience k per model (0 = off). MEMIT_prune's Llama-3 JSON (-1) is from
# the repository's later commit 6e3ba9a.
VARIANT_MPES = {
    "MEMIT_prune": {"gpt2_xl": 0, "llama2_7b": 0, "llama3_8b": 1},
    "MEMIT_rect": {"gpt2_xl": 2, "llama2_7b": 2, "llama3_8b": 1},
}
RECT_KEEP_OFFICIAL = 40.0  # memit_rect_main.py keeps the top 40 %; the RECT paper keeps 20 %
RECT_KEEP_ORIGINAL = 20.0
PRUNE_LOG_BASE_ORIGINAL = 1.2  # the PRUNE class default ("log1_2"); the repository uses ln


def regularizer(variant: str, *, original: bool = False) -> RegularizeConfig:
    """The regularizer of an official variant ("MEMIT_prune", "MEMIT_rect"): the repository's
    setting, or with `original` the paper's (PRUNE: the total update against W0, log base 1.2,
    replacing; RECT: keep 20 %)."""
    if variant == "MEMIT_rect":
        return RegularizeConfig(
            rect_keep_percent=RECT_KEEP_ORIGINAL if original else RECT_KEEP_OFFICIAL
        )
    if variant == "MEMIT_prune":
        if not original:
            return RegularizeConfig(prune=True)  # last batch, ln, at the end, added on top
        return RegularizeConfig(
            prune=True,
            prune_reference="original",
            prune_log_base=PRUNE_LOG_BASE_ORIGINAL,
            prune_double_add=False,
        )
    raise InputError(f"unknown variant {variant!r} (fix: one of {sorted(VARIANT_MPES)})")


def variant_config(variant: str, model: str) -> EditConfig:
    """The official `variant` ("MEMIT_prune", "MEMIT_rect") on `model`: sequential MEMIT with the
    paper's numbers, the variant's MPES patience, and its regularizer."""
    cfg = paper_config("MEMIT_seq", model)
    cfg.regularize = regularizer(variant)
    cfg.search.mpes_patience = VARIANT_MPES[variant][model]
    return cfg


def paper_config(method: str, model: str) -> EditConfig:
    """The published setting of `method` ("MEMIT", "MEMIT_seq", "ENCORE", "AlphaEdit", "EMMET") on
    `model` ("gpt2_xl", "llama2_7b", "llama3_8b")."""
    layers, steps, cov_weight, samples = MODELS[model]
    search = SearchConfig(
        lr=0.5, num_steps=steps, kl_factor=0.0625, weight_decay=0.5, clamp_norm_factor=0.75
    )
    solve = SolveConfig(cov_weight=cov_weight, norm_lambda=0.0, add_prev_edits=method != "MEMIT")
    if method == "ENCORE":
        solve.norm_lambda, search.mpes_patience = ENCORE[model]
    elif method == "AlphaEdit":
        search.lr = 0.5 if model == "gpt2_xl" else 0.1  # v_lr
        solve.nullspace_threshold, solve.l2 = 2e-2, 10.0
    elif method == "EMMET":
        layers, solve.cov_weight, solve.emmet_lambda, search.num_steps = EMMET[model]
        solve.add_prev_edits = False
    elif method not in ("MEMIT", "MEMIT_seq"):
        raise InputError(
            f"unknown method {method!r} (fix: one of MEMIT, MEMIT_seq, ENCORE, AlphaEdit, EMMET)"
        )
    cfg = EditConfig(
        method=method,
        layers=layers,
        search=search,
        solve=solve,
        stats=StatsConfig(num_samples=samples),
        model=MODEL_SOURCES[model],
    )
    return cfg


# SmolLM2-135M, tuned from the Llama-3-8B setting (WORKSPACE.md "SmolLM2 tuning"): λ_p 15000 -> 1000
# for the MEMIT family and EMMET, MPES patience 2 -> 4 for ENCORE.
SMOLLM2_COV_WEIGHT = 1000.0
SMOLLM2_MPES_PATIENCE = 4


def smollm2_config(
    method: str, *, mpes: bool | None = None, norm: bool | None = None
) -> EditConfig:
    """SmolLM2-135M: the Llama-3-8B setting on layers 4-8 (C0 from the 2,185 WikiText-2 paragraphs),
    tuned for the small model (ENCORE: ES 97 / PS 83 / NS 70 after 100 sequential edits, unedited
    37 / 36 / 66). `mpes` / `norm` switch MPES (patience 4) and the norm constraint (λ_n = 20,
    ENCORE's Llama-3 value) on or off for the ablations."""
    cfg = paper_config(method, "llama3_8b")
    cfg.model = MODEL_SOURCES["smollm2"]
    cfg.stats = dataclasses.replace(cfg.stats, num_samples=2185)
    cfg.templates = (
        FIXED_TEMPLATES  # the six templates of the reference measurements (BENCHMARKS.md)
    )
    if method != "AlphaEdit":
        cfg.solve.cov_weight = SMOLLM2_COV_WEIGHT
    if method == "ENCORE":
        cfg.search.mpes_patience = SMOLLM2_MPES_PATIENCE
    # The paper's ablations (Table 1, Figure 1): either half of ENCORE on sequential MEMIT.
    if mpes is not None:
        cfg.search.mpes_patience = SMOLLM2_MPES_PATIENCE if mpes else 0
    if norm is not None:
        cfg.solve.norm_lambda = ENCORE["llama3_8b"][0] if norm else 0.0
    return cfg


def smollm2_variant_config(variant: str, *, original: bool = False) -> EditConfig:
    """`variant` ("MEMIT_prune", "MEMIT_rect") on SmolLM2-135M: sequential MEMIT with the tuned
    SmolLM2 setting and MPES (patience 4), as the Llama-3 variants (from which the SmolLM2 setting
    is derived) run MPES; so it compares with `memit_mpes` and ENCORE (MPES + the norm constraint)
    on the same model. `original`: the regularizer as its paper has it (`regularizer`)."""
    cfg = smollm2_config("MEMIT_seq", mpes=True)
    cfg.regularize = regularizer(variant, original=original)
    return cfg
