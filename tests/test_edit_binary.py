"""experiments/edit.py end to end on a tiny random model: outputs, dumps, export, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import jaxedit
from jaxedit import corpus, models, testing
from jaxedit.lm import LanguageModel
from jaxedit.testing import require_shared, tiny_config

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = [
    *testing.EDIT_REQUESTS,
    {
        "case_id": 9,
        "prompt": "The language spoken by {} is",
        "subject": "Carol White",
        "target_new": "Greek",
        "target_true": "Dutch",
        "generation_prompts": ["Carol White often says that", "Carol White was born in"],
    },
]
PROTOCOL = (
    "--batch_size=1",
    "--downstream=sst2",
    "--downstream_every=2",
    "--downstream_tests=4",
    "--downstream_shots=1",
    "--activation_texts=4",
    "--generation_fraction=1.0",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok_dir = require_shared("data", "gpt2_tokenizer")
    from flax import nnx
    from transformers import GPT2Tokenizer

    root = tmp_path_factory.mktemp("binary")
    tok = GPT2Tokenizer.from_pretrained(str(tok_dir))
    cfg = tiny_config(
        "gpt2",
        vocab_size=50257,
        num_layers=4,
        bos_token_id=50256,
        eos_token_id=50256,
        max_position_embeddings=256,
    )
    graphdef, params = nnx.split(models.build(cfg))
    model = LanguageModel(config=cfg, tokenizer=tok, graphdef=graphdef, params=params)
    jaxedit.save_hf(model, root / "model")
    docs = [
        f"Document number {i} talks about cities, food and languages of the world."
        for i in range(30)
    ]
    corpus.write_text_corpus(docs, root / "corpus.txt")
    (root / "requests.json").write_text(json.dumps(REQUESTS))
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = testing.edit_command(ROOT, root, *args)
    env = {**os.environ, "JAXEDIT_DATA": str(require_shared("data"))}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def test_run_writes_logs_dumps_and_model(setup):
    root = setup
    out = _run(
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=2",
        f"--workdir={root / 'run'}",
        f"--dump_dir={root / 'dump'}",
        f"--export_dir={root / 'out'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(l) for l in (root / "run" / "batches.jsonl").read_text().splitlines()]
    assert [l["num_edits"] for l in lines] == [2, 3]
    assert set(lines[0]) >= {
        "search_time_s",
        "update_time_s",
        "stop_steps",
        "delta_norm",
        "weight_norm",
    }
    run = json.loads((root / "run" / "run.json").read_text())
    assert run["config"]["templates"][0] == ["{}"]
    dump = np.load(root / "dump" / "batch_000.npz")
    assert dump["case_ids"].tolist() == [7, 8]
    assert dump["targets"].shape == dump["target_init"].shape == (2, 30)
    assert dump["keys_L1"].shape == (43, 2) and dump["delta_L2"].shape == (30, 43)
    edited = jaxedit.load(root / "out")
    kernel = np.asarray(edited.params["transformer"]["h"][2]["mlp"]["c_proj"]["kernel"][...])
    original = np.asarray(
        jaxedit.load(root / "model").params["transformer"]["h"][2]["mlp"]["c_proj"]["kernel"][...]
    )
    d1 = np.load(root / "dump" / "batch_001.npz")["delta_L2"]
    np.testing.assert_allclose(kernel - original, (dump["delta_L2"] + d1).T, atol=1e-5)


def test_config_override_is_recorded_in_run_json(setup):
    root = setup
    out = _run(
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=2",
        "--max_batches=1",
        "--evaluate=false",
        "--config.search.lr=0.1",
        "--config.solve.norm_lambda=2",
        f"--workdir={root / 'override'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((root / "override" / "run.json").read_text())
    assert run["config"]["search"]["lr"] == 0.1
    assert run["config"]["solve"]["norm_lambda"] == 2.0


@pytest.mark.slow  # an edit.py run with every new measure (≈ 1 min on 2 cores)
def test_heldout_drift_retention_and_final_intervals(setup):
    """--heldout_text / --drift / --retention_every: heldout.jsonl starts at the unedited model
    (KL 0, agreement 1), drift after the edits is > 0; retention = ES/PS of each batch's records on
    the model at that point (checked against the exported final model); final.json carries CIs
    over records and the paired after − before."""
    from jaxedit import metrics
    from jaxedit import requests as requests_lib

    root = setup
    heldout_text = root / "heldout.txt"
    heldout_text.write_text(
        "\n\n".join(f"Held-out paragraph {i} is about rivers, music and trains." for i in range(8))
    )
    out = _run(
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=1",
        f"--heldout_text={heldout_text}",
        "--heldout_docs=8",
        "--retention_every=2",
        "--retention_sample=0",
        "--downstream_every=3",
        f"--workdir={root / 'degradation'}",
        f"--export_dir={root / 'degradation_model'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = root / "degradation"
    held = [json.loads(l) for l in (run / "heldout.jsonl").read_text().splitlines()]
    assert [h["batch"] for h in held] == [-1, 2]
    assert abs(held[0]["kl"]) < 1e-6 and held[0]["top1_agreement"] == 1.0
    assert held[1]["kl"] > 0 and held[1]["nll_ci"][0] <= held[1]["nll"] <= held[1]["nll_ci"][1]
    assert held[0]["docs"] == 8 and held[0]["unit"] == "document"
    ret = [json.loads(l) for l in (run / "retention.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in ret] == [1, 2]  # every 2 batches, and after the last
    assert [len(r["batches"]) for r in ret] == [2, 3]
    final_model = jaxedit.load(root / "degradation_model")
    reqs = requests_lib.load_requests(root / "requests.json")
    for b, row in enumerate(ret[-1]["batches"]):
        assert row["case_ids"] == [reqs[b].case_id]
        want = metrics.counterfact_scores(final_model, [reqs[b]])["scores"]
        np.testing.assert_equal([row["ES"], row["PS"]], [want["ES"], want["PS"]])  # PS: NaN
    # The newest batch's retention is its own score right after it was written.
    lines = [json.loads(l) for l in (run / "batches.jsonl").read_text().splitlines()]
    assert ret[-1]["batches"][-1]["ES"] == lines[-1]["eval"]["ES"]
    final = json.loads((run / "final.json").read_text())
    assert final["ci_unit"] == "record"
    for k in ("ES",):  # (plain requests have rewrite prompts only: PS, NS, S are NaN)
        lo, hi = final["after_ci"][k]
        assert lo <= final["after"][k] <= hi
        assert set(final["after_minus_before"][k]) == {"value", "ci", "significant"}
    # Per-unit values for paired comparisons of runs: records, documents, retention records.
    rec = final["after_records"]
    assert rec["case_ids"] == [r.case_id for r in reqs] and len(rec["ES"]) == len(reqs)
    assert np.mean(rec["ES"]) * 100 == pytest.approx(final["after"]["ES"])
    assert len(held[1]["per_doc"]["nll"]) == 8
    assert sum(held[1]["per_doc"]["count"]) == held[1]["tokens"]
    assert ret[-1]["batches"][0]["records"]["ES"] == [ret[-1]["batches"][0]["ES"] / 100]
    # GE (one record has generation prompts) has its CI and the paired difference too.
    lo, hi = final["after_ci"]["GE"]
    assert lo <= final["after"]["GE"] <= hi
    assert final["after_minus_before"]["GE"]["n"] == 1


def test_bad_input_exits_nonzero_and_writes_no_model(setup):
    root = setup
    bad = [
        *REQUESTS,
        {
            "prompt": "{} is made of",
            "subject": "Dan",
            "target_new": "gold",
            "target_true": " Gold ",
        },
    ]
    (root / "bad.json").write_text(json.dumps(bad))
    out = _run(
        root,
        f"--requests={root / 'bad.json'}",
        f"--workdir={root / 'badrun'}",
        f"--export_dir={root / 'badout'}",
    )
    assert out.returncode != 0
    assert "target" in out.stderr and "record 3" in out.stderr
    assert not (root / "badout").exists()
    assert not (root / "badrun" / "batches.jsonl").exists()


def _kernels(path: Path) -> list[np.ndarray]:
    params = jaxedit.load(path).params["transformer"]["h"]
    return [np.asarray(params[i]["mlp"]["c_proj"]["kernel"][...]) for i in range(4)]


def _strip_times(obj):
    """Everything but wall-clock times (which differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if "time" not in k}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


# six binary runs (≈ 3 min on 2 cores); CI runs it (.ci/run: -m slow)
@pytest.mark.slow
def test_protocol_resumes_without_losing_or_repeating_edits(setup):
    """The paper's protocol (baseline, per-batch eval, downstream every 2 batches, activation
    shares, final metrics with GE): a run stopped after one batch and resumed equals an
    uninterrupted one."""
    root = setup
    common = (f"--requests={root / 'requests.json'}", *PROTOCOL)
    full = _run(root, *common, f"--workdir={root / 'full'}", f"--export_dir={root / 'full_out'}")
    assert full.returncode == 0, full.stderr[-3000:]
    part = _run(root, *common, f"--workdir={root / 'part'}", "--max_batches=1")
    assert part.returncode == 0, part.stderr[-3000:]
    assert not (root / "part" / "final.json").exists()
    # Simulate a crash after the next batch's log line but before its checkpoint: the line is
    # redone.
    with open(root / "part" / "batches.jsonl", "a") as f:
        f.write(json.dumps({"batch": 1, "num_edits": 99}) + "\n")
    rest = _run(root, *common, f"--workdir={root / 'part'}", f"--export_dir={root / 'part_out'}")
    assert rest.returncode == 0, rest.stderr[-3000:]
    for a, b in zip(_kernels(root / "full_out"), _kernels(root / "part_out")):
        np.testing.assert_array_equal(a, b)

    def read(run, name):
        return [json.loads(l) for l in (root / run / name).read_text().splitlines()]

    assert [l["num_edits"] for l in read("part", "batches.jsonl")] == [1, 2, 3]
    assert _strip_times(read("full", "batches.jsonl")) == _strip_times(
        read("part", "batches.jsonl")
    )
    down = read("full", "downstream.jsonl")
    assert [d["num_edits"] for d in down] == [0, 2, 3]  # baseline, every 2 batches, the end
    assert set(down[1]["tasks"]["sst2"]) >= {"f1", "f1_new", "mcc", "invalid"}
    # The likelihood protocol (the default): per-item predictions, CIs over items, and from the
    # first edited point on the paired difference from the unedited model and McNemar's test.
    base_sst, later = down[0]["tasks"]["sst2"], down[1]["tasks"]["sst2"]
    assert len(base_sst["items"]["preds"]) == 4 and "difference" not in base_sst["power"]
    assert later["items"]["labels"] == base_sst["items"]["labels"]
    assert set(later["power"]["difference"]) == {"accuracy", "f1", "mcc"}
    assert 0.0 <= later["power"]["mcnemar"]["p"] <= 1.0
    assert _strip_times(down) == _strip_times(read("part", "downstream.jsonl"))
    acts = read("full", "activation.jsonl")
    assert [a["num_edits"] for a in acts] == [0, 2, 3] and len(acts[0]["mlp_share"]) == 4
    line = read("full", "batches.jsonl")[0]
    assert set(line["eval"]) >= {"ES", "PS", "NS", "S"} and set(line["eval_before"]) >= {"ES", "NS"}
    assert len(line["layer_norms"]) == 4 and set(line["distance_from_original"]) == {"1", "2"}
    final = json.loads((root / "full" / "final.json").read_text())
    assert final["num_edits"] == 3 and final["evaluated"]["num_records"] == 3
    assert final["after"]["GE"] > 0 and final["before"]["GE"] > 0
    assert _strip_times(final) == _strip_times(
        json.loads((root / "part" / "final.json").read_text())
    )
    # Another configuration in the same directory is refused, not mixed in.
    other = _run(root, *common, f"--workdir={root / 'full'}", "--method=MEMIT_seq")
    assert other.returncode != 0 and "another run" in other.stderr
    # A reused baseline must match; snapshots can be re-evaluated with a task added later.
    again = _run(
        root,
        *common,
        f"--workdir={root / 'reuse'}",
        f"--baseline={root / 'full' / 'baseline.json'}",
        "--max_batches=0",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    added = _run(
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=1",
        "--downstream=sst2,cola",
        *PROTOCOL[2:],
        f"--workdir={root / 'full'}",
        "--evaluate_snapshots",
    )
    assert added.returncode == 0, added.stderr[-3000:]
    rows = read("full", "downstream.jsonl")
    assert [d["num_edits"] for d in rows] == [0, 2, 3] and all("cola" in d["tasks"] for d in rows)
    assert _strip_times(rows)[1]["tasks"]["sst2"] == _strip_times(down)[1]["tasks"]["sst2"]


@pytest.mark.slow  # two small edit.py batches with the teacher pass (≈ 30 s on 2 cores)
def test_official_lti_json_templates_and_dumps(setup):
    """The check issue 14 asks for outside the repository, on the tiny model: an official-style
    MEMIT_lti hparams JSON (missing update_norm_lambda / calculate_norms, defaulted and reported),
    fixed templates and --dump_dir give an LTI run whose dumps hold the targets and stop steps."""
    root = setup
    hp = {
        "layers": [1, 2],
        "clamp_norm_factor": 4,
        "layer_selection": "all",
        "fact_token": "subject_last",
        "v_num_grad_steps": 6,
        "v_lr": 0.5,
        "v_loss_layer": 3,
        "v_weight_decay": 1e-3,
        "mid_kl_factor": 0.0425,
        "last_kl_factor": 0.0725,
        "nll_factor": 0.125,
        "mom2_adjustment": True,
        "mom2_update_weight": 15000,
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100,
        "mom2_dtype": "float32",
        "midlayers": [3],
        "constr_pos": "subject",
        "add_prev_edits": True,
    }
    (root / "memit_lti.json").write_text(json.dumps(hp))
    (root / "templates.json").write_text(json.dumps([["{}"], ["The news says. {}"]]))
    out = _run(
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=2",
        "--evaluate=false",
        f"--hparams_json={root / 'memit_lti.json'}",
        "--method=MEMIT_seq",
        f"--templates={root / 'templates.json'}",
        f"--workdir={root / 'lti'}",
        f"--dump_dir={root / 'lti_dump'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "update_norm_lambda" in out.stderr  # the defaulting is reported
    run = json.loads((root / "lti" / "run.json").read_text())
    search = run["config"]["search"]
    assert search["lti"] is True and search["midlayer"] == 3 and search["num_steps"] == 6
    assert search["teacher_positions"] == "official" and search["kl_factor"] == 0.0
    assert run["label"] == "MEMIT+LTI"
    assert run["config"]["templates"] == [["{}"], ["The news says. {}"]]
    dump = np.load(root / "lti_dump" / "batch_000.npz")
    assert dump["targets"].shape == (2, 30) and dump["stop_steps"].shape == (2,)
    assert (dump["stop_steps"] <= 6).all()
