"""HF safetensors <-> jaxedit: bit-exact round trips (fp32, bf16, sharded), name handling,
errors."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxedit
from jaxedit import convert, models
from jaxedit.models.config import to_hf_dict
from jaxedit.testing import require_shared, tiny_config


def _hf_tensors(cfg, dtype=np.float32, seed=0):
    """Random HF-named tensors in HF orientation (Llama [out, in], GPT-2 Conv1D [in, out])."""
    flat = convert.state_to_flat(__import__("flax").nnx.split(models.build(cfg, seed=seed))[1])
    tensors = convert.flat_to_hf(cfg, flat)
    rng = np.random.default_rng(seed)
    # Norm scales and biases are ones/zeros at init: randomise them so a mix-up is visible.
    return {
        k: (v + rng.normal(0, 0.1, v.shape).astype(np.float32)).astype(dtype)
        for k, v in tensors.items()
    }


def _write_dir(path, cfg, tensors, shard_bytes=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(to_hf_dict(cfg)))
    convert.write_safetensors(path, tensors, shard_bytes)
    return path


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("sharded", [False, True])
def test_round_trip_is_bit_exact(tmp_path, family, dtype, sharded):
    cfg = tiny_config(family)
    tensors = _hf_tensors(cfg, dtype)
    total = sum(v.nbytes for v in tensors.values())
    src = _write_dir(tmp_path / "src", cfg, tensors, total // 2 + 1 if sharded else None)
    if sharded:
        index = json.loads((src / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 2
    model = jaxedit.load(src)
    assert model.dtype == np.dtype(dtype)
    out = jaxedit.save_hf(
        model, tmp_path / "out", max_shard_bytes=total // 2 + 1 if sharded else None
    )
    back = convert.read_safetensors(out)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        assert back[k].tobytes() == v.tobytes(), k
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["dtype"] == convert.dtype_name(dtype)


def test_dtype_cast_on_load(tmp_path, family):
    cfg = tiny_config(family)
    src = _write_dir(tmp_path / "src", cfg, _hf_tensors(cfg))
    model = jaxedit.load(src, dtype="bfloat16")
    assert model.dtype == np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        jaxedit.load(src, dtype="float8")


def test_gpt2_names_without_prefix_and_buffers(tmp_path):
    cfg = tiny_config("gpt2")
    tensors = _hf_tensors(cfg)
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 67, 67), np.float32))  # causal-mask buffer
    bare["lm_head.weight"] = tensors["transformer.wte.weight"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(to_hf_dict(cfg)))
    save_file(bare, src / "model.safetensors")
    model = jaxedit.load(src)
    back = convert.flat_to_hf(cfg, convert.state_to_flat(model.params))
    assert set(back) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])


def test_untied_llama_head_and_tied_ignores_saved_head(tmp_path):
    untied = tiny_config("llama", tie_word_embeddings=False)
    tensors = _hf_tensors(untied)
    assert "lm_head.weight" in tensors
    model = jaxedit.load(_write_dir(tmp_path / "u", untied, tensors))
    np.testing.assert_array_equal(
        np.asarray(model.params["lm_head"]["kernel"][...]), tensors["lm_head.weight"].T
    )
    tied = tiny_config("llama", tie_word_embeddings=True)
    tensors = _hf_tensors(tied)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    model = jaxedit.load(_write_dir(tmp_path / "t", tied, tensors))
    assert model.module.lm_head is None


def test_mismatched_checkpoint_lists_every_problem(tmp_path, family):
    cfg = tiny_config(family)
    tensors = _hf_tensors(cfg)
    name = next(k for k in tensors if k.endswith("weight") and tensors[k].ndim == 2 and "mlp" in k)
    tensors[name] = tensors[name][:-1]
    removed = next(k for k in tensors if "norm" in k or "ln_f" in k)
    del tensors[removed]
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(convert.CheckpointError) as err:
        jaxedit.load(_write_dir(tmp_path / "bad", cfg, tensors))
    msg = str(err.value)
    assert name in msg and "model.extra.weight" in msg and "missing" in msg


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="not a preset"):
        jaxedit.load("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        jaxedit.load(tmp_path / "empty")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(to_hf_dict(tiny_config("llama"))))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        jaxedit.load(tmp_path / "cfg")


def test_string_api_with_real_gpt2_tokenizer(tmp_path):
    """logits/generate on strings, through a HF directory carrying the real GPT-2 tokenizer."""
    tok_dir = require_shared("data", "gpt2_tokenizer")
    from transformers import GPT2Tokenizer

    # transformers v5 ignores GPT2TokenizerFast(vocab_file=..., merges_file=...); the directory
    # works.
    tok = GPT2Tokenizer.from_pretrained(str(tok_dir))
    assert tok("The capital")["input_ids"] == [464, 3139]
    cfg = tiny_config("gpt2", vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
    src = _write_dir(tmp_path / "gpt2", cfg, _hf_tensors(cfg))
    tok.save_pretrained(str(src))
    model = jaxedit.load(src)
    prompts = ["The capital of France is", "Hello"]
    logits, lengths = model.logits(prompts)
    assert logits.shape == (2, int(lengths.max()), 50257)
    assert list(lengths) == [len(tok(p)["input_ids"]) for p in prompts]
    single, _ = model.logits(prompts[1:])
    np.testing.assert_allclose(logits[1, : lengths[1]], single[0, : lengths[1]], atol=1e-5)
    texts = model.generate(prompts, max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # Greedy decoding is deterministic and equals step-by-step argmax.
    ids = tok(prompts[0])["input_ids"]
    for _ in range(5):
        nxt = int(np.argmax(model.logits_from_ids(np.array([ids], np.int32), [len(ids)])[0, -1]))
        ids.append(nxt)
    new = ids[len(tok(prompts[0])["input_ids"]) :]
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert texts[0] == tok.decode(new, skip_special_tokens=True)
    out = jaxedit.save_hf(model, tmp_path / "out")
    assert (out / "tokenizer.json").exists() or (out / "vocab.json").exists()
