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


# The official repository's regularized MEMIT variants (WORKSPACE.md;
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


# The official repository's LTI settings (WORKSPACE.md; hparams/MEMIT_lti/*.json,
# hparams/AlphaEdit_lti/*.json; MEMIT_lti_prune / MEMIT_lti_rect are MEMIT_lti's numbers):
# model -> (clamp_norm_factor, v_num_grad_steps, v_weight_decay, last_kl_factor, mid_kl_factor,
# midlayers[-1]); v_lr 0.5 and nll_factor 0.125 everywhere, constr_pos "subject", no MPES
# (memit_lti has none; AlphaEdit_lti's prob_cutoff is 0). λ_p and mom2_n_samples are MODELS'.
LTI = {
    "gpt2_xl": (1.2, 25, 0.5, 0.0425, 0.0525, 30),
    "llama2_7b": (4.0, 30, 1e-3, 0.0725, 0.0425, 15),
    "llama3_8b": (4.0, 30, 1e-3, 0.0725, 0.0425, 15),
}
LTI_LR = 0.5
LTI_NLL_FACTOR = 0.125
# variant -> the regularizer it pairs LTI with (None: none) and the update rule
LTI_VARIANTS = {
    "MEMIT_lti": (None, "MEMIT_seq"),
    "MEMIT_lti_prune": ("MEMIT_prune", "MEMIT_seq"),
    "MEMIT_lti_rect": ("MEMIT_rect", "MEMIT_seq"),
    "AlphaEdit_lti": (None, "AlphaEdit"),
}
# SmolLM2-135M (30 blocks): block 14 is at about the relative depth of Llama's 15 of 32
# (15/32 ≈ 0.47, 14/30 ≈ 0.47); the other LTI numbers are the Llama-3-8B ones [chosen by analogy].
SMOLLM2_LTI_MIDLAYER = 14


def lti_search(search: SearchConfig, model: str, *, midlayer: int | None = None) -> None:
    """Switches LTI on in `search` with the official setting of `model` (in place); MEMIT's own
    KL term is off (`kl_factor = 0`: LTI drops it), MPES off."""
    clamp, steps, wd, last_kl, mid_kl, mid = LTI[model]
    search.lti, search.lr, search.num_steps = True, LTI_LR, steps
    search.clamp_norm_factor, search.weight_decay, search.kl_factor = clamp, wd, 0.0
    search.nll_factor, search.last_kl_factor, search.mid_kl_factor = LTI_NLL_FACTOR, last_kl, mid_kl
    search.midlayer = mid if midlayer is None else midlayer
    search.constr_pos, search.mpes_patience, search.stop_prob = "subject", 0, 0.0


def lti_config(variant: str, model: str) -> EditConfig:
    """The official LTI `variant` (one of LTI_VARIANTS) on `model`: MEMIT_seq (or AlphaEdit) with
    the paper's solve settings, the LTI search and, for _prune / _rect, the official regularizer.
    AlphaEdit_lti has no GPT2-XL setting: the official JSON is AlphaEdit's and cannot load."""
    if variant not in LTI_VARIANTS:
        raise InputError(f"unknown LTI variant {variant!r} (fix: one of {sorted(LTI_VARIANTS)})")
    if variant == "AlphaEdit_lti" and model == "gpt2_xl":
        raise InputError(
            "AlphaEdit_lti has no GPT2-XL setting: hparams/AlphaEdit_lti/gpt2-xl.json is a copy "
            "of AlphaEdit's without the LTI fields (WORKSPACE.md) (fix: llama2_7b or "
            "llama3_8b)"
        )
    reg, method = LTI_VARIANTS[variant]
    cfg = paper_config(method, model)
    lti_search(cfg.search, model)
    if reg is not None:
        cfg.regularize = regularizer(reg)
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


def smollm2_lti_config(variant: str) -> EditConfig:
    """`variant` ("MEMIT_lti", "MEMIT_lti_prune", "MEMIT_lti_rect") on SmolLM2-135M: sequential
    MEMIT with the tuned SmolLM2 solve setting, the Llama-3-8B LTI search with its mid layer at
    block 14 (`SMOLLM2_LTI_MIDLAYER`), no MPES (as the official MEMIT_lti), and for _prune /
    _rect the official regularizer."""
    reg, method = LTI_VARIANTS[variant]
    if method != "MEMIT_seq":
        raise InputError(f"{variant} has no SmolLM2 setting (fix: one of the MEMIT_lti variants)")
    cfg = smollm2_config("MEMIT_seq")
    lti_search(cfg.search, "llama3_8b", midlayer=SMOLLM2_LTI_MIDLAYER)
    if reg is not None:
        cfg.regularize = regularizer(reg)
    return cfg
