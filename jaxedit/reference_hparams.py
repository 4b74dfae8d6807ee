"""The authors' hparams JSON import (MEMIT, AlphaEdit, EMMET, ENCORE and the official repository's
MEMIT_lti / AlphaEdit_lti) onto an `EditConfig`.

Reference hyperparameter names map to ours through `REFERENCE_NAMES`; fields that carry model
internals or are unused are accepted and ignored. The reference's sign-overloaded `prob_cutoff`
becomes two fields: `prob_cutoff < 0` -> `mpes_patience = -prob_cutoff` (MPES), `prob_cutoff > 0`
-> `stop_prob = prob_cutoff`. An LTI JSON (any of `LTI_REFERENCE_NAMES`) switches `search.lti` on;
the fields the official class needs but the committed JSONs lack are defaulted and reported (a
warning on this module's logger). `jaxedit.config.from_reference_hparams` calls `import_hparams`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from jaxedit.config import ConfigValueError, EditConfig
from jaxedit.files import read_json

log = logging.getLogger(__name__)

# Reference hparams JSON name, our section ("-" = top level), our name. `prob_cutoff` is handled
# separately (`import_hparams`).
_REFERENCE_TABLE = """
    layers               -       layers
    v_lr                 search  lr
    v_num_grad_steps     search  num_steps
    v_weight_decay       search  weight_decay
    kl_factor            search  kl_factor
    clamp_norm_factor    search  clamp_norm_factor
    mom2_update_weight   solve   cov_weight
    update_norm_lambda   solve   norm_lambda
    add_prev_edits       solve   add_prev_edits
    nullspace_threshold  solve   nullspace_threshold
    L2                   solve   l2
    emmet_lambda         solve   emmet_lambda
    mom2_n_samples       stats   num_samples
    nll_factor           search  nll_factor
    last_kl_factor       search  last_kl_factor
    mid_kl_factor        search  mid_kl_factor
    constr_pos           search  constr_pos
"""
REFERENCE_NAMES: dict[str, tuple[str | None, str]] = {
    ref: (None if section == "-" else section, ours)
    for ref, section, ours in (row.split() for row in _REFERENCE_TABLE.strip().splitlines())
}
# Reference fields that carry model internals or are unused (reference Q22); accepted and ignored.
IGNORED_REFERENCE_NAMES = frozenset(
    """
layer_selection fact_token v_loss_layer rewrite_module_tmp layer_module_tmp mlp_module_tmp
attn_module_tmp ln_f_module lm_head_module mom2_dataset mom2_dtype mom2_adjustment
calculate_objective_value calculate_norm calculate_norms norm_control dynamic_multiplier
random_vector_preservation use_gd grad_desc_lr grad_desc_steps gd_lambda spectral_norm
condition_num algo_name dataset sequential model_name stats_dir alg_name sentence_model_name top_k
""".split()
)
# The official LTI hparams (MEMITLTIHyperParams; WORKSPACE.md, "LTI in the search"): any of these
# fields marks an LTI JSON (`search.lti` on). `midlayers` is a list; only its last block in forward
# order is used (each hook call overwrites the stored vector). Required fields of the official class
# must be present; the others default to the class's value (nll_factor) or to what its committed
# configs imply (update_norm_lambda 0, calculate_norms false), and the defaulting is reported.
LTI_REFERENCE_NAMES = frozenset(
    ("nll_factor", "last_kl_factor", "mid_kl_factor", "midlayers", "constr_pos")
)
LTI_REQUIRED = ("last_kl_factor", "mid_kl_factor", "midlayers", "constr_pos")
LTI_DEFAULTS: dict[str, Any] = {
    "nll_factor": 0.0925,
    "update_norm_lambda": 0,
    "calculate_norms": False,
}


def import_hparams(
    path_or_dict: str | os.PathLike | dict,
    base: EditConfig | None = None,
    method: str | None = None,
) -> EditConfig:
    """Imports an authors' hparams JSON (MEMIT/AlphaEdit/EMMET/ENCORE, MEMIT_lti/AlphaEdit_lti)
    onto `base` (a copy; `base` is not modified)."""
    hp = (
        path_or_dict
        if isinstance(path_or_dict, dict)
        else read_json(path_or_dict, "hparams JSON", "pass the authors' hparams .json file")
    )
    if not isinstance(hp, dict):
        raise ConfigValueError(f"hparams JSON {path_or_dict}: expected a JSON object of fields")
    cfg = base or EditConfig()
    cfg = dataclasses.replace(
        cfg,
        search=dataclasses.replace(cfg.search),
        solve=dataclasses.replace(cfg.solve),
        stats=dataclasses.replace(cfg.stats),
        regularize=dataclasses.replace(cfg.regularize),
    )
    special = {"prob_cutoff", "midlayers"}
    unknown = sorted(set(hp) - set(REFERENCE_NAMES) - IGNORED_REFERENCE_NAMES - special)
    if unknown:
        raise ConfigValueError(f"hparams JSON has fields jaxedit does not know: {unknown}")
    for name, value in hp.items():
        if name not in REFERENCE_NAMES:
            continue
        section, ours = REFERENCE_NAMES[name]
        target = cfg if section is None else getattr(cfg, section)
        if ours == "layers":
            value = tuple(int(v) for v in value)
        elif isinstance(getattr(target, ours), float):
            value = float(value)  # JSON ints would give the jitted search another signature
        elif isinstance(getattr(target, ours), bool):
            value = bool(value)
        elif isinstance(getattr(target, ours), int):
            value = int(value)
        setattr(target, ours, value)
    cutoff = hp.get("prob_cutoff", 0)
    cfg.search.mpes_patience = int(-cutoff) if cutoff < 0 else 0
    cfg.search.stop_prob = float(cutoff) if cutoff > 0 else 0.0
    if LTI_REFERENCE_NAMES & set(hp):
        _import_lti(hp, cfg, path_or_dict)
    if method is not None:
        cfg.method = method
    return cfg


def _import_lti(hp: dict, cfg: EditConfig, source) -> None:
    """The LTI part of an official MEMIT_lti / AlphaEdit_lti JSON: `search.lti` on, `midlayers`'
    last block, the official class's missing fields defaulted (and reported)."""
    name = "the hparams dict" if isinstance(source, dict) else f"hparams JSON {source}"
    missing = [f for f in LTI_REQUIRED if f not in hp]
    if missing:
        raise ConfigValueError(
            f"{name}: an LTI config (it has {sorted(LTI_REFERENCE_NAMES & set(hp))}) without the "
            f"required fields {missing} (fix: add them, as hparams/MEMIT_lti/*.json have them)"
        )
    layers = hp["midlayers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(v, int) for v in layers):
        raise ConfigValueError(f"{name}: midlayers={layers!r}: expected a non-empty list of ints")
    cfg.search.lti = True
    cfg.search.midlayer = max(layers)  # each hook call overwrites: the last in forward order
    if "kl_factor" not in hp:  # LTI has no separate KL term (its KL prompt row replaces it)
        cfg.search.kl_factor = 0.0
    defaulted = {k: v for k, v in LTI_DEFAULTS.items() if k not in hp}
    if "nll_factor" in defaulted:
        cfg.search.nll_factor = float(defaulted["nll_factor"])
    if "update_norm_lambda" in defaulted:
        cfg.solve.norm_lambda = float(defaulted["update_norm_lambda"])
    if defaulted:
        log.warning(
            "%s: fields missing, defaulted (the official LTI hparams class requires them, its "
            "committed JSONs lack them): %s",
            name,
            ", ".join(f"{k}={json.dumps(v)}" for k, v in defaulted.items()),
        )
