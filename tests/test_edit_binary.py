"""experiments/edit.py end to end on a tiny random model: outputs, dumps, export, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxedit
from conftest import require_shared, tiny_config
from jaxedit import corpus, models
from jaxedit.lm import LanguageModel

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = [
    {"case_id": 7, "prompt": "The favourite food of {} is", "subject": "Alice Smith",
     "target_new": "pizza", "target_true": "rice"},
    {"case_id": 8, "prompt": "{} lives in the city of", "subject": "Bob Jones",
     "target_new": "Madrid", "target_true": "Oslo"},
    {"case_id": 9, "prompt": "The language spoken by {} is", "subject": "Carol White",
     "target_new": "Greek", "target_true": "Dutch"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok_dir = require_shared("data", "gpt2_tokenizer")
    from transformers import GPT2Tokenizer
    from flax import nnx

    root = tmp_path_factory.mktemp("binary")
    tok = GPT2Tokenizer.from_pretrained(str(tok_dir))
    cfg = tiny_config("gpt2", vocab_size=50257, num_layers=4, bos_token_id=50256, eos_token_id=50256)
    graphdef, params = nnx.split(models.build(cfg))
    model = LanguageModel(config=cfg, tokenizer=tok, graphdef=graphdef, params=params)
    jaxedit.save_hf(model, root / "model")
    docs = [f"Document number {i} talks about cities, food and languages of the world." for i in range(30)]
    corpus.write_text_corpus(docs, root / "corpus.txt")
    (root / "requests.json").write_text(json.dumps(REQUESTS))
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "experiments" / "edit.py"), f"--config={ROOT / 'configs/tiny.py'}",
           f"--model={root / 'model'}", f"--stats_text={root / 'corpus.txt'}",
           f"--stats_dir={root / 'stats'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_run_writes_logs_dumps_and_model(setup):
    root = setup
    out = _run(root, f"--requests={root / 'requests.json'}", "--batch_size=2",
               f"--workdir={root / 'run'}", f"--dump_dir={root / 'dump'}", f"--export_dir={root / 'out'}")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(l) for l in (root / "run" / "batches.jsonl").read_text().splitlines()]
    assert [l["num_edits"] for l in lines] == [2, 3]
    assert set(lines[0]) >= {"search_time_s", "update_time_s", "stop_steps", "delta_norm", "weight_norm"}
    run = json.loads((root / "run" / "run.json").read_text())
    assert run["config"]["templates"][0] == ["{}"]
    dump = np.load(root / "dump" / "batch_000.npz")
    assert dump["case_ids"].tolist() == [7, 8]
    assert dump["targets"].shape == dump["target_init"].shape == (2, 30)
    assert dump["keys_L1"].shape == (43, 2) and dump["delta_L2"].shape == (30, 43)
    edited = jaxedit.load(root / "out")
    kernel = np.asarray(edited.params["transformer"]["h"][2]["mlp"]["c_proj"]["kernel"][...])
    original = np.asarray(jaxedit.load(root / "model").params["transformer"]["h"][2]["mlp"]["c_proj"]["kernel"][...])
    d1 = np.load(root / "dump" / "batch_001.npz")["delta_L2"]
    np.testing.assert_allclose(kernel - original, (dump["delta_L2"] + d1).T, atol=1e-5)


def test_bad_input_exits_nonzero_and_writes_no_model(setup):
    root = setup
    bad = REQUESTS + [{"prompt": "{} is made of", "subject": "Dan", "target_new": "gold",
                       "target_true": " Gold "}]
    (root / "bad.json").write_text(json.dumps(bad))
    out = _run(root, f"--requests={root / 'bad.json'}", f"--workdir={root / 'badrun'}",
               f"--export_dir={root / 'badout'}")
    assert out.returncode != 0
    assert "target" in out.stderr and "record 3" in out.stderr
    assert not (root / "badout").exists()
    assert not (root / "badrun" / "batches.jsonl").exists()
