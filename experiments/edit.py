"""Sequential editing run: load a model and its key statistics, edit a dataset slice batch by batch.

    python experiments/edit.py --config=configs/encore_smollm2.py \
        --data_path=../shared/data/counterfact/counterfact-edit.json --num_edits=100 --batch_size=10 \
        --stats_text=../shared/data/text/wikitext-2-raw.wiki.test.raw --workdir=runs/encore

Writes `{workdir}/run.json` (config, templates, model, data), one JSON line per batch to
`{workdir}/batches.jsonl` (times, search steps, target probabilities, norms), `{workdir}/final.json`
(CounterFact scores of the edited records before/after), optional per-batch arrays to `--dump_dir` and the
edited model to `--export_dir`. Bad input exits non-zero before any edit, and no model is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import jaxedit
from jaxedit import config as config_lib
from jaxedit import editor, hub, metrics, stats, templates
from jaxedit import requests as requests_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/encore_smollm2.py", "A configs/*.py file.")
flags.DEFINE_string("model", None, "Preset, HF directory or GGUF path (default: the config's).")
flags.DEFINE_enum("method", None, list(config_lib.METHODS), "Override the config's method.")
flags.DEFINE_string("hparams_json", None, "The authors' hparams JSON (overrides the config).")
flags.DEFINE_string("requests", None, "JSON/JSONL file of requests in any accepted layout.")
flags.DEFINE_string("data_path", None, "Dataset file (CounterFact/zsRE) to slice with --start/--num_edits.")
flags.DEFINE_integer("start", 0, "First record of --data_path.")
flags.DEFINE_integer("num_edits", 100, "Records to edit from --data_path.")
flags.DEFINE_integer("batch_size", 10, "Requests per sequential batch.")
flags.DEFINE_string("templates", None, "JSON file of fixed context templates (nested-list form).")
flags.DEFINE_string("stats_text", None, "Corpus for C0: .txt (blank-line separated), .jsonl, folder, "
                    "or a raw WikiText file.")
flags.DEFINE_integer("stats_samples", None, "Use the first N documents of the corpus.")
flags.DEFINE_string("stats_npz", None, "Directory of MEMIT's published statistics files to import "
                    "(`*.{layer}.mlp.*_float32_mom2_{N}.npz`); other layers are computed.")
flags.DEFINE_string("stats_dir", None, "Cache directory for statistics (default: $JAXEDIT_CACHE/stats).")
flags.DEFINE_string("dump_dir", None, "Write batch_{k:03d}.npz arrays here.")
flags.DEFINE_string("export_dir", None, "Write the edited model here (Hugging Face format).")
flags.DEFINE_string("workdir", None, "Run directory for logs and results.", required=True)
flags.DEFINE_bool("evaluate", True, "Score the edited records before and after (ES/PS/NS).")


def resolve_config() -> config_lib.EditConfig:
    cfg = FLAGS.config
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
    if not cfg.stats.text:
        default = Path(os.environ.get("JAXEDIT_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
        default = default / "text" / "wikitext-2-raw.wiki.test.raw"
        if not default.exists():
            raise app.UsageError("no statistics corpus: pass --stats_text (or set JAXEDIT_DATA)")
        cfg.stats.text = str(default)
    return cfg


def load_all_requests(model) -> list[requests_lib.EditRequest]:
    if bool(FLAGS.requests) == bool(FLAGS.data_path):
        raise app.UsageError("pass exactly one of --requests and --data_path")
    if FLAGS.requests:
        reqs = requests_lib.load_requests(FLAGS.requests)
    else:
        reqs = requests_lib.load_requests(FLAGS.data_path, FLAGS.start, FLAGS.num_edits)
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: must be >= 1")
    # Validate every batch before editing anything (duplicates are checked per batch).
    for k in range(0, len(reqs), FLAGS.batch_size):
        requests_lib.validate_requests(reqs[k : k + FLAGS.batch_size], model.tokenizer,
                                       model.config.max_position_embeddings)
    return reqs


def dump_batch(path: Path, k: int, rep: editor.BatchReport, layers) -> None:
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


def main(argv):
    del argv
    jax.config.update("jax_default_matmul_precision", "highest")
    workdir = Path(FLAGS.workdir)
    cfg = resolve_config()
    model = jaxedit.load(cfg.model)
    cfg.validate(model.config.num_layers)
    reqs = load_all_requests(model)

    if FLAGS.templates:
        tmpl = templates.load_templates(FLAGS.templates)
    elif cfg.templates:
        tmpl = cfg.templates
    else:
        tmpl = templates.generate_templates(model, jax.random.key(cfg.template_seed))
    cfg.templates = tuple(tuple(g) for g in tmpl)
    cfg.validate(model.config.num_layers)

    stats_dir = FLAGS.stats_dir or str(hub.cache_dir() / "stats")
    t0 = time.perf_counter()
    layer_stats = stats.layer_stats(
        model, cfg.layers, cfg.stats.text, num_samples=cfg.stats.num_samples,
        max_length=cfg.stats.max_length, cache_dir=stats_dir,
        null_threshold=cfg.solve.nullspace_threshold if cfg.method == "AlphaEdit" else None,
        memit_dir=FLAGS.stats_npz,
    )
    stats_time = time.perf_counter() - t0
    workdir.mkdir(parents=True, exist_ok=True)
    run = {"config": config_lib.to_dict(cfg), "model": model.source, "num_requests": len(reqs),
           "data": FLAGS.requests or FLAGS.data_path, "start": FLAGS.start,
           "batch_size": FLAGS.batch_size, "stats_time_s": stats_time,
           "devices": [str(d) for d in jax.devices()]}
    (workdir / "run.json").write_text(json.dumps(run, indent=2, default=str))

    before = metrics.counterfact_scores(model, reqs)["scores"] if FLAGS.evaluate else None
    ed = editor.Editor(model, cfg, layer_stats, cfg.templates)
    state = ed.init_state()
    with open(workdir / "batches.jsonl", "w") as log_file:
        for k in range(0, len(reqs), FLAGS.batch_size):
            batch = reqs[k : k + FLAGS.batch_size]
            state, rep = ed.apply(state, batch)
            line = {"batch": k // FLAGS.batch_size, "num_edits": state.num_edits, **rep.summary(),
                    "time_per_edit_s": (rep.search_time + rep.update_time) / len(batch)}
            log_file.write(json.dumps(line) + "\n")
            log_file.flush()
            logging.info("batch %d: %d edits, search %.1f s, update %.1f s, mean steps %.1f",
                         line["batch"], state.num_edits, rep.search_time, rep.update_time,
                         float(np.mean(rep.stop_steps)))
            if FLAGS.dump_dir:
                dump_batch(Path(FLAGS.dump_dir), k // FLAGS.batch_size, rep, cfg.layers)
    edited = ed.edited_model(state)
    final = {"num_edits": state.num_edits}
    if FLAGS.evaluate:
        final["before"] = before
        final["after"] = metrics.counterfact_scores(edited, reqs)["scores"]
        logging.info("CounterFact scores before %s after %s", before, final["after"])
    (workdir / "final.json").write_text(json.dumps(final, indent=2))
    if FLAGS.export_dir:
        jaxedit.save_hf(edited, FLAGS.export_dir)
        logging.info("exported the edited model to %s", FLAGS.export_dir)
    print(json.dumps(final))


if __name__ == "__main__":
    try:
        app.run(main)
    except (requests_lib.RequestError, editor.EditError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
