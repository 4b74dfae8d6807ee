"""Editing-quality evaluation of a model (unedited, or exported by `edit.py --export_dir`).

    python experiments/evaluate.py --model=smollm2-135m --dataset=counterfact \
        --data_path=../shared/data/counterfact/counterfact-edit.json --num_records=200 --out=eval.json

CounterFact: per record `case_id` and, for each of `rewrite_prompts`, `paraphrase_prompts`,
`neighborhood_prompts`, one `{"target_new": NLL, "target_true": NLL}` per prompt (mean per-token NLL,
SPEC §6.3), plus the summary scores (ES/PS/NS, their _acc and _diff variants, S). zsRE: teacher-forced
token accuracies (SPEC §6.4).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from absl import app, flags, logging

import jaxedit
from jaxedit import metrics
from jaxedit import requests as requests_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "Preset, HF directory (e.g. from edit.py --export_dir) or GGUF.")
flags.DEFINE_enum("dataset", "counterfact", ["counterfact", "zsre"], "Which metrics.")
flags.DEFINE_string("data_path", None, "The dataset file.", required=True)
flags.DEFINE_integer("start", 0, "First record.")
flags.DEFINE_integer("num_records", 200, "Records to evaluate.")
flags.DEFINE_string("out", None, "Output JSON.", required=True)

SET_NAMES = {"rewrite": "rewrite_prompts", "paraphrase": "paraphrase_prompts",
             "neighborhood": "neighborhood_prompts"}


def main(argv):
    del argv
    jax.config.update("jax_default_matmul_precision", "highest")
    model = jaxedit.load(FLAGS.model)
    zsre_target = "answers" if FLAGS.dataset == "zsre" else "alt"
    reqs = requests_lib.load_requests(FLAGS.data_path, FLAGS.start, FLAGS.num_records,
                                      zsre_target=zsre_target)
    t0 = time.perf_counter()
    if FLAGS.dataset == "counterfact":
        res = metrics.counterfact_scores(model, reqs)
        records = [
            {"case_id": r.case_id,
             **{SET_NAMES[name]: [{"target_new": p["target_new"], "target_true": p["target_true"]}
                                  for p in res["records"][name][j]] for name in SET_NAMES}}
            for j, r in enumerate(reqs)
        ]
    else:
        res = metrics.zsre_scores(model, reqs)
        records = [{"case_id": r.case_id, **{SET_NAMES[n]: res["records"][n][j] for n in SET_NAMES}}
                   for j, r in enumerate(reqs)]
    out = {"model": model.source, "dataset": FLAGS.dataset, "data_path": FLAGS.data_path,
           "start": FLAGS.start, "num_records": len(reqs), "scores": res["scores"],
           "time_s": time.perf_counter() - t0, "records": records}
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(json.dumps(out, indent=1))
    logging.info("scores: %s", res["scores"])
    print(json.dumps(res["scores"]))


if __name__ == "__main__":
    app.run(main)
