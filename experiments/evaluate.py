r"""Editing-quality evaluation of a model (unedited, or exported by `edit.py --export_dir`).

    python experiments/evaluate.py --model=smollm2-135m --dataset=counterfact \
        --data_path=../shared/data/counterfact/counterfact-edit.json \
        --num_records=200 --out=eval.json

CounterFact: per record `case_id` and, for each of `rewrite_prompts`, `paraphrase_prompts`,
`neighborhood_prompts`, one `{"target_new": NLL, "target_true": NLL}` per prompt (mean per-token
NLL, reference §6.3), plus the summary scores (ES/PS/NS, their _acc and _diff variants, S). zsRE:
teacher-forced token accuracies (reference §6.4).

Downstream few-shot tasks (reference §7, `jaxedit.downstream`), with or without the editing metrics:

    python experiments/evaluate.py --model=smollm2-135m --downstream=sst2,mrpc --out=glue.json \
        [--num_tests=100 --num_few_shots=4 --quirks=clean --mmlu_dir=../shared/data/mmlu]

The output then has "downstream": {"settings": {...}, "results": {task: {"f1", "f1_new", ...}}}.
CounterFact/zsRE scoring runs only when --data_path is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cli  # experiments/cli.py: the user-error rule
import console  # experiments/console.py: --help sections, --verbose, start-up noise kept off
import jax
from absl import flags, logging

import jaxedit
from jaxedit import downstream, heldout, metrics
from jaxedit import requests as requests_lib

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
cli.define_mesh_flags()
flags.DEFINE_string(
    "model", "smollm2-135m", "Preset, HF directory (e.g. from edit.py --export_dir) or GGUF."
)
flags.DEFINE_enum("dataset", "counterfact", ["counterfact", "zsre"], "Which metrics.")
flags.DEFINE_string(
    "data_path", None, "The dataset file; CounterFact/zsRE scoring runs only with it."
)
flags.DEFINE_integer("start", 0, "First record.", lower_bound=0)
flags.DEFINE_integer("num_records", 200, "Records to evaluate.", lower_bound=1)
flags.DEFINE_string("out", None, "Output JSON.", required=True)
flags.DEFINE_string(
    "perplexity_text",
    None,
    "Held-out text for NLL / perplexity with a bootstrap CI over documents (e.g. "
    "wikitext-2.valid.tokens.txt: paragraphs, headings dropped; or a .txt/.jsonl corpus).",
)
flags.DEFINE_integer(
    "perplexity_docs", 200, "Documents of --perplexity_text to score.", lower_bound=1
)
flags.DEFINE_integer(
    "perplexity_max_length",
    1024,
    "Tokens per held-out document (longer ones are cut).",
    lower_bound=2,
)
flags.DEFINE_string(
    "downstream",
    None,
    "Comma-separated downstream tasks ("
    + ",".join(downstream.TASK_NAMES)
    + "; unique substrings such as 'sst' accepted).",
)
flags.DEFINE_integer(
    "num_tests", 100, "Downstream tests per task (full MMLU: in total).", lower_bound=1
)
flags.DEFINE_integer(
    "num_few_shots",
    4,
    "Downstream few-shots (<= 10).",
    lower_bound=0,
    upper_bound=downstream.FEW_SHOT_POOL,
)
flags.DEFINE_integer(
    "gen_len",
    downstream.DEFAULT_GEN_LEN,
    "Greedy tokens for the downstream generation prediction.",
    lower_bound=1,
)
flags.DEFINE_enum(
    "quirks",
    "clean",
    list(downstream.QUIRKS),
    "clean, or reference: reproduce the reference's prompt/parse oddities.",
)
flags.DEFINE_string(
    "mmlu_dir",
    None,
    "Full MMLU folder (dev/, test/ CSVs); default: the few-shot mmlu.json in --downstream_data.",
)
flags.DEFINE_string(
    "downstream_data",
    None,
    "Folder with the downstream {task}.json files (default "
    "$JAXEDIT_DATA/downstream, else ../shared/data/downstream, else downloaded once).",
)
flags.DEFINE_integer(
    "downstream_batch_size", 16, "Prompts per model call in downstream evaluation.", lower_bound=1
)
__doc__ = console.help_sections(
    __doc__,
    [
        ("model and output", ["model", "out"]),
        ("held-out perplexity", ["perplexity_text", "perplexity_docs", "perplexity_max_length"]),
        ("devices and hosts", ["mesh", "coordinator", "num_processes", "process_id"]),
        ("editing metrics (CounterFact/zsRE)", ["data_path", "dataset", "start", "num_records"]),
        (
            "downstream tasks",
            [
                "downstream",
                "num_tests",
                "num_few_shots",
                "gen_len",
                "quirks",
                "mmlu_dir",
                "downstream_data",
                "downstream_batch_size",
            ],
        ),
        ("console", ["verbose"]),
    ],
    footer="""
--out gets one JSON object: "model"; with --data_path also "dataset", "data_path", "start",
"num_records", "scores" (ES/PS/NS/S with their _acc and _diff variants; zsRE: efficacy,
generalization, specificity), "time_s" and "records" (per record its case_id and, per prompt set,
the NLL pairs or token accuracies); with --downstream also "downstream": {"settings", "results":
{task: f1, f1_new, mcc, correct, invalid, total, time_s, ...}}. A summary is printed to stdout;
progress goes to stderr (a bar on a terminal, else a line every 30 s).""",
)

SET_NAMES = {
    "rewrite": "rewrite_prompts",
    "paraphrase": "paraphrase_prompts",
    "neighborhood": "neighborhood_prompts",
}


def downstream_data_dir() -> Path:
    if FLAGS.downstream_data:
        return Path(FLAGS.downstream_data)
    return paths.dataset("downstream", flag="--downstream_data")


def run_downstream(model) -> dict:
    tasks = downstream.resolve_tasks(FLAGS.downstream)
    settings = {
        "tasks": tasks,
        "num_tests": FLAGS.num_tests,
        "num_few_shots": FLAGS.num_few_shots,
        "gen_len": FLAGS.gen_len,
        "quirks": FLAGS.quirks,
        "data_dir": str(downstream_data_dir()),
        "mmlu_source": FLAGS.mmlu_dir or "fewshot",
        "batch_size": FLAGS.downstream_batch_size,
        "max_context": model.config.max_position_embeddings,
    }
    results = downstream.evaluate_downstream(  # logs each task's scores and time
        model,
        tasks,
        downstream_data_dir(),
        num_tests=FLAGS.num_tests,
        num_few_shots=FLAGS.num_few_shots,
        gen_len=FLAGS.gen_len,
        quirks=FLAGS.quirks,
        mmlu_source=FLAGS.mmlu_dir or "fewshot",
        batch_size=FLAGS.downstream_batch_size,
    )
    return {"settings": settings, "results": results}


def check_inputs() -> list[requests_lib.EditRequest]:
    """Every flag and input file, before the model is loaded; returns the parsed records."""
    if not FLAGS.data_path and not FLAGS.downstream and not FLAGS.perplexity_text:
        raise cli.UserError(
            "nothing to evaluate (fix: give --data_path (CounterFact/zsRE metrics), "
            "--downstream=TASKS (few-shot downstream tasks) and/or --perplexity_text=FILE)"
        )
    if FLAGS.perplexity_text and not Path(FLAGS.perplexity_text).exists():
        raise cli.UserError(
            f"--perplexity_text={FLAGS.perplexity_text}: no such file (fix: pass held-out text, "
            "e.g. ../shared/data/text/wikitext-2.valid.tokens.txt)"
        )
    if Path(FLAGS.out).is_dir():
        raise cli.UserError(f"--out={FLAGS.out} is a directory (fix: pass a .json file path)")
    if FLAGS.downstream:
        tasks = downstream.resolve_tasks(FLAGS.downstream)  # a bad name fails here
        if not FLAGS.mmlu_dir and not downstream_data_dir().is_dir():
            raise cli.UserError(
                f"downstream data folder {downstream_data_dir()} not found (fix: pass "
                "--downstream_data or set JAXEDIT_DATA)"
            )
        downstream.check_data(
            tasks,
            downstream_data_dir(),
            num_tests=FLAGS.num_tests,
            num_few_shots=FLAGS.num_few_shots,
            mmlu_source=FLAGS.mmlu_dir or "fewshot",
        )
    if not FLAGS.data_path:
        return []
    zsre_target = "answers" if FLAGS.dataset == "zsre" else "alt"
    reqs = requests_lib.load_requests(
        FLAGS.data_path, FLAGS.start, FLAGS.num_records, zsre_target=zsre_target
    )
    other = sorted({r.layout for r in reqs if (r.layout == "zsre") != (FLAGS.dataset == "zsre")})
    if other:
        right = "zsre" if other == ["zsre"] else "counterfact"
        raise cli.UserError(
            f"--dataset={FLAGS.dataset} but --data_path={FLAGS.data_path} holds {other[0]} "
            f"records (fix: --dataset={right}, or pass a {FLAGS.dataset} file)"
        )
    return reqs


def main(argv):
    del argv
    reqs = check_inputs()
    cli.start_processes()
    writer = jax.process_index() == 0  # a multi-host run: process 0 writes and prints
    if not writer:
        logging.set_verbosity(logging.ERROR)
    model = cli.shard_model(jaxedit.load(FLAGS.model))
    if model.tokenizer is None:
        raise cli.UserError(
            f"--model={FLAGS.model} has no tokenizer (fix: save the tokenizer files beside the "
            "weights, e.g. tokenizer.save_pretrained(dir))"
        )
    out = {"model": model.source}
    if FLAGS.data_path:
        out.update(edit_metrics(model, reqs))
    if FLAGS.downstream:
        out["downstream"] = run_downstream(model)
    if FLAGS.perplexity_text:
        t0 = time.perf_counter()
        texts = heldout.load(
            model.tokenizer,
            FLAGS.perplexity_text,
            FLAGS.perplexity_docs,
            max_length=min(FLAGS.perplexity_max_length, model.config.max_position_embeddings),
        )
        res = heldout.measure(model, texts)
        res["time_s"] = time.perf_counter() - t0
        out.update(res)
        logging.info(
            "held-out NLL %.4f (95%% CI %.4f-%.4f), perplexity %.3f over %d tokens of %d documents",
            res["nll"],
            *res["nll_ci"],
            res["perplexity"],
            res["tokens"],
            res["docs"],
        )
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    if writer:
        Path(FLAGS.out).write_text(json.dumps(out, indent=1))
    summary = {}
    if FLAGS.data_path:
        logging.info("scores: %s", out["scores"])
        summary["scores"] = out["scores"]
    if FLAGS.downstream:
        summary["downstream"] = {
            t: {k: r[k] for k in ("f1", "f1_new", "mcc", "correct", "invalid", "total", "time_s")}
            for t, r in out["downstream"]["results"].items()
        }
    if FLAGS.perplexity_text:
        summary.update({k: out[k] for k in ("perplexity", "nll", "nll_ci", "tokens")})
    if writer:
        print(json.dumps(summary))


def edit_metrics(model, reqs: list[requests_lib.EditRequest]) -> dict:
    t0 = time.perf_counter()
    if FLAGS.dataset == "counterfact":
        res = metrics.counterfact_scores(model, reqs)
        records = [
            {
                "case_id": r.case_id,
                **{
                    SET_NAMES[name]: [
                        {"target_new": p["target_new"], "target_true": p["target_true"]}
                        for p in res["records"][name][j]
                    ]
                    for name in SET_NAMES
                },
            }
            for j, r in enumerate(reqs)
        ]
    else:
        res = metrics.zsre_scores(model, reqs)
        records = [
            {"case_id": r.case_id, **{SET_NAMES[n]: res["records"][n][j] for n in SET_NAMES}}
            for j, r in enumerate(reqs)
        ]
    return {
        "dataset": FLAGS.dataset,
        "data_path": FLAGS.data_path,
        "start": FLAGS.start,
        "num_records": len(reqs),
        "scores": res["scores"],
        "time_s": time.perf_counter() - t0,
        "records": records,
    }


if __name__ == "__main__":
    cli.run(main)
