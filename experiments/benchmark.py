"""Editing speed on SmolLM2 with the reference measurement's settings (shared/BENCHMARKS.md),
side by side.

Settings as the reference: CounterFact records 0..N-1 of counterfact-edit.json edited sequentially,
layers 4-8, the paper's Llama-3-8B hyperparameters, the six fixed context templates of the golden
run, C0 from the 2,185 WikiText-2 paragraphs. Per configuration it prints and writes (JSON) seconds
per edit (search and update separately, mean over batches, and the steady state without the first
batch, which includes XLA compilation), mean search steps, final mean target probability and
ES/PS/NS of the edited records after the run.

    python experiments/benchmark.py --out=bench.json                      # everything (long)
    python experiments/benchmark.py --methods=ENCORE --batch_sizes=10     # one row
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cli  # experiments/cli.py: the user-error rule
import console  # experiments/console.py: --help sections, --verbose, start-up noise kept off
import jax
import numpy as np
from absl import flags, logging

import jaxedit
from jaxedit import editor, files, hparams, hub, metrics, stats
from jaxedit import requests as requests_lib

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
SHARED = paths.shared_dir()
flags.DEFINE_list("methods", ["MEMIT", "MEMIT+MPES", "ENCORE", "AlphaEdit"], "Rows to measure.")
flags.DEFINE_list("batch_sizes", ["10", "100", "1"], "Batch sizes.")
flags.DEFINE_integer("num_edits", 100, "Records edited per configuration.")
flags.DEFINE_integer(
    "num_edits_bs1", 20, "Records edited at batch size 1 (time per edit is a mean)."
)
flags.DEFINE_string(
    "data_path", None, "CounterFact (default: the 'counterfact-edit' dataset, local or fetched)."
)
flags.DEFINE_string(
    "stats_text", None, "C0 corpus (default: the 'wikitext-2-raw-test' dataset, local or fetched)."
)
flags.DEFINE_string("golden", str(SHARED / "golden/meta.json"), "For the fixed context templates.")
flags.DEFINE_string("out", "benchmark.json", "Where to write the JSON results.")
flags.DEFINE_bool("evaluate", True, "Also compute ES/PS/NS after the run.")
__doc__ = console.help_sections(
    __doc__,
    [
        ("what to measure", ["methods", "batch_sizes", "num_edits", "num_edits_bs1", "evaluate"]),
        ("inputs", ["data_path", "stats_text", "golden"]),
        ("output", ["out", "verbose"]),
    ],
    footer="""
--out gets one JSON object, rewritten after every row: "rows" (per method and batch size: row,
batch_size, num_edits, s_per_edit, search, update, their steady_* values without the first batch,
teacher (LTI's teacher pass, part of search; steady_teacher), steps, prob and, with --evaluate,
the ES/PS/NS scores), "reference" (the reference's figures), "stats_time_s", "device",
"cpu_count". The table is printed to stdout as it fills.""",
)

# The reference's figures (shared/BENCHMARKS.md; batches of 10, 100 edits, 2 CPU cores).
REFERENCE = {
    "MEMIT": dict(
        s_per_edit=18.27, search=16.88, update=1.38, steps=22.9, prob=0.975, ES=59, PS=54, NS=65
    ),
    "MEMIT+MPES": dict(
        s_per_edit=8.69, search=7.38, update=1.31, steps=10.6, prob=0.648, ES=49, PS=49, NS=65
    ),
    "ENCORE": dict(
        s_per_edit=8.83, search=7.48, update=1.34, steps=10.6, prob=0.648, ES=48, PS=49, NS=65
    ),
    "AlphaEdit": dict(
        s_per_edit=18.45, search=17.09, update=1.36, steps=24.0, prob=0.220, ES=74, PS=62, NS=67
    ),
}


# Rows with no reference figure: LTI's search (the official Llama-3-8B MEMIT_lti setting, 30 steps,
# no MPES) with the teacher read at the official (misaligned) or the aligned positions.
EXTRA_ROWS = ("MEMIT_seq", "EMMET", "MEMIT+LTI", "MEMIT+LTI:aligned")


def config_for(row: str):
    """The reference rows: ENC's MEMIT (sequential), MEMIT + MPES(-2), ENCORE, AlphaEdit; and
    MEMIT + LTI in either teacher mode."""
    if row.startswith("MEMIT+LTI"):
        cfg = hparams.lti_config("MEMIT_lti", "llama3_8b")
        cfg.search.teacher_positions = "aligned" if row.endswith(":aligned") else "official"
        return cfg
    if row == "MEMIT":
        return hparams.paper_config("MEMIT_seq", "llama3_8b")
    if row == "MEMIT+MPES":
        cfg = hparams.paper_config("MEMIT_seq", "llama3_8b")
        cfg.search.mpes_patience = 2
        return cfg
    return hparams.paper_config(row, "llama3_8b")


def run_one(model, row, batch_size, reqs, templates, layer_stats) -> dict:
    cfg = config_for(row)
    cfg.templates = templates
    ed = editor.Editor(model, cfg, layer_stats, templates)
    state = ed.init_state()
    per_batch = []
    for k in range(0, len(reqs), batch_size):
        batch = reqs[k : k + batch_size]
        state, rep = ed.apply(state, batch)
        per_batch.append(
            dict(
                n=len(batch),
                search=rep.search_time,
                update=rep.update_time,
                teacher=rep.teacher_time,
                steps=rep.stop_steps.tolist(),
                prob=rep.target_prob.tolist(),
            )
        )
        logging.info(
            "%s bs=%d batch %d: search %.2f s update %.2f s",
            row,
            batch_size,
            k // batch_size,
            rep.search_time,
            rep.update_time,
        )

    def per_edit(batches, key):
        return float(np.mean([b[key] / b["n"] for b in batches])) if batches else float("nan")

    steady = per_batch[1:]
    out = dict(
        row=row,
        batch_size=batch_size,
        num_edits=len(reqs),
        s_per_edit=per_edit(per_batch, "search") + per_edit(per_batch, "update"),
        search=per_edit(per_batch, "search"),
        update=per_edit(per_batch, "update"),
        steady_s_per_edit=per_edit(steady, "search") + per_edit(steady, "update"),
        steady_search=per_edit(steady, "search"),
        steady_update=per_edit(steady, "update"),
        teacher=per_edit(per_batch, "teacher"),
        steady_teacher=per_edit(steady, "teacher"),
        steps=float(np.mean([s for b in per_batch for s in b["steps"]])),
        prob=float(np.mean([p for b in per_batch for p in b["prob"]])),
    )
    if FLAGS.evaluate:
        out.update(metrics.counterfact_scores(ed.edited_model(state), reqs)["scores"])
    return out


def check_inputs():
    """Flags and files, before the model is fetched and loaded: (requests, templates, corpus)."""
    rows = [*REFERENCE, *EXTRA_ROWS]
    for row in FLAGS.methods:
        if row not in rows:
            raise cli.UserError(
                f"--methods: unknown row {row!r} (fix: comma-separated, from {', '.join(rows)})"
            )
    for text in FLAGS.batch_sizes:
        if not text.strip().isdigit() or int(text) < 1:
            raise cli.UserError(
                f"--batch_sizes={','.join(FLAGS.batch_sizes)}: {text!r} is not a batch size "
                "(fix: comma-separated integers >= 1, e.g. 10,100,1)"
            )
    for name in ("num_edits", "num_edits_bs1"):
        if FLAGS[name].value < 1:
            raise cli.UserError(f"--{name}={FLAGS[name].value}: out of range (fix: pass >= 1)")
    if Path(FLAGS.out).is_dir():
        raise cli.UserError(f"--out={FLAGS.out} is a directory (fix: pass a .json file path)")
    golden = files.read_json(
        FLAGS.golden,
        "golden file",
        "pass --golden=<shared>/golden/meta.json (the reference's golden run), or set "
        "JAXEDIT_SHARED",
    )
    groups = golden.get("context_templates") if isinstance(golden, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise cli.UserError(
            f"--golden={FLAGS.golden} has no context_templates list (fix: pass the golden "
            "meta.json of the reference run)"
        )
    reqs = requests_lib.load_requests(
        paths.dataset("counterfact-edit", FLAGS.data_path, flag="--data_path"), 0, FLAGS.num_edits
    )
    text = paths.dataset("wikitext-2-raw-test", FLAGS.stats_text, flag="--stats_text")
    stats.read_corpus(text, 1)  # exists and holds a document
    return reqs, tuple(tuple(g) for g in groups), text


def main(argv):
    del argv
    reqs, templates, stats_text = check_inputs()
    model = jaxedit.load("smollm2-135m")
    t0 = time.perf_counter()
    layer_stats = stats.layer_stats(
        model,
        (4, 5, 6, 7, 8),
        stats_text,
        num_samples=2185,
        cache_dir=hub.cache_dir() / "stats",
        null_threshold=2e-2,
    )
    results = {
        "stats_time_s": time.perf_counter() - t0,
        "rows": [],
        "reference": REFERENCE,
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
    }
    header = (
        f"{'row':<17} {'bs':>4} {'edits':>5} {'s/edit':>7} {'search':>7} {'update':>7} "
        f"{'steady':>7} {'teacher':>7} "
        f"{'steps':>6} {'prob':>6} {'ES':>5} {'PS':>5} {'NS':>5} | ref s/edit steps ES"
    )
    print(header)
    for bs in map(int, FLAGS.batch_sizes):
        for row in FLAGS.methods:
            n = FLAGS.num_edits_bs1 if bs == 1 else FLAGS.num_edits
            r = run_one(model, row, bs, reqs[:n], templates, layer_stats)
            results["rows"].append(r)
            ref = REFERENCE.get(row, {})
            print(
                f"{row:<17} {bs:>4} {n:>5} {r['s_per_edit']:7.2f} {r['search']:7.2f} "
                f"{r['update']:7.2f} "
                f"{r['steady_s_per_edit']:7.2f} {r['steady_teacher']:7.3f} {r['steps']:6.1f} "
                f"{r['prob']:6.3f} "
                f"{r.get('ES', float('nan')):5.0f} {r.get('PS', float('nan')):5.0f} "
                f"{r.get('NS', float('nan')):5.0f} | {ref.get('s_per_edit', float('nan')):6.2f} "
                f"{ref.get('steps', float('nan')):5.1f} {ref.get('ES', float('nan')):3}",
                flush=True,
            )
            Path(FLAGS.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
