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

import numpy as np
from absl import app, flags, logging

import jaxedit
from jaxedit import editor, hparams, hub, metrics, stats
from jaxedit import requests as requests_lib

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
SHARED = paths.shared_dir()
flags.DEFINE_string("settings", "base:", "Comma-separated name:field=value;field=value settings.")
flags.DEFINE_string("method", "ENCORE", "Base method.")
flags.DEFINE_integer("num_edits", 100, "Records edited per setting.")
flags.DEFINE_integer("batch_size", 10, "Sequential batch size.")
flags.DEFINE_string("out", "tune.jsonl", "Results (JSONL).")


def parse_setting(text: str):
    name, _, assigns = text.partition(":")
    cfg = hparams.smollm2_config(FLAGS.method)
    for assign in filter(None, assigns.split(";")):
        path, _, value = assign.partition("=")
        *parents, leaf = path.strip().split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        old = getattr(target, leaf)
        if isinstance(old, tuple):
            new = tuple(int(v) for v in value.split("/"))
        elif isinstance(old, bool):
            new = value.lower() in ("1", "true", "yes")
        else:
            new = type(old)(value)
        setattr(target, leaf, new)
    return name, cfg


def main(argv):
    del argv
    model = jaxedit.load("smollm2-135m")
    reqs = requests_lib.load_requests(
        SHARED / "data/counterfact/counterfact-edit.json", 0, FLAGS.num_edits
    )
    templates = tuple(
        tuple(g) for g in json.loads((SHARED / "golden/meta.json").read_text())["context_templates"]
    )
    base = metrics.counterfact_scores(model, reqs)["scores"]
    for text in FLAGS.settings.split(","):
        name, cfg = parse_setting(text)
        cfg.templates = templates
        layers = tuple(sorted(set(cfg.layers)))
        st = stats.layer_stats(
            model,
            layers,
            SHARED / "data/text/wikitext-2-raw.wiki.test.raw",
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
    app.run(main)
