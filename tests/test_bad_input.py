"""Bad input to every binary (edit, evaluate, summarize, benchmark, demo, tune_smollm2): exit status
2, one `error:` message that names the input and the fix, no traceback, and nothing half-written
(no run directory, exported model or output file; an earlier run's directory unchanged).

Each case runs the real binary (`sys.executable experiments/<binary>.py ...`) on small local files:
a tiny random GPT-2 written with `jaxedit.save_hf`, tiny corpora and request files. Most cases fail
before the model is loaded, so one costs little more than the imports (~2 s). The selected cases
run in a module fixture (`results`), one process per core at a time, and each test checks its own
case. Cases marked `needs="tokenizer"` load a model with the GPT-2 tokenizer of the shared data
folder (skipped without it); `needs="run"` ones start from a resumable run directory made once.
The binaries see an empty data folder, an empty cache and an offline Hugging Face Hub.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import jaxedit
from jaxedit import checkpoint, corpus, stats, testing
from jaxedit.errors import CorruptFileError

ROOT = Path(__file__).resolve().parents[1]

REQUESTS = testing.EDIT_REQUESTS


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind of bad input. `args` may use {repo} (the checkout), {root} (the shared inputs) and
    {dir} (this case's own folder, where its outputs would go)."""

    id: str
    binary: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the error message (the input it names)
    absent: tuple[str, ...] = ()  # paths under {dir} that must not exist afterwards
    present: tuple[str, ...] = ()  # paths under {dir} that must still exist afterwards
    intact: str = ""  # a folder under {dir} whose files must be byte-identical afterwards
    forbid: tuple[str, ...] = ()  # substrings the message must not hold
    fix: bool = True  # the message says what to do (one of FIX_WORDS)
    needs: str = ""  # "tokenizer": the shared GPT-2 tokenizer; "run": a resumable run directory
    setup: Callable[[Path, Path], None] | None = None  # (root, dir), before the binary runs


# How the messages say what to do: "(fix: ...)", "Fix: ..." (request records), the expected form of
# a config value, the range it must be in, the valid names.
FIX_WORDS = ("fix", "expected", "must be", "valid names", "did you mean")

EDIT = (
    "--config={repo}/configs/tiny.py",
    "--model={root}/model_notok",
    "--stats_text={root}/corpus.txt",
    "--stats_dir={root}/stats",
    "--requests={root}/requests.json",
    "--workdir={dir}/run",
    "--export_dir={dir}/export",
    "--evaluate=false",
    "--activation_texts=0",
)
EDIT_OUT = ("run", "export")
# The resumable run (and the cases on it) use the model with a tokenizer, batches of one.
RESUME = (*EDIT, "--model={root}/model", "--batch_size=1")


def edit(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    return Case(id, "edit", (*EDIT, *args), expect, absent=kw.pop("absent", EDIT_OUT), **kw)


def evaluate(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    base = ("--model={root}/model_notok", "--out={dir}/eval.json")
    return Case(id, "evaluate", (*base, *args), expect, absent=("eval.json",), **kw)


def summarize(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    return Case(id, "summarize", ("--out={dir}/summary", *args), expect, absent=("summary",), **kw)


def benchmark(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    base = ("--out={dir}/bench.json", "--golden={root}/golden.json")
    return Case(id, "benchmark", (*base, *args), expect, absent=("bench.json",), **kw)


def demo(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    return Case(id, "demo", args, expect, **kw)


def tune(id: str, *args: str, expect: tuple[str, ...], **kw) -> Case:
    base = ("--out={dir}/tune.jsonl",)
    return Case(id, "tune_smollm2", (*base, *args), expect, absent=("tune.jsonl",), **kw)


def _copy_run(root: Path, d: Path) -> Path:
    shutil.copytree(root / "resumable", d / "run")
    return d / "run"


def _copy(root: Path, d: Path) -> None:
    _copy_run(root, d)


def _cut(name: str, keep: int) -> Callable[[Path, Path], None]:
    """Setup: a copy of the resumable run whose file `name` is cut to its first `keep` bytes."""

    def setup(root: Path, d: Path) -> None:
        path = _copy_run(root, d) / name
        path.write_bytes(path.read_bytes()[:keep])

    return setup


def _old_checkpoint_cut(root: Path, d: Path) -> None:
    """Setup: the resumable run in the earlier format (checkpoint.npz), that file cut short."""
    run = _copy_run(root, d)
    found = checkpoint.restore(run / "checkpoint")
    assert found is not None
    _, arrays, meta = found
    shutil.rmtree(run / "checkpoint")
    np.savez(run / "checkpoint.npz", batches_done=np.asarray(meta["batches_done"]), **arrays)
    path = run / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:300])


def _bad_middle_line(root: Path, d: Path) -> None:
    path = _copy_run(root, d) / "batches.jsonl"
    path.write_text('{"batch": 0, "num_edits"\n' + path.read_text())


def _user_folder(root: Path, d: Path) -> None:
    (d / "run").mkdir()
    (d / "run" / "notes.txt").write_text("the user's own file")


CASES = [
    # ---- edit.py: flags
    edit("edit_num_edits_zero", "--num_edits=0", expect=("--num_edits=0",)),
    edit("edit_batch_size_zero", "--batch_size=0", expect=("--batch_size=0",)),
    edit("edit_flag_not_a_number", "--batch_size=ten", expect=("--batch_size", "ten")),
    edit("edit_fraction_out_of_range", "--final_fraction=1.5", expect=("--final_fraction=1.5",)),
    edit(
        "edit_requests_and_data_path",
        "--data_path={root}/requests.json",
        expect=("--requests", "--data_path"),
    ),
    edit("edit_workdir_is_a_file", "--workdir={root}/corpus.txt", expect=("--workdir=",)),
    edit("edit_export_dir_is_a_file", "--export_dir={root}/corpus.txt", expect=("--export_dir=",)),
    edit(
        "edit_downstream_unknown_task",
        "--downstream=glue9",
        expect=("glue9", "valid names"),
    ),
    edit(
        "edit_downstream_data_missing",
        "--downstream=sst2",
        "--downstream_data={root}/data",
        expect=("sst2.json",),
    ),
    edit(
        "edit_generation_pool_missing",
        "--generation_pool={root}/nope.json",
        expect=("--generation_pool", "nope.json"),
    ),
    edit("edit_stats_npz_missing", "--stats_npz={root}/nope", expect=("--stats_npz",)),
    # ---- edit.py: the editing config
    edit("edit_config_file_missing", "--config={root}/nope.py", expect=("nope.py",)),
    edit("edit_config_without_get_config", "--config={root}/noget.py", expect=("get_config",)),
    edit("edit_config_value_not_a_number", "--config.search.lr=abc", expect=("search.lr", "abc")),
    edit(
        "edit_config_value_out_of_range",
        "--config.search.lr=-1",
        expect=("search.lr", "must be > 0"),
    ),
    edit("edit_config_unknown_field", "--config.search.nope=1", expect=("config.search.nope",)),
    edit("edit_hparams_json_missing", "--hparams_json={root}/nope.json", expect=("nope.json",)),
    edit("edit_templates_malformed", "--templates={root}/bad.json", expect=("bad.json", "JSON")),
    # ---- edit.py: requests and corpus
    edit(
        "edit_data_path_missing",
        "--requests=",
        "--data_path={root}/nope.json",
        expect=("nope.json", "does not exist"),
    ),
    edit("edit_requests_empty_list", "--requests={root}/empty.json", expect=("no records",)),
    edit(
        "edit_requests_malformed_json",
        "--requests={root}/bad.json",
        expect=("bad.json", "not valid JSON"),
    ),
    edit(
        "edit_requests_malformed_jsonl",
        "--requests={root}/bad.jsonl",
        expect=("bad.jsonl", "line 2"),
    ),
    edit(
        "edit_requests_missing_field",
        "--requests={root}/no_target.json",
        expect=("no_target.json", "record 0", "target_new"),
    ),
    edit("edit_corpus_missing", "--stats_text={root}/nope.txt", expect=("nope.txt",)),
    edit(
        "edit_corpus_empty",
        "--stats_text={root}/empty.txt",
        expect=("empty.txt", "no documents"),
    ),
    edit(
        "edit_baseline_missing", "--baseline={root}/nope.json", expect=("--baseline", "nope.json")
    ),
    # ---- edit.py: the model (a wrong path, unsupported, cut-short or corrupt files, offline hub)
    edit(
        "edit_model_unknown",
        "--model=no-such-model",
        expect=("no-such-model", "not a preset"),
    ),
    edit(
        "edit_model_hub_offline",
        "--model=nonexistent-org/nonexistent-model",
        expect=("nonexistent-org/nonexistent-model", "offline"),
    ),
    edit(
        "edit_model_unsupported_architecture",
        "--model={root}/bert",
        expect=("bert", "model_type='bert'", "not supported"),
        forbid=("safetensors",),
    ),
    edit(
        "edit_model_without_weights",
        "--model={root}/no_weights",
        expect=("no_weights", "no model.safetensors"),
        fix=False,  # says how to convert a pytorch_model.bin
    ),
    edit(
        "edit_model_truncated_safetensors",
        "--model={root}/truncated",
        expect=("model.safetensors", "truncated"),
    ),
    edit(
        "edit_model_truncated_gguf",
        "--model={root}/truncated.gguf",
        expect=("truncated.gguf", "truncated GGUF"),
    ),
    edit("edit_model_not_gguf", "--model={root}/not.gguf", expect=("not.gguf", "not a GGUF")),
    edit(
        "edit_model_without_tokenizer",
        "--model={root}/model_notok",
        expect=("model_notok", "no tokenizer"),
    ),
    # ---- edit.py: after the model is loaded (these need its tokenizer)
    edit(
        "edit_layers_beyond_model",
        "--model={root}/model",
        "--config.layers=9",
        expect=("layers=(9,)", "0..3"),
        needs="tokenizer",
    ),
    edit(
        "edit_request_too_long",
        "--model={root}/model",
        "--requests={root}/too_long.json",
        expect=("too_long.json", "tokens"),
        needs="tokenizer",
    ),
    edit(
        # fails while computing the baseline, after the run directory was written: it is removed
        "edit_fresh_run_fails_midway",
        "--model={root}/model",
        "--downstream=sst2",
        "--downstream_data={root}/long_downstream",
        "--downstream_tests=4",
        "--downstream_shots=1",
        expect=("sst2", "exceeds the context"),
        needs="tokenizer",
    ),
    edit(
        # the same in a folder the user made: only the run's files are removed
        "edit_fresh_run_fails_midway_in_user_folder",
        "--model={root}/model",
        "--downstream=sst2",
        "--downstream_data={root}/long_downstream",
        "--downstream_tests=4",
        "--downstream_shots=1",
        expect=("exceeds the context",),
        absent=("run/run.json", "run/baseline.json", "export"),
        present=("run/notes.txt",),
        needs="tokenizer",
        setup=_user_folder,
    ),
    # ---- edit.py: an earlier run in --workdir is never changed
    Case(
        "edit_workdir_holds_another_config",
        "edit",
        (*RESUME, "--config.search.lr=0.3"),
        ("another run", "config", "--overwrite"),
        intact="run",
        needs="run",
        setup=_copy,
    ),
    Case(
        "edit_corrupt_checkpoint",
        "edit",
        RESUME,
        ("checkpoint step", "checkpoint/1 is not readable", "fix: delete it"),
        intact="run",
        needs="run",
        setup=_cut("checkpoint/1/arrays/_METADATA", 40),
    ),
    Case(
        # a run directory of the format before issue 12 (checkpoint.npz), cut short
        "edit_corrupt_old_checkpoint",
        "edit",
        RESUME,
        ("checkpoint.npz", "not a readable .npz"),
        intact="run",
        needs="run",
        setup=_old_checkpoint_cut,
    ),
    Case(
        "edit_corrupt_run_json",
        "edit",
        RESUME,
        ("run.json", "not valid JSON"),
        intact="run",
        needs="run",
        setup=_cut("run.json", 40),
    ),
    Case(
        "edit_corrupt_baseline_json",
        "edit",
        RESUME,
        ("baseline.json", "not valid JSON"),
        intact="run",
        needs="run",
        setup=_cut("baseline.json", 40),
    ),
    Case(
        "edit_corrupt_batches_jsonl",
        "edit",
        RESUME,
        ("batches.jsonl", "line 1"),
        intact="run",
        needs="run",
        setup=_bad_middle_line,
    ),
    # ---- evaluate.py
    evaluate("evaluate_nothing_to_evaluate", expect=("nothing to evaluate",)),
    evaluate("evaluate_data_path_missing", "--data_path={root}/nope.json", expect=("nope.json",)),
    evaluate(
        "evaluate_perplexity_text_missing",
        "--perplexity_text={root}/nope.txt",
        expect=("--perplexity_text", "nope.txt", "no such file"),
    ),
    evaluate(
        "evaluate_data_file_malformed",
        "--data_path={root}/bad.json",
        expect=("bad.json", "not valid JSON"),
    ),
    evaluate(
        "evaluate_dataset_does_not_match_file",
        "--dataset=zsre",
        "--data_path={root}/requests.json",
        expect=("--dataset=zsre", "requests.json", "plain"),
    ),
    evaluate(
        "evaluate_num_records_zero",
        "--data_path={root}/requests.json",
        "--num_records=0",
        expect=("--num_records=0",),
    ),
    evaluate(
        "evaluate_downstream_unknown_task",
        "--downstream=glue9",
        expect=("glue9", "valid names"),
    ),
    evaluate(
        "evaluate_downstream_too_few_items",
        "--downstream=sst2",
        "--downstream_data={root}/small_downstream",
        "--num_tests=50",
        expect=("sst2", "num_tests=50", "2 test items"),
    ),
    evaluate(
        "evaluate_out_is_a_directory",
        "--data_path={root}/requests.json",
        "--out={root}",
        expect=("--out=",),
    ),
    evaluate(
        "evaluate_model_truncated_safetensors",
        "--data_path={root}/requests.json",
        "--model={root}/truncated",
        expect=("model.safetensors", "truncated"),
    ),
    # ---- summarize.py
    summarize("summarize_runs_match_nothing", "--runs={root}/nothing*", expect=("matches no",)),
    summarize(
        "summarize_not_a_run_directory",
        "--runs={root}/data",
        expect=("no run directory", "data"),
    ),
    summarize(
        "summarize_out_is_a_file",
        "--runs={root}/fake_run",
        "--out={root}/corpus.txt",
        expect=("--out=",),
    ),
    # ---- benchmark.py
    benchmark(
        "benchmark_golden_missing",
        "--golden={root}/nope.json",
        expect=("golden file", "nope.json", "--golden"),
    ),
    benchmark(
        "benchmark_golden_without_templates",
        "--golden={root}/requests.json",
        expect=("requests.json", "context_templates"),
    ),
    benchmark("benchmark_unknown_method", "--methods=FOO", expect=("FOO", "--methods")),
    benchmark("benchmark_bad_batch_size", "--batch_sizes=ten", expect=("--batch_sizes", "ten")),
    # ---- demo.py
    demo("demo_model_unknown", "--model=no-such-model", expect=("no-such-model",)),
    demo(
        "demo_model_truncated_gguf",
        "--model={root}/truncated.gguf",
        expect=("truncated.gguf", "truncated GGUF"),
    ),
    demo("demo_max_new_tokens_zero", "--max_new_tokens=0", expect=("--max_new_tokens=0",)),
    # ---- tune_smollm2.py
    tune(
        "tune_unknown_setting_field",
        "--settings=a:solve.nope=3",
        expect=("setting 'a'", "solve.nope"),
        fix=False,  # names the field that does not exist
    ),
    tune(
        "tune_bad_setting_value",
        "--settings=a:solve.cov_weight=abc",
        expect=("setting 'a'", "cov_weight", "abc"),
    ),
]


def _write_gguf(path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((61, 30), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every input file of the cases (the model with a tokenizer only when the shared GPT-2
    tokenizer is there)."""
    root = tmp_path_factory.mktemp("bad_input")
    for name in ("data", "cache", "shared", "hf"):
        (root / name).mkdir()
    model = testing.tiny_model("gpt2", num_layers=4)
    jaxedit.save_hf(model, root / "model_notok")
    shutil.copytree(root / "model_notok", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["Bert"]}')
    (root / "no_weights").mkdir()
    shutil.copy(root / "model_notok" / "config.json", root / "no_weights")
    _write_gguf(root / "model.gguf")
    data = (root / "model.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(data[:-100])
    (root / "not.gguf").write_text("hello, not a GGUF file")

    docs = [f"Document {i} talks about cities, food and languages." for i in range(30)]
    corpus.write_text_corpus(docs, root / "corpus.txt")
    (root / "empty.txt").write_text("\n\n\n")
    (root / "requests.json").write_text(json.dumps(REQUESTS))
    (root / "empty.json").write_text("[]")
    (root / "bad.json").write_text('{"requests": [')
    (root / "bad.jsonl").write_text(json.dumps(REQUESTS[0]) + "\n{oops\n")
    no_target = [{k: v for k, v in REQUESTS[0].items() if k != "target_new"}]
    (root / "no_target.json").write_text(json.dumps(no_target))
    long = {**REQUESTS[0], "prompt": "word " * 300 + "{} likes"}
    (root / "too_long.json").write_text(json.dumps([long]))
    (root / "noget.py").write_text("x = 1\n")
    (root / "golden.json").write_text(json.dumps({"context_templates": [["{}"]]}))
    (root / "fake_run").mkdir()
    (root / "fake_run" / "run.json").write_text("{}")
    for name, n, text in (
        ("small_downstream", 12, "a fine film"),
        ("long_downstream", 20, "word " * 400),
    ):
        (root / name).mkdir()
        items = [{"sentence": text if i >= 10 else "ok", "label": i % 2} for i in range(n)]
        (root / name / "sst2.json").write_text(json.dumps(items))

    tok_dir = testing.shared_dir() / "data" / "gpt2_tokenizer"
    if tok_dir.exists():
        tok = testing.gpt2_tokenizer(tok_dir)
        jaxedit.save_hf(
            testing.tiny_model("gpt2", tok, max_position_embeddings=256), root / "model"
        )
    return root


def _env(root: Path, case: Case) -> dict[str, str]:
    data = root / "data"
    if case.needs:  # a real run reads the generation-prompt pool of the shared data folder
        data = testing.shared_dir() / "data"
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAXEDIT_DATA": str(data),
        "JAXEDIT_SHARED": str(root / "shared"),
        "JAXEDIT_CACHE": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
    }


def _command(case: Case, root: Path, d: Path, args=None) -> list[str]:
    fill = {"repo": ROOT, "root": root, "dir": d}
    return [
        sys.executable,
        str(ROOT / "experiments" / f"{case.binary}.py"),
        *(a.format(**fill) for a in (case.args if args is None else args)),
    ]


def _digest(folder: Path) -> dict[str, str]:
    """Every file's hash but the run-directory lock's (it holds the pid of the last process that
    took it, which a refused resume does too)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@dataclasses.dataclass
class Result:
    proc: subprocess.CompletedProcess
    dir: Path
    seconds: float
    before: dict | None = None
    after: dict | None = None


def _make_resumable_run(root: Path) -> None:
    """A run directory stopped after its first batch (run.json, baseline.json, batches.jsonl,
    checkpoint/1/): what the `needs="run"` cases copy and damage."""
    case = Case("resumable", "edit", (*RESUME, "--workdir={root}/resumable", "--max_batches=1"), ())
    out = subprocess.run(
        _command(case, root, root),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(root, case),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert checkpoint.steps(root / "resumable" / "checkpoint") == [1]


@pytest.fixture(scope="module")
def results(request, inputs) -> dict[str, Result | str]:
    """Runs the cases selected in this session, in parallel; a case id -> its `Result`, or the
    reason it is skipped."""
    root = inputs
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    }
    cases = [c for c in CASES if c.id in selected]
    out: dict[str, Result | str] = {}
    if not (root / "model").exists():
        for c in cases:
            if c.needs:
                out[c.id] = "needs the shared GPT-2 tokenizer (set JAXEDIT_SHARED)"
        cases = [c for c in cases if not c.needs]
    if any(c.needs == "run" for c in cases):
        _make_resumable_run(root)

    def one(case: Case) -> Result:
        d = root / "cases" / case.id
        d.mkdir(parents=True)
        if case.setup is not None:
            case.setup(root, d)
        before = _digest(d / case.intact) if case.intact else None
        t0 = time.perf_counter()
        proc = subprocess.run(
            _command(case, root, d),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(root, case),
            timeout=300,
        )
        res = Result(proc, d, time.perf_counter() - t0, before)
        if case.intact:
            res.after = _digest(d / case.intact)
        return res

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        out.update(zip((c.id for c in cases), pool.map(one, cases)))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results):
    res = results[case.id]
    if isinstance(res, str):
        pytest.skip(res)
    err = res.proc.stderr
    assert res.proc.returncode == 2, (res.proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    message = err[err.index("error: ") :]  # one message (a list of bad records spans lines)
    for text in case.expect:
        assert text in message, (text, message)
    for text in case.forbid:
        assert text not in message, (text, message)
    if case.fix:
        assert any(w in message.lower() for w in FIX_WORDS), message
    for rel in case.absent:
        assert not (res.dir / rel).exists(), f"{rel} was left behind: {message}"
    for rel in case.present:
        assert (res.dir / rel).exists(), f"{rel} was removed"
    if case.intact:
        assert res.after == res.before, "the earlier run directory was changed"


def test_kinds_cover_every_binary():
    binaries = {c.binary for c in CASES}
    assert binaries == {"edit", "evaluate", "summarize", "benchmark", "demo", "tune_smollm2"}
    assert len({c.id for c in CASES}) == len(CASES) >= 25


def test_corrupt_stats_cache_is_a_cache_miss(tmp_path, caplog):
    """A cut-short statistics cache file is recomputed with a warning, never an error (the cache
    holds nothing that cannot be recomputed); MEMIT files passed in by the user are an error."""
    cache = stats.StatsCache(tmp_path / "stats", "fingerprint", "corpus")
    cache.put_cov(1, np.eye(43, dtype=np.float32), 10, {})
    np.testing.assert_array_equal(cache.get_cov(1), np.eye(43))
    path = cache.cov_path(1)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="jaxedit.stats"):
        assert cache.get_cov(1) is None
    assert str(path) in caplog.text and "corrupt" in caplog.text
    with pytest.raises(CorruptFileError, match=r"layer1_mom2\.npz"):
        stats.load_memit_npz(path)
