"""Hyperparameter search for SmolLM2-135M: 100 sequential CounterFact edits per setting,
scored by ES/PS/NS.

Each setting is `name:field=value,field=value` over the ENCORE/Llama-3-8B base config, e.g.
`lam2000:solve.cov_weight=2000`. Results go to `--out` (JSONL, one line per setting), and
WORKSPACE.md records what was tried.

    python experiments/tune_smollm2.py --settings="base:,w2k:solve.cov_weight=2000" --out=tune.jsonl
"""

from __future__ import annotations

import json
import time

import cli  # experiments/cli.py: the user-error rule
import console  # experiments/console.py: --help sections, --verbose, start-up noise kept off
import numpy as np
from absl import flags, logging

import jaxedit
from jaxedit import editor, files, hparams, hub, metrics, overrides, stats
from jaxedit import requests as requests_lib

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
SHARED = paths.shared_dir()
flags.DEFINE_string("settings", "base:", "Comma-separated name:field=value;field=value settings.")
flags.DEFINE_string("method", "ENCORE", "Base method.")
flags.DEFINE_integer("num_edits", 100, "Records edited per setting.")
flags.DEFINE_integer("batch_size", 10, "Sequential batch size.")
flags.DEFINE_string("out", "tune.jsonl", "Results (JSONL).")
__doc__ = console.help_sections(
    __doc__,
    [
        ("the search", ["settings", "method", "num_edits", "batch_size"]),
        ("output", ["out", "verbose"]),
    ],
    footer="""
--out gets one JSON line per setting, appended (and printed): name, setting, scores (ES/PS/NS/S
after the edits), unedited (the same before), time_s, mean_steps, mean_prob and drift (the
Frobenius norm of each edited layer's change).""",
)


def parse_setting(text: str):
    """`name:field=value;field=value` -> (name, validated config). Values are parsed by the field's
    type (`jaxedit.overrides`); layer lists may be written 4/5/6 as well as 4-8."""
    name, _, assigns = text.partition(":")
    if not name.strip():
        raise cli.UserError(f"--settings: {text!r} has no name (fix: write name:field=value;...)")
    cfg = hparams.smollm2_config(FLAGS.method)
    for assign in filter(None, assigns.split(";")):
        path, eq, value = assign.partition("=")
        if not eq:
            raise cli.UserError(
                f"--settings: {assign!r} in setting {name!r} is not field=value "
                "(fix: e.g. solve.cov_weight=2000)"
            )
        path = path.strip()
        if path == "layers":
            value = value.replace("/", ",")
        try:
            cfg = overrides.override(cfg, path, value)
        except overrides.OverrideError as err:
            why = str(err).removeprefix("--config.")  # the field, as written in --settings
            raise cli.UserError(f"--settings: setting {name!r}: {why}") from None
    cfg.validate()
    return name, cfg


def main(argv):
    del argv
    for flag in ("num_edits", "batch_size"):
        if FLAGS[flag].value < 1:
            raise cli.UserError(f"--{flag}={FLAGS[flag].value}: out of range (fix: pass >= 1)")
    settings = [parse_setting(text) for text in FLAGS.settings.split(",")]  # all, up front
    golden = SHARED / "golden/meta.json"
    meta = files.read_json(golden, "golden file", "set JAXEDIT_SHARED to the shared folder")
    if not isinstance(meta, dict) or not isinstance(meta.get("context_templates"), list):
        raise cli.UserError(f"golden file {golden} has no context_templates (fix: restore it)")
    templates = tuple(tuple(g) for g in meta["context_templates"])
    reqs = requests_lib.load_requests(paths.dataset("counterfact-edit"), 0, FLAGS.num_edits)
    stats.read_corpus(paths.dataset("wikitext-2-raw-test"), 1)  # exists and holds a document
    model = jaxedit.load("smollm2-135m")
    base = metrics.counterfact_scores(model, reqs)["scores"]
    for (name, cfg), text in zip(settings, FLAGS.settings.split(",")):
        cfg.templates = templates
        layers = tuple(sorted(set(cfg.layers)))
        st = stats.layer_stats(
            model,
            layers,
            paths.dataset("wikitext-2-raw-test"),
            num_samples=2185,
            cache_dir=hub.cache_dir() / "stats",
            null_threshold=cfg.solve.nullspace_threshold if cfg.method == "AlphaEdit" else None,
        )
        ed = editor.Editor(model, cfg, st, templates)
        state = ed.init_state()
        t0 = time.perf_counter()
        steps, probs = [], []
        for k in range(0, len(reqs), FLAGS.batch_size):
            state, rep = ed.apply(state, reqs[k : k + FLAGS.batch_size])
            steps += rep.stop_steps.tolist()
            probs += rep.target_prob.tolist()
        scores = metrics.counterfact_scores(ed.edited_model(state), reqs)["scores"]
        norms = {
            l: float(
                np.linalg.norm(
                    np.asarray(
                        ed.edited_model(state).params["model"]["layers"][l]["mlp"]["down_proj"][
                            "kernel"
                        ][...]
                    )
                    - np.asarray(
                        model.params["model"]["layers"][l]["mlp"]["down_proj"]["kernel"][...]
                    )
                )
            )
            for l in cfg.layers
        }
        line = dict(
            name=name,
            setting=text,
            scores=scores,
            unedited=base,
            time_s=time.perf_counter() - t0,
            mean_steps=float(np.mean(steps)),
            mean_prob=float(np.mean(probs)),
            drift=norms,
        )
        logging.info("%s", line)
        print(json.dumps(line), flush=True)
        with open(FLAGS.out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    cli.run(main)
