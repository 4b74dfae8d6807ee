"""Matmul precision is owned by the library, not by the global precision flag of jax.

On CPU XLA computes every float32 matmul exactly whatever the precision, so numbers cannot show a
missing setting; what is traced can. Each public call below runs with the global flag unset (and its
jit caches cleared, so everything is traced again), and the `precision` of every `dot_general` it
binds is recorded: under the default configs every one must be HIGHEST; with the faster setting
("default") the model passes must change while the solves stay at HIGHEST.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.lax import lax as lax_internal

from jaxedit import config, editor, metrics, stats
from jaxedit.lm import LanguageModel
from jaxedit.requests import EditRequest

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
REQUESTS = [EditRequest(0, "I like {}", "Paris", "Rome", target_true="London")]
TEMPLATES = (("{}",), ("Hello. {}",))


@contextlib.contextmanager
def recorded_precisions():
    """Yields a list that receives the `precision` param of every dot_general bound inside."""
    seen: list = []
    prim = lax_internal.dot_general_p
    original = prim.bind

    def bind(*args, **params):
        seen.append(params.get("precision"))
        return original(*args, **params)

    prim.bind = bind  # type: ignore[method-assign]
    jax.clear_caches()
    try:  # nothing in the test process sets the global precision flag: the backend default holds
        yield seen
    finally:
        prim.bind = original  # type: ignore[method-assign]
        jax.clear_caches()


@pytest.fixture(scope="module")
def model(gpt2_tok) -> LanguageModel:
    from jaxedit import testing

    return testing.tiny_model("llama", gpt2_tok, num_layers=4)


def _edit(lm: LanguageModel, matmul_precision: str) -> None:
    extra = {} if matmul_precision == "highest" else {"matmul_precision": matmul_precision}
    cfg = config.EditConfig(
        method="ENCORE",
        layers=(1, 2),
        templates=TEMPLATES,
        **extra,
        search=config.SearchConfig(num_steps=3, mpes_patience=1),
        solve=config.SolveConfig(cov_weight=1.0, norm_lambda=1.0),
    )
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, lm.config.vocab_size - 1, 24).tolist() for _ in range(2)]
    cov, _ = stats.collect_second_moments(lm, docs, cfg.layers)
    st = stats.LayerStats(cov={l: jnp.asarray(c) for l, c in cov.items()})
    ed = editor.Editor(lm, cfg, st, TEMPLATES)
    ed.apply(ed.init_state(), REQUESTS)


def _public_calls(lm: LanguageModel, edit_precision: str) -> None:
    lm.logits(["The capital of France is"])
    lm.generate(["The capital of France is"], max_new_tokens=3)
    _edit(lm, edit_precision)
    metrics.counterfact_scores(lm, REQUESTS)


def test_every_matmul_is_highest_by_default(model):
    with recorded_precisions() as seen:
        _public_calls(model, "highest")
    assert len(seen) > 40, f"only {len(seen)} dot_generals traced: the recording missed calls"
    low = [p for p in seen if p != HIGHEST]
    assert not low, f"{len(low)} of {len(seen)} matmuls below HIGHEST: {sorted(set(map(str, low)))}"


def test_the_faster_setting_changes_the_model_passes_not_the_solves(model):
    fast = model.with_precision("default")
    with recorded_precisions() as seen:
        fast.logits(["The capital of France is"])
    assert seen and all(p == (jax.lax.Precision.DEFAULT,) * 2 for p in seen), set(map(str, seen))

    with recorded_precisions() as seen:
        _edit(model, "default")  # the model stays "highest": its C0 pass; the editor's passes fast
    kinds = {str(p) for p in seen}
    assert str((jax.lax.Precision.DEFAULT,) * 2) in kinds, kinds
    assert str(HIGHEST) in kinds, kinds  # statistics (model at highest) and the closed-form solves


def test_precision_names_are_checked():
    with pytest.raises(ValueError, match="matmul_precision"):
        config.EditConfig(matmul_precision="fast").validate()
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(model_config(), matmul_precision="bf16")


def model_config():
    from jaxedit import testing

    return testing.tiny_config("llama")
