"""The README's main job: load SmolLM2 (fetched on first use) and complete a few factual prompts.

    bash scripts/demo.sh                      # preset smollm2-135m
    bash scripts/demo.sh --model=path/to/hf   # any supported source
"""

from __future__ import annotations

import time

from absl import app, flags, logging

import jaxedit

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "Preset name, HF directory, .gguf path or hub id.")
flags.DEFINE_integer("max_new_tokens", 12, "Greedy tokens to generate per prompt.")

PROMPTS = [
    "The capital of France is",
    "The mother tongue of Danielle Darrieux is",
    "The Eiffel Tower is located in the city of",
    "Water boils at a temperature of 100 degrees",
    "The largest planet in the solar system is",
]


def main(argv):
    del argv
    t0 = time.perf_counter()
    model = jaxedit.load(FLAGS.model)
    logging.info("loaded %s in %.1f s", model.source, time.perf_counter() - t0)
    t0 = time.perf_counter()
    completions = model.generate(PROMPTS, max_new_tokens=FLAGS.max_new_tokens)
    print(f"Greedy completions from {model.source} ({time.perf_counter() - t0:.1f} s):")
    for prompt, text in zip(PROMPTS, completions):
        print(f"  {prompt!r} -> {text!r}")


if __name__ == "__main__":
    app.run(main)
