"""Hugging Face safetensors checkpoints <-> jaxedit NNX state, without torch.

Conversion rules (the only place in jaxedit where tensors are transposed or renamed):

| HF tensor | jaxedit state path | transform |
|---|---|---|
| Llama `*.{q,k,v,o,gate,up,down}_proj.weight` `[out, in]` | `...kernel` `[in, out]` | transpose |
| Llama `lm_head.weight` `[v, d]` (untied only) | `lm_head.kernel` `[d, v]` | transpose |
| Llama `*layernorm.weight`, `model.norm.weight` | `...scale` | identity |
| Llama `model.embed_tokens.weight` `[v, d]` | `model.embed_tokens.embedding` | identity |
| GPT-2 `*.c_attn/c_proj/c_fc.weight` (`Conv1D`, already `[in, out]`) | `...kernel` | identity |
| GPT-2 `*.bias`, `wte/wpe.weight`, `ln_*.weight` | `bias`, `embedding`, `scale` | identity |

Llama keeps HF's rotate-half q/k layout (no interleaving permutation, no folded 1/sqrt(d)), so
weights export back 1:1 and activations match the PyTorch reference. GPT-2 keys may come with or
without the `transformer.` prefix; the non-parameter buffers `h.N.attn.bias` /
`h.N.attn.masked_bias` are dropped and a saved `lm_head.weight` of a tied model is ignored (it is
`wte`). Export writes the canonical `transformer.`-prefixed names, as `save_pretrained` does. Every
transform is its own inverse's transpose, so HF -> jaxedit -> HF is bit-exact in every dtype.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxedit.errors import InputError, MissingFileError
from jaxedit.files import check_safetensors, read_json
from jaxedit.models import ModelConfig, build_abstract

_T = "transpose"
_I = "identity"


def _rule(family: str, hf: str, leaf: str, transform: str) -> tuple[str, tuple[str, str, str]]:
    """One row of `_RULES`: (family, (HF name template, state path template, transform)).

    The state path is the HF module path with `/` separators and the Flax leaf name (`kernel`,
    `scale`, `embedding`, `bias`) for the last part. `{n}` is a layer number, `{a|b|c}` one of the
    listed words; both sides use the same placeholders in the same order, so each rule inverts
    itself."""
    return family, (hf, hf.rsplit(".", 1)[0].replace(".", "/") + "/" + leaf, transform)


# GPT-2's Conv1D weights are already [in, out]: nothing of GPT-2 is transposed.
_RULES = [
    _rule("llama", "model.embed_tokens.weight", "embedding", _I),
    _rule("llama", "model.layers.{n}.self_attn.{q|k|v|o}_proj.weight", "kernel", _T),
    _rule("llama", "model.layers.{n}.mlp.{gate|up|down}_proj.weight", "kernel", _T),
    _rule("llama", "model.layers.{n}.input_layernorm.weight", "scale", _I),
    _rule("llama", "model.layers.{n}.post_attention_layernorm.weight", "scale", _I),
    _rule("llama", "model.norm.weight", "scale", _I),
    _rule("llama", "lm_head.weight", "kernel", _T),
    _rule("gpt2", "transformer.{wte|wpe}.weight", "embedding", _I),
    _rule("gpt2", "transformer.h.{n}.{ln_1|ln_2}.weight", "scale", _I),
    _rule("gpt2", "transformer.h.{n}.{ln_1|ln_2}.bias", "bias", _I),
    _rule("gpt2", "transformer.h.{n}.attn.{c_attn|c_proj}.weight", "kernel", _I),
    _rule("gpt2", "transformer.h.{n}.attn.{c_attn|c_proj}.bias", "bias", _I),
    _rule("gpt2", "transformer.h.{n}.mlp.{c_fc|c_proj}.weight", "kernel", _I),
    _rule("gpt2", "transformer.h.{n}.mlp.{c_fc|c_proj}.bias", "bias", _I),
    _rule("gpt2", "transformer.ln_f.weight", "scale", _I),
    _rule("gpt2", "transformer.ln_f.bias", "bias", _I),
]
_LLAMA_RULES = [rule for family, rule in _RULES if family == "llama"]
_GPT2_RULES = [rule for family, rule in _RULES if family == "gpt2"]
_LLAMA_IGNORED = re.compile(r".*rotary_emb\.inv_freq")
_GPT2_IGNORED = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight")

_PLACEHOLDER = re.compile(r"\{([^}]*)\}")


def _template_regex(template: str) -> re.Pattern:
    """`model.layers.{n}.mlp.{gate|up}_proj` -> a regex with one capture group per placeholder."""
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(r"(\d+)" if m.group(1) == "n" else f"({m.group(1)})")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


def _fill(template: str, values: tuple[str, ...]) -> str:
    it = iter(values)
    return _PLACEHOLDER.sub(lambda _: next(it), template)


def _translate(rules, name: str, forward: bool) -> tuple[str, str] | None:
    """Maps an HF name to a state path (forward) or back; returns (result, transform) or None."""
    for hf, state, tf in rules:
        src, dst = (hf, state) if forward else (state, hf)
        m = _template_regex(src).fullmatch(name)
        if m:
            return _fill(dst, m.groups()), tf
    return None


class CheckpointError(InputError):
    """A checkpoint does not match its config (missing, unexpected or mis-shaped tensors)."""


def _rules(config: ModelConfig):
    if config.family == "llama":
        return _LLAMA_RULES, _LLAMA_IGNORED
    return _GPT2_RULES, _GPT2_IGNORED


def _canonical_name(config: ModelConfig, name: str) -> str:
    if config.family == "gpt2" and not name.startswith("transformer.") and name != "lm_head.weight":
        return "transformer." + name
    return name


def _apply(transform: str, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T) if transform == _T else x


def _path_key(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("/"))


def _flat_abstract(config: ModelConfig) -> dict[tuple, jax.ShapeDtypeStruct]:
    _, state = nnx.split(build_abstract(config))
    flat = nnx.to_flat_state(state)
    return {
        tuple(path): var.get_value() if hasattr(var, "get_value") else var.value
        for path, var in flat
    }


def hf_to_flat(
    config: ModelConfig, tensors: Mapping[str, np.ndarray], dtype=None
) -> dict[tuple, np.ndarray]:
    """Maps HF-named tensors to `{state path: array}`, checking coverage and shapes.

    All problems are collected and raised together in one `CheckpointError`.

    Args:
      config: the model config.
      tensors: HF parameter name -> array (HF orientation).
      dtype: cast every tensor to this dtype; None keeps the checkpoint's.
    """
    rules, ignored = _rules(config)
    expected = _flat_abstract(config)
    out: dict[tuple, np.ndarray] = {}
    errors: list[str] = []
    for raw_name, value in tensors.items():
        name = _canonical_name(config, raw_name)
        if ignored.fullmatch(name) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        found = _translate(rules, name, forward=True)
        if found is None:
            errors.append(f"unexpected tensor {raw_name!r}")
            continue
        path, tf = _path_key(found[0]), found[1]
        if path not in expected:
            errors.append(f"tensor {raw_name!r} has no place in a {config.num_layers}-layer model")
            continue
        value = _apply(tf, np.asarray(value))
        if value.shape != tuple(expected[path].shape):
            errors.append(
                f"{raw_name}: shape {value.shape} (after {tf}) != expected {expected[path].shape}"
            )
            continue
        out[path] = value if dtype is None else value.astype(dtype)
    missing = sorted(set(expected) - set(out))
    errors += [f"missing tensor for {'/'.join(map(str, p))}" for p in missing]
    if errors:
        raise CheckpointError("checkpoint does not match config.json:\n  " + "\n  ".join(errors))
    return out


def flat_to_hf(config: ModelConfig, flat: Mapping[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `hf_to_flat`: `{state path: array}` -> HF-named tensors in HF orientation."""
    rules, _ = _rules(config)
    out = {}
    for path, value in flat.items():
        found = _translate(rules, "/".join(map(str, path)), forward=False)
        if found is None:
            raise CheckpointError(f"no HF name for state path {path}")
        out[found[0]] = _apply(found[1], np.asarray(value))
    return out


# --------------------------------------------------------------------------------------------------
# safetensors files


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads `model.safetensors`, or the shards of `model.safetensors.index.json`, from a directory
    (or one `.safetensors` file) into numpy arrays (bf16 arrives as `ml_dtypes.bfloat16`)."""
    path = Path(path)
    if path.is_file():
        shards = [path]
    elif (path / "model.safetensors.index.json").exists():
        index_file = path / "model.safetensors.index.json"
        index = read_json(index_file, "safetensors index", "download or copy it again")
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise InputError(f"{index_file}: no weight_map (fix: download or copy it again)")
        shards = [path / f for f in sorted(set(index["weight_map"].values()))]
    elif (path / "model.safetensors").exists():
        shards = [path / "model.safetensors"]
    else:
        found = sorted(p.name for p in path.glob("*"))
        raise MissingFileError(
            f"{path}: no model.safetensors or model.safetensors.index.json (found {found[:10]}); "
            "pytorch_model.bin checkpoints need torch: convert them with "
            "save_pretrained(safe_serialization=True)"
        )
    for f in shards:  # every shard is there and as long as its header says, before any is read
        check_safetensors(f)
    tensors = {}
    for f in shards:
        with safe_open(f, framework="numpy") as reader:
            names = reader.keys()  # a list: safe_open is not a mapping (it has no __iter__)
            for key in names:
                tensors[key] = reader.get_tensor(key)
    return tensors


_DTYPE_NAMES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
}


def write_safetensors(
    out_dir: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Writes tensors as `model.safetensors`, or as shards plus `model.safetensors.index.json` when
    they exceed `max_shard_bytes`. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    total = sum(np.asarray(tensors[n]).nbytes for n in names)
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(
            {n: np.ascontiguousarray(tensors[n]) for n in names},
            out_dir / "model.safetensors",
            metadata={"format": "pt"},
        )
        return [out_dir / "model.safetensors"]
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:
        nbytes = np.asarray(tensors[n]).nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(
            {n: np.ascontiguousarray(tensors[n]) for n in shard},
            out_dir / fname,
            metadata={"format": "pt"},
        )
        weight_map.update(dict.fromkeys(shard, fname))
        files.append(out_dir / fname)
    index = {"metadata": {"total_size": int(total)}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(np.dtype(dtype), str(np.dtype(dtype)))


def flat_to_state(
    config: ModelConfig, flat: Mapping[tuple, np.ndarray], to_device: Callable = jax.numpy.asarray
):
    """Builds `(graphdef, state)` for the model from a complete flat mapping."""
    dtype = next(iter(flat.values())).dtype
    abstract = build_abstract(config, dtype=dtype)
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    for path, value in flat.items():
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = to_device(value)
    nnx.replace_by_pure_dict(state, pure)
    return graphdef, state


def state_arrays(state) -> dict[tuple, Any]:
    """`{state path: array}` for every parameter of an NNX state, as they are (device arrays)."""
    flat = {}
    for path, var in nnx.to_flat_state(state):
        flat[tuple(path)] = var.get_value() if hasattr(var, "get_value") else var.value
    return flat


def state_to_flat(state) -> dict[tuple, np.ndarray]:
    """`{state path: numpy array}` for every parameter of an NNX state (gathered across hosts
    when a sharded array spans several: then every process must call it)."""
    from jaxedit.sharding import to_host

    return {path: to_host(value) for path, value in state_arrays(state).items()}
