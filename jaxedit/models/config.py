"""Model configuration parsed from a Hugging Face `config.json`, for both families.

`transformers` is never used to read configs: v5 moved RoPE settings from the top-level `rope_theta`
/ `rope_scaling` keys into a `rope_parameters` dict, and checkpoints in the wild carry either
layout. We parse both here and reject, by name, every feature the Flax models do not implement
(attention or MLP biases in Llama, rope types other than `default`/`llama3`, GPT-2 cross
attention...), instead of silently computing something else (penzai's whitelist idea).

`ModelConfig` is frozen and hashable: it is the static half of a model and may be passed as a static
argument to `jax.jit`. The original JSON text is kept (`hf_json`) so that export writes it back
unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxedit.errors import InputError
from jaxedit.numerics import check_precision

FAMILIES = ("llama", "gpt2")


class ConfigError(InputError):
    """A `config.json` asks for something jaxedit does not implement, or is malformed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters shared by the Llama and GPT-2 families.

    Attributes:
      family: "llama" or "gpt2".
      vocab_size: rows of the token embedding.
      hidden_size: d_model.
      intermediate_size: d_ff, the MLP hidden size (the rewrite dimension of the editors).
      num_layers: number of transformer blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention when < num_heads).
      head_dim: per-head dimension (explicit in Llama configs; may differ from hidden/heads).
      max_position_embeddings: context length (GPT-2's `n_positions`).
      norm_eps: RMSNorm / LayerNorm epsilon.
      rope_theta: RoPE base (Llama only).
      rope_scaling: llama3 frequency-scaling parameters as sorted (key, value) pairs, or None.
      tie_word_embeddings: whether the output head reuses the token embedding.
      activation: MLP activation ("silu" for Llama's SwiGLU, "gelu_new" for GPT-2).
      bos_token_id / eos_token_id / pad_token_id: special ids from the config (may be None).
      matmul_precision: the precision every forward pass is traced at (`jaxedit.numerics`):
        "highest" (default, exact float32), "high" or "default" (the backend's fastest).
      hf_json: the original config.json text, written back verbatim on export.
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = True
    activation: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    matmul_precision: str = "highest"
    hf_json: str = dataclasses.field(default="", compare=False, repr=False)

    def __post_init__(self):
        check_precision(self.matmul_precision, "ModelConfig.matmul_precision")
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )

    @property
    def hf_dict(self) -> dict:
        """The config.json contents to export (the original one when loaded from a checkpoint)."""
        if self.hf_json:
            return json.loads(self.hf_json)
        return to_hf_dict(self)

    @classmethod
    def from_hf(cls, cfg: dict | str) -> ModelConfig:
        """Parses a Hugging Face config (dict or JSON text) of a Llama or GPT-2 checkpoint."""
        data: dict = json.loads(cfg) if isinstance(cfg, str) else cfg
        if not isinstance(data, dict):
            raise ConfigError(f"config.json holds a {type(data).__name__}, not a JSON object")
        model_type = data.get("model_type")
        text = json.dumps(data, indent=2, sort_keys=True)
        try:
            if model_type == "llama":
                return _llama_from_hf(data, text)
            if model_type == "gpt2":
                return _gpt2_from_hf(data, text)
        except KeyError as err:
            raise ConfigError(
                f"config.json (model_type={model_type!r}) has no {err.args[0]!r} field"
            ) from None
        arch = data.get("architectures")
        raise ConfigError(
            f"config.json model_type={model_type!r} (architectures={arch}) is not supported: "
            "jaxedit implements 'llama' (Llama 2/3, SmolLM, ...) and 'gpt2' (fix: use a model of "
            "those families)"
        )


def _first_id(value) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _rope_settings(cfg: dict) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """Reads RoPE settings from either the pre-v5 or the v5 `rope_parameters` layout."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    if theta is None:
        raise ConfigError("config.json has rope_theta=null: expected a number")
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ConfigError(
            f"config.json rope_type={rope_type!r} is not implemented: jaxedit supports 'default' "
            "and 'llama3' RoPE"
        )
    needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in needed if k not in merged]
    if missing:
        raise ConfigError(f"llama3 rope scaling is missing {missing} in config.json")
    return float(theta), tuple(sorted((k, float(merged[k])) for k in needed))


def _llama_from_hf(cfg: dict, text: str) -> ModelConfig:
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag, False):
            raise ConfigError(f"config.json {flag}=true is not implemented for Llama in jaxedit")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config.json hidden_act={act!r}: jaxedit's Llama implements only 'silu'")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        # HF computes the same function with tp>1 (sliced matmuls); numerics differ only by
        # rounding.
        pass
    theta, scaling = _rope_settings(cfg)
    heads = cfg["num_attention_heads"]
    return ModelConfig(
        family="llama",
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        activation="silu",
        bos_token_id=_first_id(cfg.get("bos_token_id")),
        eos_token_id=_first_id(cfg.get("eos_token_id")),
        pad_token_id=_first_id(cfg.get("pad_token_id")),
        hf_json=text,
    )


def _gpt2_from_hf(cfg: dict, text: str) -> ModelConfig:
    if cfg.get("add_cross_attention", False):
        raise ConfigError("config.json add_cross_attention=true is not implemented for GPT-2")
    if not cfg.get("scale_attn_weights", True):
        raise ConfigError("config.json scale_attn_weights=false is not implemented for GPT-2")
    if cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(
            "config.json scale_attn_by_inverse_layer_idx=true is not implemented for GPT-2"
        )
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"config.json activation_function={act!r}: jaxedit's GPT-2 implements 'gelu_new'"
        )
    d = cfg["n_embd"]
    heads = cfg["n_head"]
    return ModelConfig(
        family="gpt2",
        vocab_size=cfg["vocab_size"],
        hidden_size=d,
        intermediate_size=cfg.get("n_inner") or 4 * d,
        num_layers=cfg["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d // heads,
        max_position_embeddings=cfg.get("n_positions", 1024),
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=True,
        activation="gelu_new",
        bos_token_id=_first_id(cfg.get("bos_token_id")),
        eos_token_id=_first_id(cfg.get("eos_token_id")),
        pad_token_id=_first_id(cfg.get("pad_token_id")),
        hf_json=text,
    )


def to_hf_dict(config: ModelConfig) -> dict:
    """A minimal HF config.json for a config built in code (tests, random models)."""
    if config.family == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": config.vocab_size,
            "n_embd": config.hidden_size,
            "n_inner": config.intermediate_size,
            "n_layer": config.num_layers,
            "n_head": config.num_heads,
            "n_positions": config.max_position_embeddings,
            "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
        }
    out = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    if config.rope_scaling:
        out["rope_scaling"] = {"rope_type": "llama3", **dict(config.rope_scaling)}
    return out


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [head_dim // 2] (float32), with llama3 scaling when configured.

    Mirrors HF `_compute_default_rope_parameters`, then `llama3_scale` when `rope_scaling` is set.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)
    )
    inv_freq = inv_freq.astype(np.float32)
    if not config.rope_scaling:
        return inv_freq
    return llama3_scale(inv_freq, dict(config.rope_scaling))


def llama3_scale(inv_freq: np.ndarray, scaling: Mapping[str, Any]) -> np.ndarray:
    """Applies llama3 RoPE frequency scaling to `inv_freq`, computed in `inv_freq`'s dtype.

    Mirrors HF `_compute_llama3_parameters`: wavelengths longer than
    `original_max / low_freq_factor` are divided by `factor`, shorter than
    `original_max / high_freq_factor` are kept, and the band between is interpolated smoothly.
    This is the one implementation of that rule: the models use it in float32 (`rope_inv_freq`),
    the GGUF reader in float64 to check `rope_freqs.weight` (`jaxedit.gguf`).

    Args:
      inv_freq: unscaled inverse frequencies [head_dim // 2].
      scaling: `factor`, `low_freq_factor`, `high_freq_factor` and
        `original_max_position_embeddings`.

    Returns:
      The scaled inverse frequencies, same shape and dtype.
    """
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(inv_freq.dtype)
