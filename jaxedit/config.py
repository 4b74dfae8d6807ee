"""Editing configuration: typed dataclasses, Python config files, and the reference hparams JSON
import.

`SearchConfig` crosses the `jax.jit` boundary of the search: it is a dataclass registered as a
pytree, so its float fields are traced (a sweep over the learning rate does not recompile) and the
structural ones (`num_steps`, `mpes_patience`, rule choices) are static. The solvers take
`SolveConfig`'s floats as traced arguments one by one (`jaxedit.solve`), so a sweep over λ does not
recompile either. The dataclasses stay mutable so that a binary can override single fields from its
command line.

`from_reference_hparams` imports the authors' hparams JSON files unchanged (the name table and the
LTI defaulting are in `jaxedit.reference_hparams`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any

import jax

from jaxedit.errors import InputError
from jaxedit.files import require_file
from jaxedit.numerics import check_precision

METHODS = ("MEMIT", "MEMIT_seq", "ENCORE", "AlphaEdit", "EMMET")
PRUNE_REFERENCES = ("official_last_batch", "original")
PRUNE_WHEN = ("end", "every_batch")
TEACHER_POSITIONS = ("official", "aligned")
# LTI's search fields (SearchConfig); runs recorded before them ran with LTI off.
LTI_FIELDS = (
    "lti",
    "nll_factor",
    "last_kl_factor",
    "mid_kl_factor",
    "midlayer",
    "constr_pos",
    "teacher_positions",
)


class ConfigValueError(InputError):
    """An editing-config field holds a value jaxedit cannot run with (the message names it)."""


def _static(default):
    return dataclasses.field(default=default, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(unsafe_hash=True)
class SearchConfig:
    """Target-activation search (reference §2). Floats are traced, the rest static.

    Attributes:
      lr: Adam learning rate (`v_lr`).
      kl_factor: weight of KL(q_cur || q_0) on the "{subject} is a" prompt (`kl_factor`).
      weight_decay: weight of the delta-norm penalty (`v_weight_decay`).
      clamp_norm_factor: delta is projected onto the ball ‖δ‖ ≤ factor·‖h₀‖ (`clamp_norm_factor`).
      loss_threshold: stop when the total loss falls below this (the reference's hard-coded 5e-2).
      stop_prob: > 0: stop when the mean target probability over the rewriting prompts exceeds it
        (`prob_cutoff > 0`).
      num_steps: iterations (`v_num_grad_steps`); the last one only evaluates, so at most
        num_steps - 1 Adam steps are taken (quirk Q4).
      mpes_patience: > 0 enables MPES: stop at the k-th iteration (cumulative, not consecutive) at
        which the target is the argmax at every target position of the MPES prompts
        (`prob_cutoff = -k`).
      mpes_prompts: "context" = rewriting prompts 1..n (the reference drops the bare prompt 0, quirk
        Q2); "all" = every rewriting prompt (clean).
      weight_decay_form: "norm" = ‖δ‖/‖h₀‖² (the reference, quirk Q1); "squared" = ‖δ‖²/‖h₀‖².
      max_requests: > 0: search at most this many requests of a batch at once (the batch's
        update is still one solve). Each request's search is independent of the others, so this
        changes results only by float rounding; it bounds the search's memory, which grows with
        the requests searched together (`experiments/memory_plan.py`). 0 = the whole batch.

    LTI ("learn the inference", WORKSPACE.md; `jaxedit.lti`), off by default:
      lti: on/off. On: the loss is nll_factor·NLL + last_kl_factor·KL_last + mid_kl_factor·KL_mid
        + the weight decay, with KL(student ‖ teacher) against an in-context teacher ("Imagine
        that {prompt} {target}\n" before every rewriting prompt, the current model, no δ);
        `kl_factor` is not used (the KL prompt's row of KL_last replaces it). MPES and the other
        stop rules combine with it.
      nll_factor, last_kl_factor, mid_kl_factor: the three weights (official 0.125 and, on Llama,
        0.0725 / 0.0425).
      midlayer: the block whose output at the subject's last token is read through the logit lens
        (final norm, unembedding) for KL_mid (official: 15 on Llama, 30 on GPT2-XL); at or below
        the target layer the term does not depend on δ.
      constr_pos: where KL_mid compares: only "subject" (the official "last" and "all" crash in
        the official teacher and are refused).
      teacher_positions: "official" reads the teacher at the positions of the unprefixed prompts
        (the repository's misalignment, WORKSPACE.md); "aligned" at the positions
        recomputed on the prefixed prompts.
    """

    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    loss_threshold: float = 5e-2
    stop_prob: float = 0.0
    num_steps: int = _static(25)
    mpes_patience: int = _static(0)
    mpes_prompts: str = _static("context")
    weight_decay_form: str = _static("norm")
    max_requests: int = _static(0)
    lti: bool = _static(False)
    nll_factor: float = 0.125
    last_kl_factor: float = 0.0725
    mid_kl_factor: float = 0.0425
    midlayer: int = _static(-1)
    constr_pos: str = _static("subject")
    teacher_positions: str = _static("official")

    def validate(self) -> None:
        if self.num_steps < 1:
            raise ConfigValueError(f"search.num_steps={self.num_steps}: must be >= 1")
        if self.mpes_patience < 0:
            raise ConfigValueError(f"search.mpes_patience={self.mpes_patience}: must be >= 0")
        if self.max_requests < 0:
            raise ConfigValueError(
                f"search.max_requests={self.max_requests}: must be >= 0 (0 = the whole batch)"
            )
        if self.mpes_prompts not in ("context", "all"):
            raise ConfigValueError(f"search.mpes_prompts={self.mpes_prompts!r}: 'context' or 'all'")
        if self.weight_decay_form not in ("norm", "squared"):
            raise ConfigValueError(
                f"search.weight_decay_form={self.weight_decay_form!r}: 'norm' or 'squared'"
            )
        if not self.lr > 0:
            raise ConfigValueError(f"search.lr={self.lr}: must be > 0")
        for name in ("kl_factor", "weight_decay", "loss_threshold"):
            if not getattr(self, name) >= 0:
                raise ConfigValueError(f"search.{name}={getattr(self, name)}: must be >= 0")
        if not self.clamp_norm_factor > 0:
            raise ConfigValueError(
                f"search.clamp_norm_factor={self.clamp_norm_factor}: must be > 0"
            )
        if not 0 <= self.stop_prob < 1:
            raise ConfigValueError(
                f"search.stop_prob={self.stop_prob}: must be in [0, 1) (0 = off)"
            )
        self._validate_lti()

    def _validate_lti(self) -> None:
        for name in ("nll_factor", "last_kl_factor", "mid_kl_factor"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigValueError(
                    f"search.{name}={value}: must be a finite number >= 0 (fix: the official "
                    "LTI configs use nll_factor=0.125, last_kl_factor=0.0725, mid_kl_factor=0.0425)"
                )
        if self.constr_pos in ("last", "all"):
            raise ConfigValueError(
                f"search.constr_pos={self.constr_pos!r}: not supported; the official teacher "
                "slices these positions with a negated start and crashes (fix: set "
                "search.constr_pos='subject', what every official config uses)"
            )
        if self.constr_pos != "subject":
            raise ConfigValueError(
                f"search.constr_pos={self.constr_pos!r}: unknown (fix: set "
                "search.constr_pos='subject')"
            )
        if self.teacher_positions not in TEACHER_POSITIONS:
            raise ConfigValueError(
                f"search.teacher_positions={self.teacher_positions!r}: unknown (fix: one of "
                f"{TEACHER_POSITIONS}; 'official' is the repository's behaviour)"
            )
        if self.lti and self.midlayer < 0:
            raise ConfigValueError(
                f"search.midlayer={self.midlayer}: LTI needs the block of its mid-layer KL (fix: "
                "set search.midlayer, e.g. 15 on a 32-block Llama, 30 on GPT2-XL)"
            )


@dataclasses.dataclass(unsafe_hash=True)
class SolveConfig:
    """Closed-form update (reference §4).

    Attributes:
      cov_weight: λ_p on C₀ (`mom2_update_weight`); unused by AlphaEdit.
      norm_lambda: λ_n, the Frobenius-norm constraint of ENCORE (`update_norm_lambda`); combines
        with MEMIT/MEMIT_seq/EMMET.
      add_prev_edits: add Σ K_p K_pᵀ of earlier batches (sequential MEMIT / ENCORE,
        `add_prev_edits`).
      nullspace_threshold: AlphaEdit's absolute singular-value threshold on C₀.
      l2: AlphaEdit's ridge λ (`L2`).
      emmet_lambda: EMMET's ridge μ on D (`emmet_lambda`).
      float64: solve in float64 (CPU/GPU; the reference's MEMIT/ENCORE/EMMET precision). Default
        float32 at highest matmul precision, which TPUs support.
      solver: "cholesky" (SPD systems) or "lu" (the reference's torch.linalg.solve).
    """

    cov_weight: float = 15000.0
    norm_lambda: float = 0.0
    add_prev_edits: bool = True
    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    emmet_lambda: float = 0.1
    float64: bool = False
    solver: str = "cholesky"

    def validate(self) -> None:
        for name in ("cov_weight", "norm_lambda", "l2", "emmet_lambda", "nullspace_threshold"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ConfigValueError(f"solve.{name}={value}: must be >= 0")
        if self.solver not in ("cholesky", "lu"):
            raise ConfigValueError(f"solve.solver={self.solver!r}: 'cholesky' or 'lu'")


@dataclasses.dataclass(unsafe_hash=True)
class StatsConfig:
    """Key second-moment statistics C₀ (reference §4.1).

    Attributes:
      text: a `.txt` (documents separated by blank lines), `.jsonl` ({"text": ...}) or a folder of
        them; empty = the caller's default corpus (`experiments/edit.py`: WikiText-2 raw test
        paragraphs).
      num_samples: the first N documents (`mom2_n_samples`).
      max_length: tokens per document (truncation); 0 = the model's context length.

    Where C₀ is cached is the caller's choice (`stats.layer_stats(cache_dir=...)`, `edit.py
    --stats_dir`), not part of the editing config: the same statistics serve every config.
    """

    text: str = ""
    num_samples: int = 10000
    max_length: int = 0

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ConfigValueError(f"stats.num_samples={self.num_samples}: must be >= 1")
        if self.max_length < 0:
            raise ConfigValueError(
                f"stats.max_length={self.max_length}: must be >= 0 (0 = context)"
            )


@dataclasses.dataclass(unsafe_hash=True)
class RegularizeConfig:
    """RECT and PRUNE, the published alternatives to the norm constraint (`jaxedit.regularize`,
    WORKSPACE.md). Everything is off by default.

    Attributes:
      rect_keep_percent: RECT: keep this share (%) of each batch's ΔW entries, by |ΔW / (W + ε)|
        against the current weights, at insertion time, every batch and layer; 0 = off (the
        official repository 40, the RECT paper 20; 100 keeps everything, i.e. plain MEMIT). The
        keys and residuals of later layers and the previous-edit cache see the full update, as in
        the repository.
      prune: PRUNE on/off.
      prune_reference: "official_last_batch" (the repository: the last batch's Δ, σ_max of the
        weights before it) or "original" (Ma et al.: the total Δ = W − W0, σ_max(W0)).
      prune_log_base: b of the restraint log_b (official e, the PRUNE paper's default 1.2).
      prune_when: "end" (once, after the last batch: the repository) or "every_batch".
      prune_double_add: official reference only: True adds the restrained Δ' on top of the edited
        weights (the repository: W_{T-1} + Δ + Δ'), False replaces Δ by it (W_{T-1} + Δ'). The
        original reference always replaces (W0 + Δ'), so it needs False.
    """

    rect_keep_percent: float = 0.0
    prune: bool = False
    prune_reference: str = "official_last_batch"
    prune_log_base: float = math.e
    prune_when: str = "end"
    prune_double_add: bool = True

    def validate(self) -> None:
        if not 0 <= self.rect_keep_percent <= 100:  # also refuses NaN
            raise ConfigValueError(
                f"regularize.rect_keep_percent={self.rect_keep_percent}: must be in [0, 100] "
                "(0 = off; the repository's RECT keeps 40, the RECT paper 20)"
            )
        if self.prune_reference not in PRUNE_REFERENCES:
            raise ConfigValueError(
                f"regularize.prune_reference={self.prune_reference!r}: one of {PRUNE_REFERENCES}"
            )
        if self.prune_when not in PRUNE_WHEN:
            raise ConfigValueError(
                f"regularize.prune_when={self.prune_when!r}: one of {PRUNE_WHEN}"
            )
        if not (self.prune_log_base > 1 and math.isfinite(self.prune_log_base)):
            raise ConfigValueError(
                f"regularize.prune_log_base={self.prune_log_base}: must be a finite number > 1 "
                "(the repository uses e, the PRUNE paper 1.2)"
            )
        if self.prune and self.prune_reference == "original" and self.prune_double_add:
            raise ConfigValueError(
                "regularize.prune_double_add=True: the original PRUNE replaces the total update "
                "(W0 + Δ') (fix: set regularize.prune_double_add=false, or "
                "regularize.prune_reference='official_last_batch')"
            )

    @property
    def rect(self) -> bool:
        return self.rect_keep_percent > 0


@dataclasses.dataclass(unsafe_hash=True)
class EditConfig:
    """Everything one editing run needs besides the model and the data.

    Attributes:
      method: one of METHODS. "ENCORE" = MEMIT_seq + MPES + λ_n (the switches in `search`/`solve`
        say what runs; the method names the update rule: MEMIT/MEMIT_seq/ENCORE share the MEMIT
        form).
      layers: edited layers, ascending; the target layer is the last one.
      templates: fixed context templates in the reference's nested form ((("{}",), ("A. {}", ...)));
        empty = generate them from the model with `template_seed` (the reference's procedure).
      template_seed: PRNG seed for template generation.
      model: default model source for binaries.
      regularize: RECT / PRUNE (`RegularizeConfig`; off by default).
      matmul_precision: precision of the editor's model passes (target search, keys), one of
        `jaxedit.numerics.PRECISIONS`: "highest" (default, exact float32, what the golden
        tests check) or "default"/"high" (faster on TPU/GPU, lower-precision passes). The model's
        own `matmul_precision` governs everything else; the solves always run at "highest".
    """

    method: str = "ENCORE"
    layers: tuple[int, ...] = (4, 5, 6, 7, 8)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    solve: SolveConfig = dataclasses.field(default_factory=SolveConfig)
    stats: StatsConfig = dataclasses.field(default_factory=StatsConfig)
    regularize: RegularizeConfig = dataclasses.field(default_factory=RegularizeConfig)
    templates: tuple[tuple[str, ...], ...] = ()
    template_seed: int = 0
    model: str = "smollm2-135m"
    matmul_precision: str = "highest"

    @property
    def z_layer(self) -> int:
        return self.layers[-1]

    def validate(self, num_layers: int | None = None) -> None:
        if self.method not in METHODS:
            raise ConfigValueError(f"method={self.method!r}: expected one of {METHODS}")
        layers = tuple(self.layers)
        if not layers or list(layers) != sorted(set(layers)):
            raise ConfigValueError(
                f"layers={layers}: must be a non-empty ascending list of distinct ints"
            )
        if num_layers is not None and (layers[0] < 0 or layers[-1] >= num_layers):
            raise ConfigValueError(
                f"layers={layers}: the model has layers 0..{num_layers - 1} (fix: edit layers in "
                "that range)"
            )
        if num_layers is not None and layers[-1] >= num_layers - 1:
            raise ConfigValueError(
                f"layers={layers}: the target layer must be before the last block "
                f"({num_layers - 1})"
            )
        self.search.validate()
        if num_layers is not None and self.search.lti and self.search.midlayer >= num_layers:
            raise ConfigValueError(
                f"search.midlayer={self.search.midlayer}: the model has blocks "
                f"0..{num_layers - 1} (fix: pick a block in that range)"
            )
        self.solve.validate()
        self.stats.validate()
        self.regularize.validate()
        check_precision(self.matmul_precision, "matmul_precision")
        for group in self.templates:
            for t in group:
                if t.count("{}") != 1:
                    raise ConfigValueError(f"templates: {t!r} must contain exactly one '{{}}'")
        if self.templates and tuple(self.templates[0]) != ("{}",):
            raise ConfigValueError("templates: the first group must be ('{}',) (the bare prompt)")
        n_templates = sum(len(g) for g in self.templates)
        if (
            self.templates
            and n_templates == 1
            and self.search.mpes_patience > 0
            and self.search.mpes_prompts == "context"
        ):
            raise ConfigValueError(
                "search.mpes_prompts='context' checks the context templates, and there are "
                "none: add context templates or set mpes_prompts='all'"
            )


def default_label(cfg: EditConfig) -> str:
    """A run's short name from its config: the method, then +MPES, +LTI, +norm, +RECT, +PRUNE as
    they are on (ENCORE keeps MPES and the norm constraint in its name)."""
    encore = cfg.method == "ENCORE"  # MPES and the norm constraint are part of its name
    name = "MEMIT" if cfg.method == "MEMIT_seq" else cfg.method
    if cfg.search.mpes_patience and not encore:
        name += "+MPES"
    if cfg.search.lti:
        name += "+LTI" if cfg.search.teacher_positions == "official" else "+LTI(aligned)"
    if cfg.solve.norm_lambda and not encore:
        name += "+norm"
    if cfg.regularize.rect:
        name += "+RECT"
    if cfg.regularize.prune:
        reg = cfg.regularize
        how = ["original"] if reg.prune_reference == "original" else []
        how += ["every batch"] if reg.prune_when == "every_batch" else []
        name += f"+PRUNE({', '.join(how)})" if how else "+PRUNE"
    return name


def from_reference_hparams(
    path_or_dict: str | os.PathLike | dict,
    base: EditConfig | None = None,
    method: str | None = None,
) -> EditConfig:
    """Imports an authors' hparams JSON (MEMIT/AlphaEdit/EMMET/ENCORE, MEMIT_lti/AlphaEdit_lti)
    onto `base` (`jaxedit.reference_hparams.import_hparams`)."""
    from jaxedit import reference_hparams  # it imports this module

    return reference_hparams.import_hparams(path_or_dict, base, method)


def load_config_file(path: str | os.PathLike) -> EditConfig:
    """Runs a `configs/*.py` file's `get_config()` (what `config_flags.DEFINE_config_file` does)."""
    path = require_file(path, "config file", "pass a configs/*.py file")
    spec = importlib.util.spec_from_file_location(f"jaxedit_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigValueError(
            f"config file {path} cannot be imported (fix: pass a Python file, configs/*.py)"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigValueError(
            f"config file {path} defines no get_config() (fix: define get_config() returning an "
            "EditConfig, as configs/*.py do)"
        )
    cfg = module.get_config()
    if not isinstance(cfg, EditConfig):
        raise ConfigValueError(
            f"config file {path}: get_config() returned {type(cfg).__name__}, expected EditConfig"
        )
    return cfg


def to_dict(cfg: EditConfig) -> dict[str, Any]:
    """JSON-able record of a config (written with every run)."""
    return dataclasses.asdict(cfg)


FIXED_TEMPLATES = (
    ("{}",),
    (
        "The following text is taken from Wikipedia. {}",
        "Therefore, it is important to know the facts. {}",
        "Because of this, many people were surprised. {}",
        "I have always been interested in history. {}",
        "You can find more information on the website. {}",
    ),
)
