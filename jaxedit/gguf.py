"""Reads a Llama-family GGUF file (llama.cpp's format) into Hugging Face form, without torch.

`read_gguf` returns the three things the rest of jaxedit consumes from a Hugging Face checkpoint: a
Llama `config.json`-style dict, the parameters under their Hugging Face names as float32 numpy
arrays, and a `transformers.PreTrainedTokenizerFast` rebuilt from the vocabulary stored in the file.
Only the `gguf` package (numpy) and `tokenizers`/`transformers` tokenizer classes are used; nothing
imports torch.

Conversion rules (every layout change and why):

* **Names.** llama.cpp's names map one to one onto Hugging Face's (`_LAYER_NAMES`): `token_embd` ->
  `model.embed_tokens`, `blk.{i}.attn_q` -> `model.layers.{i}.self_attn.q_proj`, `attn_norm` ->
  `input_layernorm`, `ffn_norm` -> `post_attention_layernorm`, `output_norm` -> `model.norm`,
  `output` -> `lm_head`. A file without `output.weight` ties the head to the embedding (llama.cpp
  writes the head only when it differs), so the config says `tie_word_embeddings=True` and no
  `lm_head.weight` is returned.
* **Shapes: no transpose.** GGUF lists a tensor's dimensions innermost-first (`ne[0]` is the
  contiguous one), the reverse of numpy's C order. llama.cpp's converter writes torch's
  `nn.Linear.weight` ([out, in], `in` contiguous) untouched, so `ne = [in, out]`; reversing `ne`
  gives back [out, in]. The `gguf` reader already hands out row-major data (rows = outer dimensions,
  one row = `ne[0]` values, or the quantized bytes of them), and `gguf.quants.dequantize` expands
  each row to `ne[0]` floats, so reshaping to `reversed(ne)` is all that is needed. The embedding is
  [vocab, d] for the same reason.
* **q/k rows: undo llama.cpp's RoPE permutation.** Hugging Face's Llama rotates the two *halves* of
  each head (`rotate_half`: pairs (j, j + head_dim/2)); llama.cpp rotates *adjacent* pairs
  (2j, 2j+1). Its converter therefore reorders the output rows of `q_proj` (per query head) and
  `k_proj` (per key/value head) so that row j of the first half and row j of the second half become
  neighbours: `w.reshape(n_heads, 2, head_dim // 2, d_in).swapaxes(1, 2)` (`permute_qk_for_gguf`).
  We apply the inverse, `w.reshape(n_heads, head_dim // 2, 2, d_in).swapaxes(1, 2)`, with
  n_heads = num_attention_heads for q and num_key_value_heads for k. v and o are not rotated and
  are stored as-is.
* **Dtypes.** Every tensor (F32, F16, BF16, Q8_0, Q4_1, k-quants...) goes through
  `gguf.quants.dequantize` and comes out float32: quantization noise stays in the weights, which is
  what llama.cpp computes with too.
* **RoPE scaling.** Explicit `llama.rope.scaling.*` metadata becomes `rope_scaling`. llama.cpp
  stores Llama 3.1-style scaling not as metadata but as a `rope_freqs.weight` tensor of
  per-frequency divisors; we recover equivalent `llama3` parameters from it
  (`_llama3_from_rope_freqs`) and check that they reproduce the tensor, rather than dropping it
  silently.

The tokenizer is rebuilt from `tokenizer.ggml.*` by `jaxedit.gguf_tokenizer.build_tokenizer`; only
byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Llama 3, Qwen...) are
supported.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxedit.errors import InputError
from jaxedit.files import check_gguf
from jaxedit.gguf_tokenizer import build_tokenizer

if TYPE_CHECKING:
    import transformers

logger = logging.getLogger(__name__)

# llama.cpp per-layer tensor name -> Hugging Face name (inside `model.layers.{i}.`).
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def permute_qk_for_gguf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Applies llama.cpp's q/k row permutation (Hugging Face rotate-half -> adjacent-pair RoPE).

    Inside each head, output row j of the first half and row j of the second half become rows 2j and
    2j + 1. `unpermute_qk_from_gguf` is the inverse.

    Args:
      w: a Hugging Face `q_proj` / `k_proj` weight, [n_heads * head_dim, d_in].
      n_heads: query heads for q, key/value heads for k.

    Returns:
      The weight with rows in llama.cpp order, same shape.
    """
    w = np.asarray(w)
    rows = w.shape[0]
    _check_heads(rows, n_heads)
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk_from_gguf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes `permute_qk_for_gguf`: llama.cpp adjacent-pair row order -> Hugging Face rotate-half.

    Args:
      w: an `attn_q` / `attn_k` weight as read from a GGUF, [n_heads * head_dim, d_in].
      n_heads: query heads for q, key/value heads for k.

    Returns:
      The weight with rows in Hugging Face order, same shape.
    """
    w = np.asarray(w)
    rows = w.shape[0]
    _check_heads(rows, n_heads)
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_heads(rows: int, n_heads: int) -> None:
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ValueError(f"{rows} rows cannot be split into {n_heads} heads of even head_dim")


def read_gguf(
    path: str | os.PathLike,
) -> tuple[dict, dict[str, np.ndarray], transformers.PreTrainedTokenizerFast]:
    """Reads a Llama-architecture GGUF into a HF config, HF-named float32 tensors and a tokenizer.

    Args:
      path: the `.gguf` file.

    Returns:
      `(hf_config, tensors, tokenizer)`: a Llama `config.json`-style dict; parameters under their
      Hugging Face names in Hugging Face orientation (`nn.Linear.weight` is [out, in]) as float32
      numpy arrays (`lm_head.weight` only when the file has a separate `output.weight`); and a
      `PreTrainedTokenizerFast` built from the file's vocabulary.

    Raises:
      InputError: the file is not a Llama-architecture GGUF, its metadata is incomplete, or its
        tensors do not match the metadata (all tensor problems are listed in one message);
        `TruncatedFileError` when it ends before the tensor data its header declares.
    """
    from gguf import GGUFReader

    check_gguf(path)  # a cut-short file: TruncatedFileError naming it, not a failed reshape
    reader = GGUFReader(os.fspath(path))
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise InputError(
            f"{os.fspath(path)}: GGUF field general.architecture={arch!r}; jaxedit reads only "
            "'llama' (Llama 2/3, SmolLM, ...) GGUF files (fix: pass a Llama-family GGUF, or a "
            "Hugging Face directory of a Llama or GPT-2 model)"
        )
    tensor_names = {t.name for t in reader.tensors}
    try:
        hf_config = _hf_config(meta, tensor_names)
        tensors, rope_freqs = _hf_tensors(reader, hf_config)
        if rope_freqs is not None:
            _apply_rope_freqs(hf_config, rope_freqs)
    except InputError as err:
        raise InputError(f"{os.fspath(path)}: {err}") from None
    tokenizer = build_tokenizer(meta)
    logger.info(
        "read %s: %d layers, d=%d, %d tensors (%s)",
        os.fspath(path),
        hf_config["num_hidden_layers"],
        hf_config["hidden_size"],
        len(tensors),
        "tied head" if hf_config["tie_word_embeddings"] else "separate head",
    )
    return hf_config, tensors, tokenizer


def _metadata(reader: Any) -> dict[str, Any]:
    """All key/value fields of the file as Python values (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def _f32(value: float) -> float:
    # GGUF stores these as float32; the shortest repr of that float32 (1e-05, not 9.9999997e-06) is
    # what the original config.json said.
    return float(str(np.float32(value)))


def _hf_config(meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """The Hugging Face Llama config described by the `llama.*` and `tokenizer.ggml.*` metadata."""

    def need(key: str) -> Any:
        if key not in meta:
            raise InputError(f"GGUF metadata has no {key!r}, which a Llama config needs")
        return meta[key]

    d = int(need("llama.embedding_length"))
    heads = int(need("llama.attention.head_count"))
    kv_heads = int(meta.get("llama.attention.head_count_kv", heads))
    head_dim = int(meta.get("llama.attention.key_length", d // heads))
    value_dim = int(meta.get("llama.attention.value_length", head_dim))
    rot_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if value_dim != head_dim:
        raise InputError(
            f"GGUF llama.attention.value_length={value_dim} differs from key_length={head_dim}; "
            "Hugging Face Llama has one head_dim"
        )
    if rot_dim != head_dim:
        raise InputError(
            f"GGUF llama.rope.dimension_count={rot_dim} differs from head_dim={head_dim} (partial "
            "rotary embedding), which Hugging Face Llama does not implement"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get("llama.vocab_size", len(tokens) if tokens is not None else None)
    if vocab is None:
        raise InputError("GGUF metadata has neither 'llama.vocab_size' nor 'tokenizer.ggml.tokens'")
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(vocab),
        "hidden_size": d,
        "intermediate_size": int(need("llama.feed_forward_length")),
        "num_hidden_layers": int(need("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _f32(need("llama.attention.layer_norm_rms_epsilon")),
        # llama.cpp's default base when the key is absent, as in Llama 1/2.
        "rope_theta": _f32(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }
    for hf_key, gguf_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if gguf_key in meta:
            cfg[hf_key] = int(meta[gguf_key])
    scaling = _rope_scaling_from_metadata(meta)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    return cfg


def _rope_scaling_from_metadata(meta: dict[str, Any]) -> dict[str, Any] | None:
    """`rope_scaling` from explicit `llama.rope.scaling.*` keys, or None when there are none."""
    prefix = "llama.rope.scaling."
    fields = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
    rope_type = fields.pop("type", None)
    if rope_type in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": rope_type}
    for key, value in sorted(fields.items()):
        if key == "original_context_length":
            scaling["original_max_position_embeddings"] = int(value)
        elif isinstance(value, float):
            scaling[key] = _f32(value)
        else:
            scaling[key] = value
    return scaling


def _inv_freq(cfg: dict[str, Any]) -> np.ndarray:
    """Unscaled RoPE inverse frequencies [head_dim // 2], float64."""
    head_dim = cfg["head_dim"]
    return cfg["rope_theta"] ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _llama3_factors(cfg: dict[str, Any], scaling: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors (what `rope_freqs.weight` holds) of Hugging Face's llama3 RoPE."""
    from jaxedit.models.config import llama3_scale

    inv_freq = _inv_freq(cfg)
    return inv_freq / llama3_scale(inv_freq, scaling)


def _llama3_from_rope_freqs(cfg: dict[str, Any], freqs: np.ndarray) -> dict[str, Any] | None:
    """Recovers llama3 rope_scaling parameters that reproduce llama.cpp's `rope_freqs.weight`.

    llama.cpp divides frequency i by freqs[i]: 1 for short wavelengths, `factor` for long ones and
    1 / ((1 - s) / factor + s) in between, with s = (old_ctx / wavelen - low) / (high - low). Only
    a = old_ctx / (high - low) and b = low / (high - low) are identifiable, so old_ctx is fixed to
    the Llama 3 value 8192 and low/high follow; the result is checked against the tensor by the
    caller.
    """
    factor = float(freqs.max())
    if factor <= 1.0:
        return None
    x = _inv_freq(cfg) / (2 * math.pi)  # 1 / wavelen; s = a * x - b grows with x
    s = (1.0 / freqs - 1.0 / factor) / (1.0 - 1.0 / factor)
    scaled, unscaled = s <= 1e-4, s >= 1 - 1e-4
    mid = ~scaled & ~unscaled
    old_ctx = 8192.0
    if mid.sum() >= 2:
        a, intercept = np.polyfit(x[mid], s[mid], 1)
        b = -intercept
    else:
        # Too few interpolated frequencies to fit a line: take any ramp that passes through the
        # interpolated point (if any) and keeps fully scaled points at s <= 0 and unscaled ones at
        # s >= 1; every such ramp gives the same divisors on this frequency grid.
        x0 = x[scaled].max()
        x1 = x[unscaled].min() if unscaled.any() else None
        if mid.any():
            xm, sm = x[mid][0], s[mid][0]
            a = sm / (xm - x0)
            if x1 is not None:
                a = max(a, (1.0 - sm) / (x1 - xm))
            b = a * xm - sm
        else:
            a = 1.0 / ((x1 if x1 is not None else 2 * x.max()) - x0)
            b = a * x0
    span = old_ctx / a
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": float(b * span),
        "high_freq_factor": float(b * span + span),
        "original_max_position_embeddings": int(old_ctx),
    }


def _apply_rope_freqs(cfg: dict[str, Any], freqs: np.ndarray) -> None:
    """Folds llama.cpp's `rope_freqs.weight` into `cfg["rope_scaling"]`, or raises if it cannot."""
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    if freqs.shape != (cfg["head_dim"] // 2,):
        raise InputError(f"rope_freqs.weight has {freqs.size} values, expected head_dim/2")
    scaling = cfg.get("rope_scaling")
    if scaling is None:
        if np.allclose(freqs, 1.0):
            return
        scaling = _llama3_from_rope_freqs(cfg, freqs)
    needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    # Hugging Face's llama3 rule (`llama3_scale`, what the models compute) needs 0 < low < high.
    if (
        scaling is None
        or scaling.get("rope_type") != "llama3"
        or not all(k in scaling for k in needed)
        or not 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]
    ):
        raise InputError(
            "rope_freqs.weight (per-frequency RoPE divisors) is present but cannot be expressed as "
            f"llama3 rope_scaling (metadata: {cfg.get('rope_scaling')})"
        )
    expected = _llama3_factors(cfg, scaling)
    if not np.allclose(expected, freqs, rtol=1e-4, atol=1e-6):
        raise InputError(
            "rope_freqs.weight is not reproduced by llama3 rope_scaling "
            f"{scaling}: max abs difference {np.abs(expected - freqs).max():.3g}"
        )
    cfg["rope_scaling"] = scaling


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape for every parameter the config implies."""
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    ff, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, d),
        "model.norm.weight": (d,),
    }
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, d)
    per_layer = {
        "self_attn.q_proj": (q, d),
        "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q),
        "mlp.gate_proj": (ff, d),
        "mlp.up_proj": (ff, d),
        "mlp.down_proj": (d, ff),
        "input_layernorm": (d,),
        "post_attention_layernorm": (d,),
    }
    for i in range(cfg["num_hidden_layers"]):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{i}.{name}.weight"] = shape
    return shapes


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def _hf_tensors(
    reader: Any, cfg: dict[str, Any]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Dequantizes, renames and un-permutes every tensor; also returns `rope_freqs` if present."""
    from gguf.quants import dequantize

    expected = _expected_shapes(cfg)
    problems: list[str] = []
    tensors: dict[str, np.ndarray] = {}
    rope_freqs = None
    for t in reader.tensors:
        # GGUF shapes are innermost-first; numpy (and Hugging Face) order is the reverse.
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        if t.name == "rope_freqs.weight":
            rope_freqs = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            continue
        name = _hf_name(t.name)
        if name is None or name not in expected:
            problems.append(f"unexpected tensor {t.name} {list(shape)} ({t.tensor_type.name})")
            continue
        if name in tensors:
            problems.append(f"duplicate tensor {t.name}")
            continue
        if shape != expected[name]:
            problems.append(
                f"{t.name} -> {name}: shape {list(shape)}, expected {list(expected[name])}"
            )
            continue
        # np.array copies: the reader's arrays are read-only views of the memory-mapped file.
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk_from_gguf(w, cfg["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk_from_gguf(w, cfg["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(w)
    problems += [f"missing tensor {n} {list(s)}" for n, s in expected.items() if n not in tensors]
    if problems:
        raise InputError(
            f"GGUF tensors do not match a Llama with config {_summary(cfg)}:\n  "
            + "\n  ".join(problems)
        )
    return tensors, rope_freqs


def _summary(cfg: dict[str, Any]) -> str:
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "tie_word_embeddings",
    )
    return "{" + ", ".join(f"{k}={cfg[k]}" for k in keys) + "}"
