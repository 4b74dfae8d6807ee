r"""Sequential editing run (the paper's protocol, reference §6.2, §7, §8): N edits in batches of B,
evaluated as it goes, resumable.

    python experiments/edit.py --config=configs/encore_smollm2.py \
        --data_path=../shared/data/counterfact/counterfact-edit.json \
        --num_edits=1000 --batch_size=100 \
        --downstream=sst2,mrpc,cola,rte,nli,mmlu --downstream_every=2 --workdir=runs/encore

Order of work:
  1. the unedited baseline, once, on the original weights (`baseline.json`, or `--baseline` reuses
     one from another run on the same model and data): editing metrics of every record to be edited,
     Generation Entropy of the final evaluation subset, downstream scores, weight norms and
     activation shares;
  2. per batch: edit; score the batch's own records right after it is written (`eval`, with the same
     records' baseline as `eval_before`); ‖W‖_F of every layer's MLP output matrix; one line in
     `batches.jsonl`; every `--downstream_every` batches (and after the last) a snapshot of the
     edited matrices, downstream scores (`downstream.jsonl`) and activation shares
     (`activation.jsonl`); then a checkpoint (`checkpoint/<batches done>/`, orbax, written
     atomically: edited matrices, previous-edit caches, batches done);
  3. at the end, `final.json`: editing metrics (ES/PS/NS/S, _acc, _diff; GE on a seeded subset) of
     all edited records (or a seeded fraction, as the reference's 20 %) against the same baseline.

Interrupted runs resume from the checkpoint with the same command: lines written for batches after
it are dropped and those batches redone (deterministic), so no edit is lost or applied twice, also
after a SIGKILL at any moment (a checkpoint of the earlier `checkpoint.npz` format resumes too). A
run directory is locked (`.lock`) while a run uses it: a second invocation on it is refused.
`--max_batches` stops cleanly after that many batches of this invocation. `--fork_from=DIR` starts a
new run from DIR's checkpoint after `--fork_at` batches, with DIR's results up to there, when the
two runs agree on everything that acts before it (e.g. PRUNE at the end). `--evaluate_snapshots`
fills in missing downstream tasks/activation points from the saved snapshots (e.g. a task added
later). Bad input exits with status 2 and one message naming it and the fix (experiments/cli.py),
checked before the model is loaded where it can be: nothing is edited or exported, a new run that
fails leaves no run directory, and an earlier run in --workdir is left as it was (WORKSPACE.md, "Bad
input").
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import cli  # experiments/cli.py: config flags and the user-error rule
import console  # experiments/console.py: --help sections, --verbose, start-up noise kept off
import jax
import numpy as np
from absl import app, flags, logging

import jaxedit
from jaxedit import (
    analysis,
    checkpoint,
    downstream,
    editor,
    entropy,
    files,
    heldout,
    hub,
    metrics,
    sharding,
    stats,
    templates,
)
from jaxedit import config as config_lib
from jaxedit import requests as requests_lib
from jaxedit.corpus import wikitext_paragraphs
from jaxedit.downstream import power
from jaxedit.errors import CorruptFileError, InputError
from jaxedit.progress import Progress

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
cli.define_config_flags("configs/encore_smollm2.py")
cli.define_mesh_flags()
flags.DEFINE_string("model", None, "Preset, HF directory or GGUF path (default: the config's).")
flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Weight dtype (default: the checkpoint's; float32 for GGUF). The search, C0, the solves and ΔW "
    "stay in float32; ΔW is rounded once to this dtype when added.",
)
flags.DEFINE_enum("method", None, list(config_lib.METHODS), "Override the config's method.")
flags.DEFINE_string("hparams_json", None, "The authors' hparams JSON (overrides the config).")
flags.DEFINE_string(
    "label", None, "Name of this run in tables and plots (default: from the config)."
)
flags.DEFINE_string("requests", None, "JSON/JSONL file of requests in any accepted layout.")
flags.DEFINE_string(
    "data_path", None, "Dataset file (CounterFact/zsRE) to slice with --start/--num_edits."
)
flags.DEFINE_integer("start", 0, "First record of --data_path.", lower_bound=0)
flags.DEFINE_integer("num_edits", 100, "Records to edit from --data_path.", lower_bound=1)
flags.DEFINE_integer("batch_size", 10, "Requests per sequential batch.", lower_bound=1)
flags.DEFINE_string("templates", None, "JSON file of fixed context templates (nested-list form).")
flags.DEFINE_string(
    "stats_text",
    None,
    "Corpus for C0: .txt (blank-line separated), .jsonl, folder, or a raw WikiText file "
    "(default: $JAXEDIT_DATA/text/wikitext-2-raw.wiki.test.raw, else downloaded once).",
)
flags.DEFINE_integer("stats_samples", None, "Use the first N documents of the corpus.")
flags.DEFINE_string(
    "stats_npz",
    None,
    "Directory of MEMIT's published statistics files to import "
    "(`*.{layer}.mlp.*_float32_mom2_{N}.npz`); other layers are computed.",
)
flags.DEFINE_string(
    "stats_dir", None, "Cache directory for statistics (default: $JAXEDIT_CACHE/stats)."
)
flags.DEFINE_string("dump_dir", None, "Write batch_{k:03d}.npz arrays here.")
flags.DEFINE_string("export_dir", None, "Write the edited model here (Hugging Face format).")
flags.DEFINE_string(
    "workdir", None, "Run directory (created; resumed when it holds this run).", required=True
)
flags.DEFINE_bool("overwrite", False, "Delete the results of an earlier run in --workdir first.")
flags.DEFINE_integer(
    "max_batches",
    None,
    "Stop (resumable) after this many batches of this invocation.",
    lower_bound=0,
)
flags.DEFINE_bool("evaluate", True, "Editing metrics: baseline, per batch and final.")
flags.DEFINE_bool("eval_batches", True, "Score each batch's own records right after it is written.")
flags.DEFINE_float(
    "final_fraction",
    1.0,
    "Fraction of the edited records scored at the end (seeded; the reference uses 0.2).",
    lower_bound=0,
    upper_bound=1,
)
flags.DEFINE_float(
    "generation_fraction",
    0.2,
    "Fraction of the edited records whose generation "
    "prompts are sampled for Generation Entropy (seeded; 0 disables GE).",
    lower_bound=0,
    upper_bound=1,
)
flags.DEFINE_integer("eval_seed", 42, "Seed of the evaluated subsets and of the GE sampling.")
flags.DEFINE_string(
    "generation_pool",
    None,
    "Generation-prompt pool for records without their own "
    "(default: $JAXEDIT_DATA/counterfact/cf_generation_prompts.json, else downloaded once).",
)
flags.DEFINE_list(
    "downstream", [], "Downstream tasks (sst2,mrpc,cola,rte,nli,mmlu,sentiment_analysis,dialogue)."
)
flags.DEFINE_integer(
    "downstream_every",
    0,
    "Evaluate downstream tasks every k batches (0: only at the end when --downstream is given).",
    lower_bound=0,
)
flags.DEFINE_enum(
    "downstream_protocol",
    "likelihood",
    ["likelihood", "reference"],
    "likelihood: every test item scored by the answer word's log-probability, per-item predictions "
    "kept, accuracy/F1/MCC with CIs over items, paired differences and McNemar against the "
    "unedited model; reference: the reference's generation protocol on 100 items (f1, mcc, "
    "f1_new). A run started before this flag keeps the reference protocol when resumed.",
)
flags.DEFINE_integer(
    "downstream_tests",
    None,
    "Test items per downstream task (default: all for the likelihood protocol, 100 for the "
    "reference one). With the likelihood protocol at most this many: a task with fewer test "
    "items uses them all.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "downstream_shots",
    4,
    "Few-shot examples per prompt.",
    lower_bound=0,
    upper_bound=downstream.FEW_SHOT_POOL,
)
flags.DEFINE_enum(
    "downstream_quirks", "clean", ["clean", "reference"], "Reference prompt/parse quirks."
)
flags.DEFINE_string(
    "downstream_data",
    None,
    "Folder of the downstream sets (default $JAXEDIT_DATA/downstream, else downloaded once).",
)
flags.DEFINE_integer(
    "activation_texts",
    32,
    "WikiText paragraphs for the activation-norm shares at each downstream point (0: off).",
    lower_bound=0,
)
flags.DEFINE_string(
    "heldout_text",
    None,
    "Held-out text (C0 never sees it; e.g. wikitext-2.valid.tokens.txt) scored at every "
    "downstream point: NLL/perplexity with a bootstrap CI over documents (heldout.jsonl).",
)
flags.DEFINE_integer("heldout_docs", 200, "Documents of --heldout_text.", lower_bound=1)
flags.DEFINE_bool(
    "drift",
    True,
    "With --heldout_text: KL(edited || unedited) and top-1 agreement on the held-out tokens "
    "(the unedited model's top-32 log-probabilities kept in memory).",
)
flags.DEFINE_integer(
    "retention_every",
    0,
    "Every k batches (and after the last): ES/PS of every batch edited so far, a seeded sample "
    "of --retention_sample records each (retention.jsonl). 0: off.",
    lower_bound=0,
)
flags.DEFINE_integer(
    "retention_sample", 20, "Records per batch in the retention curves (0: all).", lower_bound=0
)
flags.DEFINE_string(
    "baseline",
    None,
    "Reuse the baseline.json of another run on the same model, data and evaluation settings.",
)
flags.DEFINE_string(
    "fork_from",
    None,
    "Start this new run from another run directory's checkpoint after --fork_at batches, with "
    "its results up to there copied: the two runs must agree on everything that acts before "
    "that point (e.g. a PRUNE-at-end variant of a run, forked before its last batch).",
)
flags.DEFINE_integer(
    "fork_at",
    None,
    "Batches of --fork_from to start from (default: the newest step its checkpoint holds at "
    "which the two runs still agree).",
)
flags.DEFINE_bool(
    "evaluate_snapshots",
    False,
    "Only fill in missing downstream/activation results from the run's snapshots, then exit.",
)
__doc__ = console.help_sections(
    __doc__,
    [
        (
            "model and editing config",
            ["config", "model", "dtype", "method", "hparams_json", "templates", "label"],
            "every editing-config field: --config.<path>=<value>, see --helpfull",
        ),
        ("devices and hosts", ["mesh", "coordinator", "num_processes", "process_id"]),
        ("the edits", ["requests", "data_path", "start", "num_edits", "batch_size"]),
        ("key statistics C0", ["stats_text", "stats_samples", "stats_npz", "stats_dir"]),
        (
            "editing metrics",
            [
                "evaluate",
                "eval_batches",
                "final_fraction",
                "generation_fraction",
                "generation_pool",
                "eval_seed",
                "activation_texts",
                "baseline",
            ],
        ),
        (
            "degradation and retention",
            ["heldout_text", "heldout_docs", "drift", "retention_every", "retention_sample"],
        ),
        (
            "downstream tasks",
            [
                "downstream",
                "downstream_every",
                "downstream_protocol",
                "downstream_tests",
                "downstream_shots",
                "downstream_quirks",
                "downstream_data",
            ],
        ),
        (
            "run directory and outputs",
            [
                "workdir",
                "overwrite",
                "max_batches",
                "fork_from",
                "fork_at",
                "evaluate_snapshots",
                "dump_dir",
                "export_dir",
            ],
        ),
        ("console", ["verbose"]),
    ],
    footer="""
The run directory (--workdir) will contain:
  run.json          the run: final config, model, data, batch size, case ids, evaluation settings
  baseline.json     the unedited model: editing metrics of every record, GE, downstream scores,
                    weight norms, activation shares
  batches.jsonl     one line per batch: search/update time, steps, target probabilities, norms and
                    distance from the original of every edited layer, the batch's scores
                    before/after (eval_before/eval)
  downstream.jsonl  downstream scores at each evaluation point (row 0: the unedited model)
  activation.jsonl  MLP/attention activation shares at the same points
  heldout.jsonl     held-out NLL/perplexity and drift (KL, top-1 agreement) with CIs, same points
  retention.jsonl   ES/PS of every earlier batch's records, every --retention_every batches
  snapshots/        edits_NNNNNN.npz: the edited matrices at each evaluation point
  checkpoint/       N/: edited matrices, previous-edit caches, batches done N (orbax; the last
                    two kept; rerun to resume)
  .lock             held while a run uses the directory (the holder's pid)
  final.json        editing metrics (ES/PS/NS/S, GE) of the edited records before and after
--dump_dir gets batch_NNN.npz (keys, deltas, targets), --export_dir the edited model (HF format).
Progress (batches, C0, evaluation) goes to stderr: a bar on a terminal, else a line every 30 s.""",
)


def data_root() -> Path:
    return paths.data_dir()


def resolve_config() -> config_lib.EditConfig:
    cfg = cli.config_file_from_flags()
    if FLAGS.hparams_json:
        cfg = config_lib.from_reference_hparams(FLAGS.hparams_json, base=cfg)
    if FLAGS.method:
        cfg.method = FLAGS.method
    if FLAGS.model:
        cfg.model = FLAGS.model
    if FLAGS.stats_text:
        cfg.stats.text = FLAGS.stats_text
    if FLAGS.stats_samples:
        cfg.stats.num_samples = FLAGS.stats_samples
    cfg = cli.apply_config_overrides(cfg)  # --config.<path>: the most specific settings win
    if not cfg.stats.text:
        # local first ($JAXEDIT_DATA), then the cache, then a download; an InputError otherwise
        cfg.stats.text = str(paths.dataset("wikitext-2-raw-test", flag="--stats_text"))
    return cfg


def check_flags() -> None:
    """The numeric flags and the output paths, before any file is read."""
    if bool(FLAGS.requests) == bool(FLAGS.data_path):
        raise cli.UserError(
            "pass exactly one of --requests and --data_path (fix: --requests=FILE for a whole "
            "file, --data_path=FILE with --start/--num_edits for a slice)"
        )
    for name in ("workdir", "export_dir", "dump_dir"):
        path = FLAGS[name].value
        if path and Path(path).exists() and not Path(path).is_dir():
            raise cli.UserError(f"--{name}={path} is a file (fix: pass a directory path)")
    if FLAGS.stats_npz and not Path(FLAGS.stats_npz).is_dir():
        raise cli.UserError(
            f"--stats_npz={FLAGS.stats_npz}: no such directory (fix: pass the folder of MEMIT's "
            "statistics files, or drop the flag)"
        )
    if FLAGS.fork_at is not None and not FLAGS.fork_from:
        raise cli.UserError(
            "--fork_at needs --fork_from (fix: pass the run directory to fork from, or drop it)"
        )
    if FLAGS.fork_from and not (Path(FLAGS.fork_from) / "run.json").is_file():
        raise cli.UserError(
            f"--fork_from={FLAGS.fork_from} holds no run.json (fix: pass the --workdir of an "
            "experiments/edit.py run)"
        )
    if FLAGS.generation_pool and not Path(FLAGS.generation_pool).is_file():
        raise cli.UserError(
            f"--generation_pool={FLAGS.generation_pool}: no such file (fix: pass "
            "cf_generation_prompts.json, or drop the flag)"
        )


def read_requests() -> list[requests_lib.EditRequest]:
    """The requests, parsed (the token-length checks need the model's tokenizer: `validate`)."""
    if FLAGS.requests:
        return requests_lib.load_requests(FLAGS.requests)
    return requests_lib.load_requests(FLAGS.data_path, FLAGS.start, FLAGS.num_edits)


def validate_batches(reqs: list[requests_lib.EditRequest], model) -> None:
    """Every batch against the model's tokenizer before editing anything (duplicates are checked
    per batch)."""
    for k in range(0, len(reqs), FLAGS.batch_size):
        requests_lib.validate_requests(
            reqs[k : k + FLAGS.batch_size],
            model.tokenizer,
            model.config.max_position_embeddings,
            source=FLAGS.requests or FLAGS.data_path,
        )


def dump_batch(path: Path, k: int, rep: editor.BatchReport, layers) -> None:
    if not writer():
        return
    path.mkdir(parents=True, exist_ok=True)
    arrays = {
        "case_ids": np.asarray(rep.case_ids),
        "target_init": rep.target_init,
        "targets": rep.targets,
        "stop_steps": rep.stop_steps,
    }
    for layer in layers:
        arrays[f"keys_L{layer}"] = rep.keys[layer]
        arrays[f"delta_L{layer}"] = rep.deltas[layer].T  # HF orientation [d_model, d_ff]
    np.savez(path / f"batch_{k:03d}.npz", **arrays)


# --------------------------------------------------------------------------------------------------
# files of a run directory


def writer() -> bool:
    """Whether this process writes the run directory (process 0 of a multi-host run; the others
    compute their share and write nothing)."""
    return jax.process_index() == 0


def write_json(path: Path, obj) -> None:
    if not writer():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's log. A cut-short last line (the process died while appending it) is
    dropped: it belongs to a batch after the checkpoint, which the resume redoes."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                logging.warning("%s: dropping a cut-short last line", path)
                break
            raise CorruptFileError(
                f"{path}: line {n} is not valid JSON (fix: restore the file, or --overwrite to "
                "discard the run)"
            ) from None
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    if not writer():
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in rows))
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    if not writer():
        return
    with open(path, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")


OLD_CHECKPOINT = "checkpoint.npz"  # the format before issue 12: still resumed, then replaced
CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".lock"
RESULT_FILES = (
    "run.json",
    "baseline.json",
    "batches.jsonl",
    "downstream.jsonl",
    "activation.jsonl",
    "heldout.jsonl",
    "retention.jsonl",
    "final.json",
    OLD_CHECKPOINT,
)
IDENTITY = ("config", "model", "dtype", "data", "start", "num_requests", "batch_size", "case_ids")


def read_run_dir(workdir: Path) -> dict:
    """The files of an earlier run in `workdir` that a resume reads, each checked to be readable
    (a cut-short or overwritten file is refused naming it, and nothing is changed)."""
    out: dict = {"run": None, "baseline": None, "checkpoint": None}
    if FLAGS.overwrite or not workdir.is_dir():
        return out
    discard = f"or --overwrite to discard the run in {workdir}"
    path = workdir / "run.json"
    if path.exists():
        out["run"] = files.read_json(path, "run file", f"restore it, {discard}")
        if not isinstance(out["run"], dict):
            raise cli.UserError(
                f"run file {path} is not a JSON object (fix: restore it, {discard})"
            )
    path = workdir / "baseline.json"
    if path.exists():
        fix = f"delete it to compute the baseline again, {discard}"
        out["baseline"] = files.read_json(path, "baseline file", fix)
        if not isinstance(out["baseline"], dict):
            raise cli.UserError(f"baseline file {path} is not a JSON object (fix: {fix})")
    folder = workdir / CHECKPOINT_DIR
    path = workdir / OLD_CHECKPOINT
    fix = f"delete it to resume from the step before, {discard}"
    found = checkpoint.inspect(folder, fix=fix)  # metadata only: the arrays are read in `prepare`
    if found is not None:
        step, meta, _ = found
        if meta.get("batches_done") != step or "num_edits" not in meta:
            raise cli.UserError(
                f"checkpoint step {folder / str(step)} is not a run checkpoint (fix: {fix})"
            )
        out["checkpoint"] = ("orbax", folder, None)
    elif path.exists():
        fix = f"delete it to redo this run's batches from the first one, {discard}"
        arrays = files.read_npz(path, "checkpoint", fix)
        if "batches_done" not in arrays or "num_edits" not in arrays:
            raise cli.UserError(f"checkpoint {path} is not a run checkpoint (fix: {fix})")
        out["checkpoint"] = ("npz", arrays)
    for name in ("batches.jsonl", "downstream.jsonl", "activation.jsonl"):
        read_jsonl(workdir / name)  # every line but a cut-short last one must parse
    return out


def comparable_config(value: dict, *, templates: bool = True) -> dict:
    """A run.json config with what does not tell two runs apart taken out or filled in."""
    if not templates:
        value = {k: v for k, v in value.items() if k != "templates"}
    # How many requests are searched at once changes rounding only (like --mesh): a run may resume
    # with another value; runs from before the field have none.
    search = {k: v for k, v in value.get("search", {}).items() if k != "max_requests"}
    # Runs from before LTI ran without it (its fields at their defaults, LTI off).
    lti_off = config_lib.to_dict(config_lib.EditConfig())["search"]
    search = {k: lti_off[k] for k in config_lib.LTI_FIELDS} | search
    # Runs from before the regularizer section ran without one (all off).
    regularize = (
        value.get("regularize") or config_lib.to_dict(config_lib.EditConfig())["regularize"]
    )
    return {**value, "search": search, "regularize": regularize}


def check_resumable(
    workdir: Path, old: dict | None, run: dict, keys=IDENTITY, *, templates: bool = True
) -> bool:
    """True when `workdir` holds this very run (same `keys`: config, model, data and batches;
    `templates=False` leaves the config's templates out); raises when it holds another one."""
    if old is None:
        return False

    def norm(key, value):
        if key == "dtype" and value is None:  # run.json of runs before --dtype: always float32
            value = "float32"
        if key == "config" and isinstance(value, dict):
            value = comparable_config(value, templates=templates)
        return json.dumps(value, default=str, sort_keys=True)

    diff = [k for k in keys if norm(k, old.get(k)) != norm(k, run.get(k))]
    if diff:
        raise cli.UserError(
            f"--workdir={workdir} holds another run (differs in {', '.join(diff)}) (fix: use a "
            "new --workdir, or --overwrite to discard it)"
        )
    return True


def remove_new_run(workdir: Path, existed: bool) -> None:
    """Removes what a fresh run wrote to `workdir` before it failed (the directory itself when it
    did not exist before)."""
    if not writer():
        return
    if not existed:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in RESULT_FILES:
        for path in (
            workdir / name,
            workdir / (name + ".tmp"),
            (workdir / name).with_suffix(".tmp"),
        ):
            path.unlink(missing_ok=True)
    (workdir / "checkpoint.tmp.npz").unlink(missing_ok=True)
    shutil.rmtree(workdir / "snapshots", ignore_errors=True)
    shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
    (workdir / LOCK_FILE).unlink(missing_ok=True)


def lock_run_dir(workdir: Path):
    """An exclusive lock on `<workdir>/.lock` (the directory is created), held until the process
    exits: the OS drops it when the process dies, even by SIGKILL, so a killed run resumes at
    once. Refuses a directory another live process holds. Returns the open file (keep it). In a
    multi-host run process 0 holds it for all."""
    if not writer():
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    f = open(workdir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the process lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise cli.UserError(
            f"run directory {workdir} is in use by process {pid} (fix: wait for it or use another "
            "--workdir)"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# --------------------------------------------------------------------------------------------------
# evaluation


def records_view(res: dict) -> list[dict]:
    """counterfact_scores' {"records": {set: [per record]}} as one dict per record."""
    per = res["records"]
    n = len(next(iter(per.values())))
    return [{name: per[name][j] for name in per} for j in range(n)]


def seeded_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a reproducible random fraction of n records (all when fraction >= 1)."""
    if fraction >= 1.0:
        return np.arange(n)
    if fraction <= 0.0:
        return np.arange(0)
    return np.flatnonzero(np.random.default_rng(seed).random(n) < fraction)


class Evaluator:
    """Everything measured on a model: editing metrics, GE, downstream, norms, activation shares."""

    def __init__(self, model, cfg, reqs):
        self.model, self.cfg, self.reqs = model, cfg, reqs
        self.zsre = bool(reqs) and reqs[0].layout == "zsre"
        self.final_idx = seeded_subset(len(reqs), FLAGS.final_fraction, FLAGS.eval_seed)
        self.gen_idx = (
            np.arange(0)
            if self.zsre
            else seeded_subset(len(reqs), FLAGS.generation_fraction, FLAGS.eval_seed + 1)
        )
        pool = paths.optional_dataset("cf-generation-prompts", FLAGS.generation_pool)
        self.pool = str(pool) if pool is not None else None
        self.tasks = downstream_tasks()
        self.downstream_data = (
            str(paths.dataset("downstream", FLAGS.downstream_data, flag="--downstream_data"))
            if self.tasks
            else FLAGS.downstream_data or str(data_root() / "downstream")
        )
        self.heldout = None
        if FLAGS.heldout_text:
            self.heldout = heldout.load(
                model.tokenizer,
                FLAGS.heldout_text,
                FLAGS.heldout_docs,
                max_length=min(1024, model.config.max_position_embeddings),
            )
        self._drift_ref = None  # the unedited model's top-k, computed on first use
        self.base_downstream: dict = {}  # the unedited model's downstream results, once known
        self.texts = None
        if FLAGS.activation_texts:
            self.texts = (
                wikitext_paragraphs(cfg.stats.text)[: FLAGS.activation_texts]
                if cfg.stats.text.endswith(".raw")
                else stats.read_corpus(cfg.stats.text, FLAGS.activation_texts)
            )

    def settings(self) -> dict:
        return {
            "final_fraction": FLAGS.final_fraction,
            "generation_fraction": FLAGS.generation_fraction,
            "eval_seed": FLAGS.eval_seed,
            "generation_pool": self.pool,
            "final_records": len(self.final_idx),
            "generation_records": len(self.gen_idx),
            "downstream": {
                "tasks": self.tasks,
                "every": FLAGS.downstream_every,
                "num_tests": downstream_num_tests(),
                "num_few_shots": FLAGS.downstream_shots,
                "quirks": FLAGS.downstream_quirks,
                "protocol": FLAGS.downstream_protocol,
            },
            "activation_texts": FLAGS.activation_texts,
            "heldout": {
                "text": FLAGS.heldout_text,
                "docs": FLAGS.heldout_docs,
                "drift": FLAGS.drift,
            },
            "retention": {"every": FLAGS.retention_every, "sample": FLAGS.retention_sample},
        }

    def baseline_mismatch(self, baseline: dict, source: str, case_ids: list) -> str | None:
        """Why `baseline` (another run's) cannot stand for this run's, or None. It must be of the
        same model and records with the same editing/GE/activation settings, and hold every
        downstream task of this run with the same number of tests, shots and quirks (extra tasks are
        fine)."""
        if baseline.get("model") != source:
            return f"model {baseline.get('model')!r}, this run {source!r}"
        if baseline.get("case_ids") != case_ids:
            return "other records"
        old, new = baseline.get("settings", {}), self.settings()
        for key in new:  # (held-out and retention measures are not part of a baseline)
            if key not in ("downstream", "heldout", "retention") and old.get(key) != new[key]:
                return f"{key}={old.get(key)!r}, this run {new[key]!r}"
        od, nd = old.get("downstream", {}), new["downstream"]
        for key in ("num_tests", "num_few_shots", "quirks", "protocol"):
            if od.get(key, "reference" if key == "protocol" else None) != nd[key]:
                return f"downstream {key}={od.get(key)!r}, this run {nd[key]!r}"
        missing = [t for t in self.tasks if t not in baseline.get("downstream", {})]
        return f"no downstream {missing}" if missing else None

    def editing(self, model, reqs) -> dict:
        """Per-record results and scores of `reqs` on `model`."""
        if self.zsre:
            return metrics.zsre_scores(model, reqs)
        return metrics.counterfact_scores(model, reqs)

    def generation_entropy(self, model) -> dict | None:
        if not len(self.gen_idx) or (
            self.pool is None and not any(r.generation_prompts for r in self.reqs)
        ):
            return None
        reqs = [self.reqs[i] for i in self.gen_idx]
        res = entropy.counterfact_generation_entropy(
            model, reqs, pool_path=self.pool, seed=FLAGS.eval_seed
        )
        return {k: v for k, v in res.items() if k != "texts"}  # per_record: for the GE CI

    def downstream(self, model, tasks=None) -> dict:
        """Downstream scores; with the likelihood protocol also each task's per-item labels and
        predictions (`items`) and `power`: accuracy/F1/MCC with CIs over items, paired against the
        unedited model's predictions (`base_downstream`) when they are known."""
        tasks = self.tasks if tasks is None else tasks
        if not tasks:
            return {}
        likelihood = FLAGS.downstream_protocol == "likelihood"
        res = downstream.evaluate_downstream(
            model,
            tasks,
            self.downstream_data,
            num_tests=downstream_num_tests(),
            num_few_shots=FLAGS.downstream_shots,
            quirks=FLAGS.downstream_quirks,
            details=likelihood,
            at_most_tests=likelihood,
        )
        for name, r in res.items() if likelihood else ():
            recs = r.pop("records")
            labels, preds = [x["label"] for x in recs], [x["pred_new"] for x in recs]
            r["items"] = {"labels": labels, "preds": preds}
            base = (self.base_downstream.get(name) or {}).get("items")
            if base is not None and base["labels"] == labels and model is not self.model:
                r["power"] = power.paired_scores(labels, preds, base["preds"], seed=FLAGS.eval_seed)
            else:
                r["power"] = power.item_scores(labels, preds, seed=FLAGS.eval_seed)
        return res

    def heldout_point(self, model) -> dict | None:
        """Held-out NLL/perplexity and (with --drift) KL / top-1 agreement against the unedited
        model, each with its bootstrap CI over documents; None without --heldout_text."""
        if self.heldout is None:
            return None
        t0 = time.perf_counter()
        if FLAGS.drift and self._drift_ref is None:  # the unedited side, once per process
            self._drift_ref = heldout.reference(self.model, self.heldout)
        res = heldout.measure(
            model, self.heldout, ref=self._drift_ref if FLAGS.drift else None, seed=FLAGS.eval_seed
        )
        res["time_s"] = time.perf_counter() - t0
        return res

    def retention(self, model, batches: list, done: int) -> list[dict]:
        """ES/PS (with CIs over records) of the first `done` batches' records on `model`: a seeded
        sample of --retention_sample records of each batch (all with 0)."""
        rows = []
        for b in range(done):
            reqs = batches[b]
            k = FLAGS.retention_sample
            if k and k < len(reqs):
                pick = np.random.default_rng([FLAGS.eval_seed, b]).choice(
                    len(reqs), k, replace=False
                )
                reqs = [reqs[j] for j in sorted(pick)]
            res = self.editing(model, reqs)
            row = {"batch": b, "n": len(reqs), "case_ids": [r.case_id for r in reqs]}
            row.update({k2: res["scores"][k2] for k2 in ("ES", "PS") if k2 in res["scores"]})
            if not self.zsre:
                view = records_view(res)
                ci = metrics.counterfact_intervals(view, seed=FLAGS.eval_seed)
                row["ci"] = {k2: ci["ci"][k2] for k2 in ("ES", "PS")}
                # Per-record success rates (aligned with case_ids): paired comparisons of runs.
                vals = metrics.counterfact_record_values(view)
                row["records"] = {k2: _finite_list(vals[k2]) for k2 in ("ES", "PS")}
            rows.append(row)
        return rows

    def activation(self, model) -> dict | None:
        if not self.texts:
            return None
        return analysis.activation_norm_proportion(model, self.texts).as_dict()

    def baseline(self) -> dict:
        t0 = time.perf_counter()
        out = {
            "model": self.model.source,
            "case_ids": [r.case_id for r in self.reqs],
            "settings": self.settings(),
            "layer_norms": analysis.weight_norms(self.model.params, self.model.config).tolist(),
        }
        if FLAGS.evaluate:
            res = self.editing(self.model, self.reqs)
            out["records"] = records_view(res) if not self.zsre else res["records"]
            out["editing"] = res["scores"]
            ge = self.generation_entropy(self.model)
            if ge is not None:
                out["generation"] = ge
        out["downstream"] = self.downstream(self.model)
        act = self.activation(self.model)
        if act is not None:
            out["activation"] = act
        out["time_s"] = time.perf_counter() - t0
        return out

    def before(self, baseline: dict, idx) -> dict:
        """Scores of the records `idx` on the unedited model, from the baseline's per-record
        results."""
        if self.zsre:
            recs = {
                name: [baseline["records"][name][i] for i in idx] for name in baseline["records"]
            }
            return metrics.summarize_zsre(recs)
        return metrics.summarize_counterfact([baseline["records"][i] for i in idx])


def downstream_num_tests() -> int | None:
    """--downstream_tests, else every test item (likelihood protocol) or the reference's 100."""
    if FLAGS.downstream_tests is not None:
        return FLAGS.downstream_tests
    return None if FLAGS.downstream_protocol == "likelihood" else 100


def resolve_protocol(workdir: Path) -> None:
    """A run directory started before --downstream_protocol existed (its run.json records
    downstream settings without a protocol) keeps the reference protocol when resumed, unless the
    flag is given."""
    if FLAGS["downstream_protocol"].present or not (workdir / "run.json").is_file():
        return
    try:
        old = json.loads((workdir / "run.json").read_text()).get("evaluation", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return  # read_run_dir names a damaged run.json
    settings = old.get("downstream") if isinstance(old, dict) else None
    if isinstance(settings, dict) and settings.get("tasks") and "protocol" not in settings:
        FLAGS.downstream_protocol = "reference"


def downstream_tasks() -> list[str]:
    """The --downstream tasks by their registry names ("sst" -> sst2; unknown names refused)."""
    names = [t.strip() for t in FLAGS.downstream if t.strip()]
    return downstream.resolve_tasks(names) if names else []


def check_downstream_data(tasks: list[str]) -> None:
    """Every downstream task's data is there and large enough, before the model is loaded."""
    if tasks:
        downstream.check_data(
            tasks,
            paths.dataset("downstream", FLAGS.downstream_data, flag="--downstream_data"),
            num_tests=downstream_num_tests(),
            num_few_shots=FLAGS.downstream_shots,
            at_most_tests=FLAGS.downstream_protocol == "likelihood",
        )


def layer_norm_line(params, original, cfg, model_cfg) -> dict:
    norms = analysis.weight_norms(params, model_cfg)
    dist = analysis.distance_from_original(params, original, model_cfg, cfg.layers)
    return {
        "layer_norms": norms.tolist(),
        "distance_from_original": {str(l): float(d) for l, d in zip(cfg.layers, dist)},
    }


# --------------------------------------------------------------------------------------------------


def snapshot_path(workdir: Path, num_edits: int) -> Path:
    return workdir / "snapshots" / f"edits_{num_edits:06d}.npz"


def save_snapshot(workdir: Path, ed: editor.Editor, state) -> None:
    path = snapshot_path(workdir, state.num_edits)
    path.parent.mkdir(exist_ok=True)
    arrays = {k: v for k, v in ed.state_arrays(state).items() if not k.startswith("prev_kkt")}
    if not writer():  # (every process gathers: state_arrays is collective across hosts)
        return
    np.savez(path.with_suffix(".tmp.npz"), **arrays)
    os.replace(path.with_suffix(".tmp.npz"), path)


def evaluate_point(workdir: Path, ev: Evaluator, model, batch: int, num_edits: int) -> None:
    t0 = time.perf_counter()
    if ev.tasks:
        res = ev.downstream(model)
        append_jsonl(
            workdir / "downstream.jsonl",
            {
                "num_edits": num_edits,
                "batch": batch,
                "tasks": res,
                "quirks": FLAGS.downstream_quirks,
                "time_s": time.perf_counter() - t0,
            },
        )
        logging.info(
            "downstream after %d edits: %s",
            num_edits,
            {t: round(r["f1"], 3) for t, r in res.items()},
        )
    act = ev.activation(model)
    if act is not None:
        append_jsonl(workdir / "activation.jsonl", {"num_edits": num_edits, "batch": batch, **act})
    held = ev.heldout_point(model)
    if held is not None:
        append_jsonl(workdir / "heldout.jsonl", {"num_edits": num_edits, "batch": batch, **held})
        logging.info(
            "held-out after %d edits: perplexity %.3f (CI %.3f-%.3f)%s",
            num_edits,
            held["perplexity"],
            *held["perplexity_ci"],
            f", KL {held['kl']:.4f}, top-1 agreement {held['top1_agreement']:.3f}"
            if "kl" in held
            else "",
        )


def fill_snapshots(workdir: Path, ev: Evaluator, ed: editor.Editor) -> None:
    """Adds missing downstream tasks and activation points for every saved snapshot."""
    down = read_jsonl(workdir / "downstream.jsonl")
    acts = read_jsonl(workdir / "activation.jsonl")
    ev.base_downstream = dict(next((r["tasks"] for r in down if r["num_edits"] == 0), {}))
    points = [(0, None)] + [
        (int(p.stem.split("_")[1]), p) for p in sorted((workdir / "snapshots").glob("edits_*.npz"))
    ]
    for num_edits, path in points:
        batch = -(-num_edits // FLAGS.batch_size) - 1
        if path is None:
            model = ed.model
        else:
            z = files.read_npz(path, "snapshot", "delete it, or --overwrite to discard the run")
            model = ed.edited_model(ed.restore_state({**z, **_zero_kkt(ed)}))
        row = next((r for r in down if r["num_edits"] == num_edits), None)
        missing = [t for t in ev.tasks if row is None or t not in row["tasks"]]
        if missing:
            res = ev.downstream(model, missing)
            if row is None:
                row = {
                    "num_edits": num_edits,
                    "batch": batch,
                    "tasks": {},
                    "quirks": FLAGS.downstream_quirks,
                }
                down.append(row)
            row["tasks"].update(res)
            if path is None:  # the unedited predictions that later points are paired with
                ev.base_downstream.update(res)
            logging.info("after %d edits: evaluated %s", num_edits, missing)
            base_path = workdir / "baseline.json"
            if (
                path is None and base_path.exists()
            ):  # the unedited point belongs to the baseline too
                baseline = json.loads(base_path.read_text())
                baseline.setdefault("downstream", {}).update(res)
                write_json(base_path, baseline)
        if ev.texts and not any(r["num_edits"] == num_edits for r in acts):
            acts.append({"num_edits": num_edits, "batch": batch, **ev.activation(model)})
    write_jsonl(workdir / "downstream.jsonl", sorted(down, key=lambda r: r["num_edits"]))
    if acts:
        write_jsonl(workdir / "activation.jsonl", sorted(acts, key=lambda r: r["num_edits"]))


def _zero_kkt(ed: editor.Editor) -> dict:
    if not ed.uses_prev_cache:
        return {}
    f = ed.model.config.intermediate_size
    return {f"prev_kkt_L{l}": np.zeros((f, f), np.float32) for l in ed.cfg.layers}


EARLY_IDENTITY = ("config", "data", "start", "num_requests", "batch_size", "case_ids")


def prepare(workdir: Path):
    """Every check of the input, then the model, statistics, editor and evaluator: bad input is
    refused here, before anything is written (files and flags before the model is loaded)."""
    cfg = resolve_config()
    check_downstream_data(downstream_tasks())
    if not str(cfg.stats.text).startswith("hf:"):
        stats.read_corpus(cfg.stats.text, 1)  # the corpus exists and holds a document
    fixed = templates.load_templates(FLAGS.templates) if FLAGS.templates else None
    reused = None
    if FLAGS.baseline:
        reused = files.read_json(
            FLAGS.baseline, "--baseline file", "pass another run's baseline.json, or drop the flag"
        )
        if not isinstance(reused, dict) or "case_ids" not in reused:
            raise cli.UserError(
                f"--baseline={FLAGS.baseline} is not a run's baseline.json (fix: pass the "
                "baseline.json of another run, or drop the flag)"
            )
    reqs = read_requests()
    prior = read_run_dir(workdir)
    early = {
        "config": config_lib.to_dict(cfg),
        "data": FLAGS.requests or FLAGS.data_path,
        "start": FLAGS.start,
        "num_requests": len(reqs),
        "batch_size": FLAGS.batch_size,
        "case_ids": [r.case_id for r in reqs],
    }
    check_resumable(workdir, prior["run"], early, EARLY_IDENTITY, templates=False)

    model = cli.shard_model(jaxedit.load(cfg.model, dtype=FLAGS.dtype))
    if model.tokenizer is None:
        raise cli.UserError(
            f"--model={cfg.model} has no tokenizer (fix: save the tokenizer files beside the "
            "weights, e.g. tokenizer.save_pretrained(dir))"
        )
    cfg.validate(model.config.num_layers)
    validate_batches(reqs, model)
    if fixed is not None:
        tmpl = fixed
    elif cfg.templates:
        tmpl = cfg.templates
    else:
        tmpl = templates.generate_templates(model, jax.random.key(cfg.template_seed))
    cfg.templates = tuple(tuple(g) for g in tmpl)
    cfg.validate(model.config.num_layers)

    run = {
        "label": FLAGS.label or config_lib.default_label(cfg),
        "config": config_lib.to_dict(cfg),
        "model": model.source,
        "dtype": str(model.dtype),
        "num_layers": model.config.num_layers,
        "num_requests": len(reqs),
        "data": FLAGS.requests or FLAGS.data_path,
        "start": FLAGS.start,
        "batch_size": FLAGS.batch_size,
        "case_ids": [r.case_id for r in reqs],
        "devices": [str(d) for d in jax.devices()],
        "mesh": dict(model.mesh.shape) if model.mesh is not None else None,
        "processes": jax.process_count(),
    }
    check_resumable(workdir, prior["run"], run)
    ev = Evaluator(model, cfg, reqs)
    run["evaluation"] = ev.settings()
    if reused is not None and prior["baseline"] is None:
        problem = ev.baseline_mismatch(reused, model.source, run["case_ids"])
        if problem:
            raise cli.UserError(
                f"--baseline={FLAGS.baseline} does not fit this run ({problem}) (fix: drop the "
                "flag to compute this run's own)"
            )

    stats_dir = FLAGS.stats_dir or str(hub.cache_dir() / "stats")
    t0 = time.perf_counter()
    layer_stats = stats.layer_stats(
        model,
        cfg.layers,
        cfg.stats.text,
        num_samples=cfg.stats.num_samples,
        max_length=cfg.stats.max_length,
        cache_dir=stats_dir,
        null_threshold=cfg.solve.nullspace_threshold if cfg.method == "AlphaEdit" else None,
        memit_dir=FLAGS.stats_npz,
    )
    run["stats_time_s"] = time.perf_counter() - t0
    ed = editor.Editor(model, cfg, layer_stats, cfg.templates, max_journal=1)
    if FLAGS.fork_from and prior["run"] is None:
        prior.update(fork_source(workdir, run, ev.settings(), len(reqs)))
        run["forked_from"] = prior["fork"]["record"]
    elif prior["run"] is not None and "forked_from" in prior["run"]:
        run["forked_from"] = prior["run"]["forked_from"]  # kept when the fork is resumed
    if prior["checkpoint"] is not None:
        kind, found, *step = prior["checkpoint"]
        if kind == "npz":
            arrays = dict(found)
            done = int(arrays.pop("batches_done"))
        else:
            # Restored like the editor's own arrays (their shardings and dtypes: no gather).
            template = ed.state_arrays(ed.init_state(), host=False)
            fix = "delete that step folder to resume from the one before, or --overwrite"
            res = checkpoint.restore(found, template, fix=fix, step=step[0])
            if res is None:  # removed since `read_run_dir`
                raise cli.UserError(f"checkpoint {found} vanished (fix: rerun)")
            done, arrays, prior["resume_meta"] = res
        prior["resume"] = (done, ed.restore_state(arrays))
    return cfg, model, reqs, run, ed, ev, prior, reused


def main(argv):
    del argv
    workdir = Path(FLAGS.workdir)
    existed = workdir.exists()
    new = not any((workdir / n).exists() for n in (*RESULT_FILES, CHECKPOINT_DIR))
    fresh = FLAGS.overwrite or new
    dump_existed = not FLAGS.dump_dir or Path(FLAGS.dump_dir).exists()
    check_flags()
    resolve_protocol(workdir)
    cli.start_processes()
    if not writer():  # logs and tables come from process 0 only
        logging.set_verbosity(logging.ERROR)
    lock = lock_run_dir(workdir)  # held until the process exits  # noqa: F841
    try:
        setup = prepare(workdir)  # writes nothing but the lock
    except BaseException:
        if new:  # a new run leaves no run directory (nor a lock file in the user's folder)
            remove_new_run(workdir, existed)
        raise
    try:
        execute(workdir, *setup)
    except (InputError, app.UsageError):
        # A new run that fails on its input leaves no half run directory; an earlier run that
        # was being resumed is left as it was (its checkpoint still resumes it).
        if fresh:
            remove_new_run(workdir, existed)
        if not dump_existed:
            shutil.rmtree(FLAGS.dump_dir, ignore_errors=True)
        raise


def execute(workdir: Path, cfg, model, reqs, run, ed, ev, prior, reused) -> None:
    """The run itself, on input `prepare` checked: baseline, batches, final metrics, export."""
    if FLAGS.overwrite and writer():
        for name in RESULT_FILES:
            (workdir / name).unlink(missing_ok=True)
        shutil.rmtree(workdir / "snapshots", ignore_errors=True)
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if prior.get("fork"):
        copy_fork(workdir, prior["fork"])
    write_json(workdir / "run.json", run)  # identity checked above; evaluation settings may change

    if FLAGS.evaluate_snapshots:
        fill_snapshots(workdir, ev, ed)
        return

    # 1. The unedited baseline, once.
    base_path = workdir / "baseline.json"
    if prior["baseline"] is not None:
        baseline = prior["baseline"]
    elif reused is not None:  # checked against this run in `prepare`
        baseline = {
            **reused,
            "settings": ev.settings(),
            "downstream": {t: reused["downstream"][t] for t in ev.tasks},
        }
        write_json(base_path, baseline)
    else:
        logging.info("computing the unedited baseline")
        baseline = ev.baseline()
        write_json(base_path, baseline)
    ev.base_downstream = dict(baseline.get("downstream", {}))  # what later points pair with
    # The curves start at the baseline: row 0 of downstream.jsonl holds this run's tasks (a baseline
    # computed with more tasks is restricted to them), activation.jsonl starts with the unedited
    # shares.
    if ev.tasks and all(t in baseline.get("downstream", {}) for t in ev.tasks):
        rows = [r for r in read_jsonl(workdir / "downstream.jsonl") if r["batch"] != -1]
        first = {
            "num_edits": 0,
            "batch": -1,
            "quirks": FLAGS.downstream_quirks,
            "tasks": {t: baseline["downstream"][t] for t in ev.tasks},
        }
        write_jsonl(workdir / "downstream.jsonl", [first, *rows])
    if "activation" in baseline:
        rows = read_jsonl(workdir / "activation.jsonl")
        if not any(r["batch"] == -1 for r in rows):
            write_jsonl(
                workdir / "activation.jsonl",
                [{"num_edits": 0, "batch": -1, **baseline["activation"]}, *rows],
            )

    if ev.heldout is not None and not any(
        r["batch"] == -1 for r in read_jsonl(workdir / "heldout.jsonl")
    ):
        held = ev.heldout_point(ev.model)  # the unedited model (KL 0, agreement 1)
        write_jsonl(
            workdir / "heldout.jsonl",
            [{"num_edits": 0, "batch": -1, **held}, *read_jsonl(workdir / "heldout.jsonl")],
        )

    # 2. Resume from the checkpoint: keep what belongs to finished batches, redo the rest.
    state = ed.init_state()
    done = 0
    if prior.get("resume") is not None:  # read and checked in `prepare`
        done, state = prior["resume"]
        logging.info("resuming after batch %d (%d edits)", done, state.num_edits)
        check_prune_resume(ed, done, prior.get("resume_meta") or {}, workdir, len(reqs))
    for name in (
        "batches.jsonl",
        "downstream.jsonl",
        "activation.jsonl",
        "heldout.jsonl",
        "retention.jsonl",
    ):
        rows = read_jsonl(workdir / name)
        keep = [r for r in rows if r["batch"] < done]
        if len(keep) != len(rows):
            write_jsonl(workdir / name, keep)

    batches = [reqs[k : k + FLAGS.batch_size] for k in range(0, len(reqs), FLAGS.batch_size)]
    every = FLAGS.downstream_every
    original = model.params
    bar = Progress(len(batches), "sequential edits", "batches", initial=done, leave=True)
    for i in range(done, len(batches)):
        if FLAGS.max_batches is not None and i - done >= FLAGS.max_batches:
            bar.close()
            logging.info(
                "stopping after %d batches (--max_batches); rerun to resume", FLAGS.max_batches
            )
            print(json.dumps({"stopped_after_batch": i, "num_edits": state.num_edits}))
            return
        batch = batches[i]
        state, rep = ed.apply(state, batch)
        state, pruned = prune_at_end(ed, state, i == len(batches) - 1)
        line = {
            "batch": i,
            "num_edits": state.num_edits,
            **rep.summary(),
            **pruned,
            "time_per_edit_s": (rep.search_time + rep.update_time) / len(batch),
            **layer_norm_line(state.params, original, cfg, model.config),
        }
        if pruned:  # the report's norms are the batch's, before PRUNE; the line's are after it
            line["weight_norm_before_prune"] = line["weight_norm"]
            line["weight_norm"] = {str(l): line["layer_norms"][l] for l in cfg.layers}
        edited = ed.edited_model(state)
        if FLAGS.evaluate and FLAGS.eval_batches:
            idx = range(i * FLAGS.batch_size, i * FLAGS.batch_size + len(batch))
            line["eval"] = ev.editing(edited, batch)["scores"]
            line["eval_before"] = ev.before(baseline, idx)
        append_jsonl(workdir / "batches.jsonl", line)
        logging.info(
            "batch %d: %d edits, search %.1f s, update %.1f s, mean steps %.1f, eval %s",
            i,
            state.num_edits,
            rep.search_time,
            rep.update_time,
            float(np.mean(rep.stop_steps)),
            {k: round(v, 1) for k, v in line.get("eval", {}).items() if k in ("ES", "PS", "NS")},
        )
        keep_every = FLAGS.retention_every
        if keep_every and ((i + 1) % keep_every == 0 or i == len(batches) - 1):
            t0 = time.perf_counter()
            append_jsonl(
                workdir / "retention.jsonl",
                {
                    "num_edits": state.num_edits,
                    "batch": i,
                    "batches": ev.retention(edited, batches, i + 1),
                    "time_s": time.perf_counter() - t0,
                },
            )
        if (every and (i + 1) % every == 0) or i == len(batches) - 1:
            save_snapshot(workdir, ed, state)
            evaluate_point(workdir, ev, edited, i, state.num_edits)
        if FLAGS.dump_dir:
            dump_batch(Path(FLAGS.dump_dir), i, rep, cfg.layers)
        # Atomic (orbax writes a temporary folder and renames it): a kill at any moment leaves
        # the previous step to resume from. Sharded arrays are written shard by shard.
        checkpoint.save(
            workdir / CHECKPOINT_DIR,
            i + 1,
            ed.state_arrays(state, host=False),
            {"batches_done": i + 1, "num_edits": state.num_edits, **prune_marker(pruned)},
        )
        if writer():
            (workdir / OLD_CHECKPOINT).unlink(missing_ok=True)  # an earlier format, superseded
        bar.update(edits=state.num_edits)
    bar.close()

    # 3. Final editing metrics against the same baseline.
    edited = ed.edited_model(state)
    sync("batches written")  # other processes read the log process 0 wrote
    lines = read_jsonl(workdir / "batches.jsonl")
    steady = lines[1:] or lines
    final = {
        "num_edits": state.num_edits,
        "label": run["label"],
        **({"forked_from": run["forked_from"]} if "forked_from" in run else {}),
        "time_per_edit_s": float(np.mean([l["time_per_edit_s"] for l in steady])),
        "search_time_per_edit_s": float(
            np.mean([l["search_time_s"] / len(l["case_ids"]) for l in steady])
        ),
        "update_time_per_edit_s": float(
            np.mean([l["update_time_s"] / len(l["case_ids"]) for l in steady])
        ),
        "first_batch_time_per_edit_s": lines[0]["time_per_edit_s"],
        # LTI's teacher pass (part of the search time; 0 without LTI)
        "teacher_time_per_edit_s": float(
            np.mean([l.get("teacher_time_s", 0.0) / len(l["case_ids"]) for l in steady])
        ),
        "mean_steps": float(np.mean([s for l in lines for s in l["stop_steps"]])),
        "mean_target_prob": float(np.mean([p for l in lines for p in l["target_prob"]])),
    }
    if FLAGS.evaluate:
        idx = ev.final_idx
        final["evaluated"] = {
            "fraction": FLAGS.final_fraction,
            "seed": FLAGS.eval_seed,
            "num_records": len(idx),
        }
        final["before"] = ev.before(baseline, idx)
        after = ev.editing(edited, [reqs[i] for i in idx])
        final["after"] = after["scores"]
        if not ev.zsre:  # 95 % bootstrap CIs over records, and the paired after − before
            base_recs = [baseline["records"][i] for i in idx]
            ci = metrics.counterfact_intervals(records_view(after), base_recs, seed=FLAGS.eval_seed)
            final["after_ci"] = ci["ci"]
            final["before_ci"] = metrics.counterfact_intervals(base_recs, seed=FLAGS.eval_seed)[
                "ci"
            ]
            final["after_minus_before"] = ci["difference"]
            final["ci_unit"] = "record"
            vals = metrics.counterfact_record_values(records_view(after))
            final["after_records"] = {
                "case_ids": [reqs[i].case_id for i in idx],
                **{k: _finite_list(v) for k, v in vals.items()},
            }
        ge = ev.generation_entropy(edited)
        if ge is not None:
            base_ge = baseline.get("generation", {})
            final["before"]["GE"] = base_ge.get("GE")
            final["after"]["GE"] = ge["GE"]
            final["evaluated"]["generation_records"] = ge.get("num_records")
            before_per = base_ge.get("per_record")  # absent in baselines of older runs
            if before_per is not None and len(before_per) != len(ge["per_record"]):
                before_per = None
            ge_ci = metrics.generation_entropy_intervals(
                ge["per_record"], before_per, seed=FLAGS.eval_seed
            )
            final.setdefault("after_ci", {})["GE"] = ge_ci["ci"]
            if before_per is not None:
                final.setdefault("before_ci", {})["GE"] = metrics.generation_entropy_intervals(
                    before_per, seed=FLAGS.eval_seed
                )["ci"]
                if "difference" in ge_ci:
                    final.setdefault("after_minus_before", {})["GE"] = ge_ci["difference"]
        logging.info("editing metrics before %s after %s", final["before"], final["after"])
    write_json(workdir / "final.json", final)
    if FLAGS.export_dir:
        if jax.process_count() > 1:  # every process takes part in the gather; process 0 writes
            host = jax.tree.map(sharding.to_host, edited.params)
            edited = edited.replace(params=host, mesh=None)
        if writer():
            jaxedit.save_hf(edited, FLAGS.export_dir)
            logging.info("exported the edited model to %s", FLAGS.export_dir)
    if writer():
        print(json.dumps(final))


# --------------------------------------------------------------------------------------------------
# A fork (--fork_from): a new run that starts from another run's checkpoint after K batches, with
# that run's results up to there (baseline, the lines of batches < K, snapshots) copied into its
# own directory, and the checkpoint step K too, so that from then on it is an ordinary run that
# resumes from its own files. It is refused unless the two runs would have computed the same first
# K batches: the same model, data, batches and evaluation settings, and configs that differ at most
# in PRUNE applied at the end (it acts after the last batch only, so K must be before it).
FORK_ROWS = (
    "batches.jsonl",
    "downstream.jsonl",
    "activation.jsonl",
    "heldout.jsonl",
    "retention.jsonl",
)


def _config_key(cfg: dict, drop=()) -> str:
    cfg = comparable_config(cfg)
    reg = {k: v for k, v in cfg["regularize"].items() if k not in drop}
    return json.dumps({**cfg, "regularize": reg}, default=str, sort_keys=True)


def fork_source(workdir: Path, run: dict, settings: dict, n: int) -> dict:
    """The checks of --fork_from/--fork_at (nothing is written): {"checkpoint": the parent's step,
    "baseline": its baseline, "fork": what `copy_fork` copies and run.json records}."""
    parent = Path(FLAGS.fork_from)
    flag = f"--fork_from={parent}"
    if parent.resolve() == workdir.resolve():
        raise cli.UserError(f"{flag} is --workdir itself (fix: fork into a new --workdir)")
    old = files.read_json(parent / "run.json", "run file of --fork_from", "pass a run directory")
    if not isinstance(old, dict) or "config" not in old:
        raise cli.UserError(
            f"{flag} holds no run (fix: pass a run directory of experiments/edit.py)"
        )
    base = None
    if (parent / "baseline.json").exists():
        base = files.read_json(parent / "baseline.json", "baseline of --fork_from", "restore it")
    diff = [k for k in IDENTITY if k != "config" and json.dumps(old.get(k)) != json.dumps(run[k])]
    if json.dumps(old.get("evaluation"), sort_keys=True) != json.dumps(settings, sort_keys=True):
        diff.append("evaluation settings")
    mine, theirs = run["config"], old["config"]
    prune = [k for k in mine.get("regularize", {}) if k.startswith("prune")]
    same = _config_key(mine) == _config_key(theirs)
    if not same and _config_key(mine, prune) != _config_key(theirs, prune):
        diff.append("config (beyond PRUNE at the end)")
    regs = [comparable_config(c)["regularize"] for c in (mine, theirs)]
    at_end = [not r.get("prune") or r.get("prune_when") == "end" for r in regs]
    if not same and not all(at_end):
        diff.append("config (PRUNE after every batch acts from the first batch)")
    if diff:
        raise cli.UserError(
            f"{flag}: that run differs from this one in {', '.join(diff)}, so its first batches "
            "are not this run's (fix: fork from a run with the same model, data, batches, "
            "evaluation flags and config, or drop --fork_from)"
        )
    num_batches = -(-n // FLAGS.batch_size)
    limit = num_batches if same else num_batches - 1  # PRUNE at the end: before the last batch
    have = checkpoint.steps(parent / CHECKPOINT_DIR)
    usable = [k for k in have if 1 <= k <= limit]
    k = FLAGS.fork_at if FLAGS.fork_at is not None else (usable[-1] if usable else None)
    if k not in usable:
        raise cli.UserError(
            f"--fork_at={k}: {flag} has checkpoint steps {have or 'none'}, and this run can start "
            f"from steps 1..{limit} of it (fix: pass --fork_at=<one of "
            f"{usable or 'none: rerun the parent with a checkpoint there'}>)"
        )
    record = {"workdir": str(parent), "batches": k, "label": old.get("label")}
    return {
        "checkpoint": ("orbax", parent / CHECKPOINT_DIR, k),
        "baseline": base,
        "fork": {"record": record, "dir": parent, "batches": k},
    }


def copy_fork(workdir: Path, fork: dict) -> None:
    """Copies what the first `fork["batches"]` batches of the parent run wrote into `workdir`."""
    if not writer():
        return
    parent, k = fork["dir"], fork["batches"]
    if (parent / "baseline.json").exists():
        shutil.copyfile(parent / "baseline.json", workdir / "baseline.json")
    for name in FORK_ROWS:
        rows = [r for r in read_jsonl(parent / name) if r["batch"] < k]
        if rows:
            write_jsonl(workdir / name, rows)
    done_edits = k * FLAGS.batch_size
    (workdir / "snapshots").mkdir(exist_ok=True)
    for snap in sorted((parent / "snapshots").glob("edits_*.npz")):
        if int(snap.stem.split("_")[1]) <= done_edits:
            shutil.copyfile(snap, workdir / "snapshots" / snap.name)
    (workdir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    shutil.copytree(parent / CHECKPOINT_DIR / str(k), workdir / CHECKPOINT_DIR / str(k))
    logging.info("forked from %s after %d batches (%d edits)", parent, k, done_edits)


# PRUNE at the end (regularize.prune_when="end"): it runs right after the last batch is applied, as
# the official driver does, so that batch's line, snapshot, downstream point, checkpoint and the
# final metrics all see the pruned model. The checkpoint after the last batch holds the pruned
# kernels and the marker "prune_applied": a resume from it skips the loop (PRUNE is not applied
# again); a run killed before it redoes the last batch from the step before, PRUNE included.


def prune_at_end(ed: editor.Editor, state, last: bool):
    """(state, {"prune": record}) after PRUNE when this is the last batch and PRUNE runs at the
    end; else (state, {})."""
    if not (last and ed.prunes_at_end):
        return state, {}
    t0 = time.perf_counter()
    state, info = ed.prune(state)
    logging.info("PRUNE after the last batch: %s", info)
    return state, {"prune": {"layers": info, "time_s": time.perf_counter() - t0}}


def prune_marker(pruned: dict) -> dict:
    return {"prune_applied": True} if pruned else {}


def check_prune_resume(ed: editor.Editor, done: int, meta: dict, workdir: Path, n: int) -> None:
    """A checkpoint after the last batch of a PRUNE-at-end run must hold the pruned model."""
    if ed.prunes_at_end and done * FLAGS.batch_size >= n and not meta.get("prune_applied"):
        raise cli.UserError(
            f"the checkpoint after the last batch in {workdir / CHECKPOINT_DIR} holds no PRUNE "
            "(fix: delete that step folder to redo the last batch with PRUNE, or --overwrite)"
        )


def _finite_list(values) -> list:
    """Floats for JSON, None for NaN (a record without prompts of that kind)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


def sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


if __name__ == "__main__":
    cli.run(main)
