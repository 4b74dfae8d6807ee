"""Memory plans (jaxedit.memory) on a tiny model: the stages compiled, and what LTI adds."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jaxedit import config, memory, sharding
from jaxedit.testing import tiny_config

SHAPES = memory.Shapes(batch_size=4, prompt_len=16, window_len=4, target_len=3, num_rewrite=2)


@pytest.fixture(scope="module")
def setting():
    arch = tiny_config("llama", num_layers=4, vocab_size=997)
    mesh = sharding.make_mesh("data:1,model:1", arch, devices=jax.devices()[:1])
    cfg = config.EditConfig(method="MEMIT_seq", layers=(1, 2))
    return arch, mesh, cfg


def test_lti_adds_the_teacher_pass_and_keeps_its_distributions_through_the_search(setting):
    arch, mesh, cfg = setting
    plain = memory.plan(arch, cfg, mesh, dtype="float32", shapes=SHAPES)
    assert set(plain["stages"]) == {
        "search_prepare",
        "search_loop",
        "keys",
        "stats",
        "solve",
        "update",
    }
    lti_cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, lti=True, midlayer=1))
    with_lti = memory.plan(arch, lti_cfg, mesh, dtype="float32", shapes=SHAPES)
    stages = with_lti["stages"]
    assert "teacher" in stages
    r, g, p, v = SHAPES.batch_size, SHAPES.num_rewrite + 1, SHAPES.target_len, arch.vocab_size
    ref = 4 * (r * g * p * v + r * g * v)  # float32 last-layer [r, g, p, v] and lens [r, g, v]
    assert stages["teacher"]["output_bytes"] >= ref
    # The teacher rows run at their own (prefixed) length: a full forward over r·g rows.
    assert stages["teacher"]["input_bytes"] >= 2 * 4 * r * g * SHAPES.teacher_len
    for name in ("search_prepare", "search_loop"):  # the distributions are the search's inputs
        added = stages[name]["input_bytes"] - plain["stages"][name]["input_bytes"]
        assert added >= ref, name
    assert with_lti["peak_bytes"] >= plain["peak_bytes"]
