"""MEMIT_rect on GPT2-XL, the official repository's setting: sequential MEMIT with the paper's
hyperparameters, MPES patience 2, RECT (keep 40 %) at every batch
(WORKSPACE.md; table in jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.variant_config("MEMIT_rect", "gpt2_xl")
