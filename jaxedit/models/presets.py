"""The architectures of the models the paper edits (and SmolLM2), as `ModelConfig`s without
weights: for memory plans and at-width benchmarks (`ModelConfig.from_hf` reads the same fields
from a checkpoint's config.json).

    presets.architecture("llama3_8b")                  # 32 blocks, GQA 32/8, d_ff 14336
    presets.architecture("llama3_8b", num_layers=6)    # the same widths, fewer blocks
"""

from __future__ import annotations

import dataclasses

from jaxedit.models.config import ModelConfig

_LLAMA3_ROPE = (
    ("factor", 8.0),
    ("high_freq_factor", 4.0),
    ("low_freq_factor", 1.0),
    ("original_max_position_embeddings", 8192),
    ("rope_type", "llama3"),
)

ARCHITECTURES: dict[str, ModelConfig] = {
    # Meta-Llama-3-8B(-Instruct): config.json of the release (rope scaling as Llama 3.1's).
    "llama3_8b": ModelConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=8192,
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama2_7b": ModelConfig(
        family="llama",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        max_position_embeddings=4096,
        norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt2_xl": ModelConfig(
        family="gpt2",
        vocab_size=50257,
        hidden_size=1600,
        intermediate_size=6400,
        num_layers=48,
        num_heads=25,
        num_kv_heads=25,
        head_dim=64,
        max_position_embeddings=1024,
        norm_eps=1e-5,
        tie_word_embeddings=True,
        activation="gelu_new",
        bos_token_id=50256,
        eos_token_id=50256,
    ),
    "smollm2": ModelConfig(
        family="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


def architecture(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of `name` (a key of `ARCHITECTURES`), with any field overridden."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return dataclasses.replace(ARCHITECTURES[name], **overrides)
