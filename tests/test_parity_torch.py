"""Parity with the transformers PyTorch implementation on random tiny models (needs torch).

torch is a test-only extra (`pip install -e .[parity]`); without it these tests skip.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers")

import jaxedit  # noqa: E402
from jaxedit import convert  # noqa: E402

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}

CASES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=61,
            n_embd=30,
            n_head=3,
            n_layer=3,
            n_positions=67,
            n_inner=43,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "llama-gqa-untied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=61,
            hidden_size=30,
            num_attention_heads=3,
            num_key_value_heads=1,
            intermediate_size=43,
            num_hidden_layers=3,
            head_dim=10,
            tie_word_embeddings=False,
            max_position_embeddings=67,
        )
    ),
    "llama-llama3rope-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=61,
            hidden_size=30,
            num_attention_heads=3,
            num_key_value_heads=3,
            intermediate_size=43,
            num_hidden_layers=3,
            head_dim=14,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling=LLAMA3_ROPE,
            max_position_embeddings=67,
        )
    ),
    "llama-mha-rms1e-6": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=61,
            hidden_size=30,
            num_attention_heads=5,
            num_key_value_heads=5,
            intermediate_size=43,
            num_hidden_layers=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=67,
        )
    ),
}


def _torch_model(name, tmp_path, dtype=None):
    torch.manual_seed(0)
    model = CASES[name]().eval()
    with torch.no_grad():  # non-trivial norm weights, so a mis-mapped scale shows up
        for _n, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    path = tmp_path / name
    model.save_pretrained(path)
    return model, path


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 61, (3, 17)).astype(np.int32)
    lengths = np.array([17, 11, 4], np.int32)
    mask = (np.arange(17)[None] < lengths[:, None]).astype(np.int64)
    return ids, lengths, mask


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_pytorch(name, tmp_path):
    ref_model, path = _torch_model(name, tmp_path)
    ids, lengths, mask = _batch()
    with torch.no_grad():
        ref = ref_model(
            torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).logits
    ours = jaxedit.load(path).logits_from_ids(ids, lengths)
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref.numpy()[real]).max() <= 1e-4


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-untied", "llama-llama3rope-tied"])
def test_export_loads_in_transformers(name, tmp_path):
    """jaxedit -> HF directory -> transformers gives the same logits and bit-identical tensors."""
    ref_model, path = _torch_model(name, tmp_path)
    model = jaxedit.load(path)
    out = jaxedit.save_hf(model, tmp_path / "exported")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, lengths, mask = _batch()
    with torch.no_grad():
        theirs = reloaded(
            torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).logits
    ours = model.logits_from_ids(ids, lengths)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs.numpy()[real]).max() <= 1e-4
    a, b = ref_model.state_dict(), reloaded.state_dict()
    for k, v in a.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(v, b[k]), k


def test_bf16_checkpoint_round_trip(tmp_path):
    _, path = _torch_model("llama-gqa-untied", tmp_path, dtype=torch.bfloat16)
    model = jaxedit.load(path)
    assert model.dtype.name == "bfloat16"
    out = jaxedit.save_hf(model, tmp_path / "bf16")
    src, back = convert.read_safetensors(path), convert.read_safetensors(out)
    assert set(src) == set(back)
    for k in src:
        assert src[k].dtype == back[k].dtype and src[k].tobytes() == back[k].tobytes(), k
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
