"""Editing-quality evaluation of a model (unedited, or exported by `edit.py --export_dir`).

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

from absl import app, flags, logging

import jaxedit
from jaxedit import downstream, metrics
from jaxedit import requests as requests_lib

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "smollm2-135m", "Preset, HF directory (e.g. from edit.py --export_dir) or GGUF."
)
flags.DEFINE_enum("dataset", "counterfact", ["counterfact", "zsre"], "Which metrics.")
flags.DEFINE_string(
    "data_path", None, "The dataset file; CounterFact/zsRE scoring runs only with it."
)
flags.DEFINE_integer("start", 0, "First record.")
flags.DEFINE_integer("num_records", 200, "Records to evaluate.")
flags.DEFINE_string("out", None, "Output JSON.", required=True)
flags.DEFINE_string(
    "downstream",
    None,
    "Comma-separated downstream tasks ("
    + ",".join(downstream.TASK_NAMES)
    + "; unique substrings such as 'sst' accepted).",
)
flags.DEFINE_integer("num_tests", 100, "Downstream tests per task (full MMLU: in total).")
flags.DEFINE_integer("num_few_shots", 4, "Downstream few-shots (<= 10).")
flags.DEFINE_integer(
    "gen_len", downstream.DEFAULT_GEN_LEN, "Greedy tokens for the downstream generation prediction."
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
    "$JAXEDIT_DATA/downstream, else ../shared/data/downstream).",
)
flags.DEFINE_integer(
    "downstream_batch_size", 16, "Prompts per model call in downstream evaluation."
)

SET_NAMES = {
    "rewrite": "rewrite_prompts",
    "paraphrase": "paraphrase_prompts",
    "neighborhood": "neighborhood_prompts",
}


def downstream_data_dir() -> Path:
    if FLAGS.downstream_data:
        return Path(FLAGS.downstream_data)
    return paths.data_dir() / "downstream"


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


def main(argv):
    del argv
    if not FLAGS.data_path and not FLAGS.downstream:
        raise app.UsageError(
            "nothing to evaluate: give --data_path (CounterFact/zsRE metrics) "
            "and/or --downstream=TASKS (few-shot downstream tasks)"
        )
    if FLAGS.downstream:
        try:  # fail on a bad name before loading the model
            downstream.resolve_tasks(FLAGS.downstream)
        except ValueError as err:
            raise app.UsageError(str(err)) from err
        if not FLAGS.mmlu_dir and not downstream_data_dir().is_dir():
            raise app.UsageError(
                f"downstream data folder {downstream_data_dir()} not found: pass "
                "--downstream_data or set JAXEDIT_DATA"
            )
    model = jaxedit.load(FLAGS.model)
    out = {"model": model.source}
    if FLAGS.data_path:
        out.update(edit_metrics(model))
    if FLAGS.downstream:
        out["downstream"] = run_downstream(model)
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
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
    print(json.dumps(summary))


def edit_metrics(model) -> dict:
    zsre_target = "answers" if FLAGS.dataset == "zsre" else "alt"
    reqs = requests_lib.load_requests(
        FLAGS.data_path, FLAGS.start, FLAGS.num_records, zsre_target=zsre_target
    )
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
    app.run(main)
