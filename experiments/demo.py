"""The README's main job: ENCORE on SmolLM2 for a handful of counterfactual edits.

    bash scripts/demo.sh                       # everything from scratch: venv, install, model fetch
    bash scripts/demo.sh --model=path/to/hf    # another model (Llama family or GPT-2)

For each edit it prints the greedy completion and the probabilities of the new and the old answer
before and after editing, then the norms of the edited matrices. The key statistics C0 come from the
WikiText-2 paragraphs when the shared data folder is there ($JAXEDIT_DATA or ../shared/data);
otherwise from text sampled from the model itself with a fixed PRNG key, so the demo needs nothing
but the model.
"""

from __future__ import annotations

import time
from pathlib import Path

import cli  # experiments/cli.py: the user-error rule
import console  # experiments/console.py: --help sections, --verbose, start-up noise kept off
import jax
import numpy as np
from absl import flags, logging

import jaxedit
from jaxedit import config as config_lib
from jaxedit import corpus, editor, hparams, hub, metrics, requests, stats

import paths  # experiments/paths.py: the binaries' default data folders

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "Preset name, HF directory, .gguf path or hub id.")
flags.DEFINE_integer("max_new_tokens", 8, "Greedy tokens to show per prompt.")
flags.DEFINE_integer(
    "stats_samples", 600, "Documents for C0 (the first run computes and caches it)."
)
__doc__ = console.help_sections(
    __doc__,
    [
        ("model", ["model"]),
        ("what the demo shows", ["max_new_tokens", "stats_samples"]),
        ("output", ["verbose"]),
    ],
    footer="""
Writes nothing to the working directory (the results go to stdout). Under $JAXEDIT_CACHE (default
~/.cache/jaxedit): the fetched model (smollm2-135m/), the key statistics C0 (stats/) and, when no
WikiText is found, demo/model_samples.txt (the statistics corpus sampled from the model).""",
)

EDITS = [
    {
        "prompt": "The Eiffel Tower is located in the city of",
        "subject": "The Eiffel Tower",
        "target_new": "Rome",
        "target_true": "Paris",
    },
    {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": "English",
        "target_true": "French",
    },
    {
        "prompt": "{} plays the sport of",
        "subject": "LeBron James",
        "target_new": "football",
        "target_true": "basketball",
    },
    {
        "prompt": "The official language of {} is",
        "subject": "Japan",
        "target_new": "Spanish",
        "target_true": "Japanese",
    },
    {
        "prompt": "{} was developed by",
        "subject": "The iPhone",
        "target_new": "Microsoft",
        "target_true": "Apple",
    },
]


def stats_corpus(model, workdir: Path) -> Path:
    wikitext = paths.optional_dataset("wikitext-2-raw-test")  # local, cached or downloaded
    if wikitext is not None:
        return wikitext
    path = workdir / "model_samples.txt"
    if not path.exists():
        logging.info("no WikiText here: sampling a statistics corpus from the model itself")
        seeds = [
            "The",
            "In",
            "A",
            "It",
            "When",
            "One",
            "He",
            "She",
            "This",
            "There",
            "My",
            "We",
        ] * 3
        texts = model.generate(seeds, 40, top_k=40, key=jax.random.key(0))
        corpus.write_text_corpus([" ".join((s + t).split()) for s, t in zip(seeds, texts)], path)
    return path


def answer_probs(model, reqs) -> np.ndarray:
    """[n, 2] probabilities of the whole new / old answer after each prompt."""
    pairs = [(r.filled_prompt(), a) for r in reqs for a in (r.target_new, r.target_true)]
    nll, ntok = metrics.answer_nll(model, pairs, return_lengths=True)
    return np.exp(-nll * ntok).reshape(len(reqs), 2)


def main(argv):
    del argv
    for name in ("max_new_tokens", "stats_samples"):
        if FLAGS[name].value < 1:
            raise cli.UserError(f"--{name}={FLAGS[name].value}: out of range (fix: pass >= 1)")
    t0 = time.perf_counter()
    model = jaxedit.load(FLAGS.model)  # a bad --model fails here, before anything is written
    print(f"loaded {model.source} in {time.perf_counter() - t0:.1f} s")
    workdir = hub.cache_dir() / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    reqs = requests.parse_requests(EDITS)
    cfg = hparams.smollm2_config("ENCORE")
    cfg.templates = config_lib.FIXED_TEMPLATES
    text = stats_corpus(model, workdir)
    t0 = time.perf_counter()
    layer_stats = stats.layer_stats(
        model,
        cfg.layers,
        text,
        num_samples=FLAGS.stats_samples,
        cache_dir=hub.cache_dir() / "stats",
    )
    print(
        f"key statistics for layers {cfg.layers} from {text.name} "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    prompts = [r.filled_prompt() for r in reqs]
    before_text = model.generate(prompts, FLAGS.max_new_tokens)
    before = answer_probs(model, reqs)
    ed = editor.Editor(model, cfg, layer_stats, cfg.templates)
    state, report = ed.apply(ed.init_state(), reqs)
    edited = ed.edited_model(state)
    after_text = edited.generate(prompts, FLAGS.max_new_tokens)
    after = answer_probs(edited, reqs)

    print(
        f"\nENCORE: {len(reqs)} edits in {report.search_time + report.update_time:.1f} s "
        f"(search {report.search_time:.1f} s, update {report.update_time:.1f} s; "
        "includes compilation)"
    )
    for j, r in enumerate(reqs):
        print(
            f"\n{r.filled_prompt()!r}: {r.target_true!r} -> {r.target_new!r}"
            f"  (search stopped after {int(report.stop_steps[j])} steps)"
        )
        print(f"  before: {before_text[j]!r}   P(new)={before[j, 0]:.4f} P(old)={before[j, 1]:.4f}")
        print(f"  after:  {after_text[j]!r}   P(new)={after[j, 0]:.4f} P(old)={after[j, 1]:.4f}")
    print("\nedited matrices (down_proj), Frobenius norms:")
    for layer in cfg.layers:
        print(
            f"  layer {layer}: |W| = {report.weight_norm[layer]:.2f}   "
            f"|dW| = {report.delta_norm[layer]:.3f}"
        )


if __name__ == "__main__":
    cli.run(main)
