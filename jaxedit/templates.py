"""Context templates (reference §2.1): the prefixes that make keys and targets robust to context.

The reference samples them from the unedited model once per process with an unseeded RNG: five seed
words ("The", "Therefore", "Because", "I", "You"), top-k 5 sampling up to 10 tokens in total, then
the text is cleaned and turned into "<text>. {}". jaxedit takes an explicit PRNG key (reproducible)
or a fixed list, and records the templates used with every run.

Decoding skips special tokens (the clean behaviour); the reference decodes with them kept and strips
only `<|endoftext|>` / `<s>`, which leaves Llama-3's `<|begin_of_text|>` in (quirk Q5): pass
`keep_special_tokens=True` for that.
"""

from __future__ import annotations

import os
import unicodedata

import jax

from jaxedit.errors import InputError
from jaxedit.files import read_json
from jaxedit.lm import LanguageModel

SEEDS = ("The", "Therefore", "Because", "I", "You")


def clean(text: str, keep_special_tokens: bool = False) -> str:
    text = unicodedata.normalize("NFKD", text).replace("\n\n", " ")
    if keep_special_tokens:
        for token in ("<|endoftext|>", "<s>"):
            text = text.replace(token, "")
    text = text.strip()
    return text.replace("{", " ").replace("}", " ") + ". {}"


def generate_templates(
    model: LanguageModel,
    key: jax.Array,
    *,
    seeds=SEEDS,
    max_length: int = 10,
    top_k: int = 5,
    keep_special_tokens: bool = False,
) -> tuple[tuple[str, ...], ...]:
    """[["{}"], [one sampled template per seed]], sampled with `key`.

    `max_length` counts the prompt's own tokens, as the reference's `max_out_len` does.
    """
    prompts = list(seeds)
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    new = max(1, max_length - max(lengths))
    texts = model.generate(
        prompts, new, top_k=top_k, key=key, keep_special_tokens=keep_special_tokens
    )
    return (("{}",), tuple(clean(p + t, keep_special_tokens) for p, t in zip(prompts, texts)))


def load_templates(path: str | os.PathLike) -> tuple[tuple[str, ...], ...]:
    """A JSON file in the reference's nested form: [["{}"], ["A. {}", ...], ...]."""
    data = read_json(path, "templates file", "pass a JSON file like [['{}'], ['A. {}']]")
    if not isinstance(data, list) or not data or not all(isinstance(g, list) for g in data):
        raise InputError(f"{path}: templates must be a nested list like [['{{}}'], ['A. {{}}']]")
    return tuple(tuple(str(t) for t in g) for g in data)
