"""Flax NNX models for the Llama and GPT-2 families, and what the editor needs to know about
each."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxedit.models.base import CausalLM, ModelOutput, Probe, add_at
from jaxedit.models.config import ConfigError, ModelConfig
from jaxedit.models.gpt2 import GPT2LMHeadModel
from jaxedit.models.llama import LlamaForCausalLM

_CLASSES = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel}


def build(config: ModelConfig, *, dtype=jnp.float32, seed: int = 0) -> CausalLM:
    """A randomly initialised model (normal(0, 0.02) kernels, unit norms)."""
    return _CLASSES[config.family](config, dtype=dtype, rngs=nnx.Rngs(seed))


def build_abstract(config: ModelConfig, *, dtype=jnp.float32) -> CausalLM:
    """The model with `jax.ShapeDtypeStruct` leaves: shapes for loaders, no memory."""
    return nnx.eval_shape(lambda: build(config, dtype=dtype))


def rewrite_path(config: ModelConfig, layer: int) -> tuple:
    """State path of the MLP output projection kernel `[d_ff, d_model]` edited by MEMIT-style
    methods."""
    if config.family == "llama":
        return ("model", "layers", layer, "mlp", "down_proj", "kernel")
    return ("transformer", "h", layer, "mlp", "c_proj", "kernel")


__all__ = [
    "CausalLM",
    "ConfigError",
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "ModelConfig",
    "ModelOutput",
    "Probe",
    "add_at",
    "build",
    "build_abstract",
    "rewrite_path",
]
