"""Key statistics: accumulation against numpy, the cache, fingerprints, MEMIT import, corpora."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from jaxedit import corpus, models, stats
from jaxedit.lm import LanguageModel
from jaxedit.testing import tiny_config


class _CharTokenizer:
    """A stand-in tokenizer: one id per character (ids < 61)."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % 61 for c in text]}

    def encode(self, text, truncation=True, max_length=None):
        ids = self(text)["input_ids"]
        return ids[:max_length] if truncation and max_length else ids


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config("llama")
    graphdef, params = nnx.split(models.build(cfg))
    return LanguageModel(config=cfg, tokenizer=_CharTokenizer(), graphdef=graphdef, params=params)


def _numpy_c0(model, docs, layer):
    from jaxedit.models import Probe

    total, count = 0.0, 0
    for d in docs:
        out = model.module(
            np.asarray([d], np.int32), None, Probe(key_layers=(layer,), stop_layer=layer)
        )
        k = np.asarray(out.keys[layer][0], np.float64)
        total = total + k.T @ k
        count += len(d)
    return total / count


def test_accumulation_matches_per_document_numpy(tiny):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 61, n).tolist() for n in (5, 70, 3, 130, 64, 1)]
    got, count = stats.collect_second_moments(tiny, docs, (0, 2), batch_tokens=256)
    assert count == sum(map(len, docs))
    for layer in (0, 2):
        np.testing.assert_allclose(got[layer], _numpy_c0(tiny, docs, layer), rtol=1e-4, atol=1e-6)


def test_cache_and_fingerprint(tiny, tmp_path):
    corpus.write_text_corpus([f"document {i} about things" for i in range(12)], tmp_path / "c.txt")
    first = stats.layer_stats(
        tiny, (1,), tmp_path / "c.txt", num_samples=10, cache_dir=tmp_path / "s"
    )
    files = list((tmp_path / "s").rglob("layer1_mom2.npz"))
    assert len(files) == 1
    again = stats.layer_stats(
        tiny, (1,), tmp_path / "c.txt", num_samples=10, cache_dir=tmp_path / "s"
    )
    np.testing.assert_array_equal(np.asarray(first.cov[1]), np.asarray(again.cov[1]))
    # Another sample count or other weights are another cache entry.
    stats.layer_stats(tiny, (1,), tmp_path / "c.txt", num_samples=11, cache_dir=tmp_path / "s")
    assert len(list((tmp_path / "s").rglob("layer1_mom2.npz"))) == 2
    other = tiny.replace(params=nnx.split(models.build(tiny.config, seed=1))[1])
    assert stats.model_fingerprint(other, 1) != stats.model_fingerprint(tiny, 1)
    # Layers after the last edited one do not change the fingerprint of C0 up to that layer.
    assert stats.model_fingerprint(tiny, 0) != stats.model_fingerprint(tiny, 1)


def test_memit_npz_import(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.normal(size=(50, 7)).astype(np.float32)
    np.savez(
        tmp_path / "model.layers.3.mlp.down_proj_float32_mom2_50.npz",
        **{"mom2.mom2": k.T @ k, "mom2.count": np.int64(50)},
    )  # MEMIT stores the sum
    found = stats.find_memit_stats(tmp_path)
    assert list(found) == [3]
    cov, count = stats.load_memit_npz(found[3])
    assert count == 50
    np.testing.assert_allclose(cov, k.T @ k / 50, rtol=1e-6)
    with pytest.raises(ValueError, match="mom2"):
        np.savez(tmp_path / "bad.npz", x=np.zeros(1))
        stats.load_memit_npz(tmp_path / "bad.npz")


def test_empty_corpus_is_an_error(tiny, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no documents"):
        stats.layer_stats(tiny, (1,), tmp_path / "empty.txt", num_samples=5)
