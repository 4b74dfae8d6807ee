"""The real pretrained model: golden logits from transformers, a factual completion, export
parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxedit import Probe
from jaxedit.testing import require_shared


def test_paris(smollm2):
    assert smollm2.generate(["The capital of France is"], max_new_tokens=4)[0].startswith(" Paris")


def test_golden_logits_and_hidden_states(smollm2):
    golden = require_shared("golden")
    prompts = json.loads((golden / "meta.json").read_text())["logit_prompts"]
    ref = np.load(golden / "model_logits.npz")
    logits, lengths = smollm2.logits(prompts)
    module = smollm2.module
    for i, prompt in enumerate(prompts):
        ids = ref[f"prompt{i}_input_ids"]
        assert smollm2.encode([prompt])[0][0, : lengths[i]].tolist() == ids.tolist()
        err = np.abs(logits[i, : lengths[i]] - ref[f"prompt{i}_logits"]).max()
        assert err <= 1e-3, (prompt, err)
        out = module(ids[None], None, Probe(resid_layers=tuple(range(30)), stop_layer=29))
        hidden = ref[f"prompt{i}_hidden_states"]
        for layer in (0, 8, 28):  # [30] is after the final norm
            np.testing.assert_allclose(
                out.residuals[layer][0], hidden[layer + 1], atol=2e-3, rtol=1e-3
            )


def test_export_loads_in_transformers(smollm2, tmp_path):
    """The exported directory, run by transformers, reproduces the golden logits (which transformers
    computed from its own dequantization of the same GGUF): the export is weight-exact. jaxedit's
    own forward agrees with transformers to float32 rounding (~1.5e-4 on logits of magnitude ~20,
    i.e. 1e-5 relative, accumulated over 30 layers: a single q_proj matmul already differs by 2
    ulp)."""
    torch = pytest.importorskip("torch", reason="torch not installed: pip install -e '.[parity]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jaxedit

    golden = require_shared("golden")
    ref = np.load(golden / "model_logits.npz")
    prompts = json.loads((golden / "meta.json").read_text())["logit_prompts"]
    out = jaxedit.save_hf(smollm2, tmp_path / "smollm2")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ours, lengths = smollm2.logits(prompts)
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == ref[f"prompt{i}_input_ids"].tolist()
        with torch.no_grad():
            theirs = hf(ids).logits[0].numpy()
        assert np.abs(theirs - ref[f"prompt{i}_logits"]).max() <= 1e-4
        assert np.abs(ours[i, : lengths[i]] - theirs).max() <= 1e-3
    # The exported directory loads back into jaxedit bit-exactly.
    again = jaxedit.load(out)
    a = jaxedit.convert.state_to_flat(smollm2.params)
    b = jaxedit.convert.state_to_flat(again.params)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ≈ 1-2 min on 2 cores: 200 paragraphs through both implementations
def test_heldout_perplexity_matches_transformers(smollm2, tmp_path):
    """Perplexity of the unedited SmolLM2 on the first 200 WikiText-2 validation paragraphs
    (`jaxedit.heldout`, the figure in WORKSPACE.md) equals transformers' on the exported model to
    1e-4 relative (per-document mean losses × predictions, summed)."""
    torch = pytest.importorskip("torch", reason="torch not installed: pip install -e '.[parity]'")
    from transformers import AutoModelForCausalLM

    import jaxedit
    from jaxedit import heldout

    text = require_shared("data", "text", "wikitext-2.valid.tokens.txt")
    hd = heldout.load(smollm2.tokenizer, text, num_docs=200, max_length=1024)
    ours = heldout.measure(smollm2, hd)
    hf = AutoModelForCausalLM.from_pretrained(jaxedit.save_hf(smollm2, tmp_path / "m")).eval()
    total = 0.0
    with torch.no_grad():
        for d in hd.docs:
            ids = torch.tensor(d[None, :].astype(np.int64))
            total += float(hf(input_ids=ids, labels=ids).loss) * (len(d) - 1)
    theirs = float(np.exp(total / hd.predictions))
    assert ours["tokens"] == hd.predictions
    assert ours["perplexity"] == pytest.approx(theirs, rel=1e-4), (ours["perplexity"], theirs)
