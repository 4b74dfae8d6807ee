"""`experiments/edit.py --mesh` and a two-process `edit.py` run give the single-device run
(issue 12). Marked `mesh` (`.ci/run`'s mesh pass); every subprocess sets its own device count and
is bounded in time.

A tiny GPT-2 whose widths divide 8, four requests in batches of two, `--evaluate=false`: the
checkpointed kernels and the stop steps in `batches.jsonl` of (a) one device, (b)
`--mesh=data:2,model:4` on 8 devices, (c) two processes × 4 devices over loopback with the same
mesh. In (c) only process 0 writes: `batches.jsonl` has each batch once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

import jaxedit
from jaxedit import checkpoint, corpus, models, testing
from jaxedit.lm import LanguageModel

pytestmark = pytest.mark.mesh
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
REQUESTS = [
    *testing.EDIT_REQUESTS,
    {
        "case_id": 9,
        "prompt": "{} plays the",
        "subject": "Carol King",
        "target_new": "piano",
        "target_true": "drums",
    },
    {
        "case_id": 10,
        "prompt": "The capital of {} is",
        "subject": "Freedonia",
        "target_new": "Paris",
        "target_true": "Rome",
    },
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from flax import nnx

    tok = testing.gpt2_tokenizer(testing.require_shared("data", "gpt2_tokenizer"))
    root = tmp_path_factory.mktemp("mesh_binary")
    cfg = testing.tiny_config(
        "gpt2",
        vocab_size=50264,  # a multiple of 8 (ids past the tokenizer's are never used)
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        num_kv_heads=4,
        head_dim=8,
        num_layers=4,
        bos_token_id=50256,
        eos_token_id=50256,
        max_position_embeddings=256,
    )
    graphdef, params = nnx.split(models.build(cfg))
    params = testing.sharpen(params, cfg.vocab_size)
    jaxedit.save_hf(LanguageModel(cfg, tok, graphdef, params), root / "model")
    docs = [f"Document {i} talks about cities, food and languages of the world." for i in range(30)]
    corpus.write_text_corpus(docs, root / "corpus.txt")
    (root / "requests.json").write_text(json.dumps(REQUESTS))
    return root


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _argv(root: Path, workdir: Path, *extra: str) -> list[str]:
    return testing.edit_command(
        REPO,
        root,
        f"--requests={root / 'requests.json'}",
        "--batch_size=2",
        "--evaluate=false",
        f"--workdir={workdir}",
        *extra,
    )


def _result(workdir: Path) -> tuple[dict[str, np.ndarray], list]:
    _, arrays, _ = checkpoint.restore(workdir / "checkpoint")
    lines = [json.loads(l) for l in (workdir / "batches.jsonl").read_text().splitlines()]
    return arrays, lines


def _compare(ref, got) -> None:
    (a, la), (b, lb) = ref, got
    assert [l["case_ids"] for l in lb] == [l["case_ids"] for l in la]  # each batch once
    assert [l["stop_steps"] for l in lb] == [l["stop_steps"] for l in la]
    names = [k for k in a if k.startswith(("kernel", "prev_kkt"))]
    assert names
    for k in names:
        rel = np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k])
        assert rel < 1e-5, (k, rel)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_edit_binary_on_a_mesh_and_two_processes(root, tmp_path):
    run = lambda argv, env: subprocess.run(  # noqa: E731
        argv, env=env, timeout=TIMEOUT_S, capture_output=True, text=True
    )
    single = run(_argv(root, tmp_path / "single"), _env(1))
    assert single.returncode == 0, single.stderr[-3000:]
    ref = _result(tmp_path / "single")

    meshed = run(_argv(root, tmp_path / "mesh", "--mesh=data:2,model:4"), _env(8))
    assert meshed.returncode == 0, meshed.stderr[-3000:]
    _compare(ref, _result(tmp_path / "mesh"))
    assert json.loads((tmp_path / "mesh" / "run.json").read_text())["mesh"] == {
        "data": 2,
        "model": 4,
    }

    addr = f"127.0.0.1:{_free_port()}"
    argv = lambda i: _argv(  # noqa: E731
        root,
        tmp_path / "hosts",
        "--mesh=data:2,model:4",
        f"--coordinator={addr}",
        "--num_processes=2",
        f"--process_id={i}",
    )
    procs = [
        subprocess.Popen(argv(i), env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "sequential edits" not in logs[1] and '"num_edits"' not in logs[1]  # process 0 logs
    _compare(ref, _result(tmp_path / "hosts"))
    run_json = json.loads((tmp_path / "hosts" / "run.json").read_text())
    assert run_json["processes"] == 2 and len(run_json["devices"]) == 8


def test_bad_mesh_flag_is_one_line(root, tmp_path):
    res = subprocess.run(
        _argv(root, tmp_path / "bad", "--mesh=data:3,model:4"),
        env=_env(8),
        timeout=TIMEOUT_S,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: --mesh='data:3,model:4'")
    assert not (tmp_path / "bad").exists()
