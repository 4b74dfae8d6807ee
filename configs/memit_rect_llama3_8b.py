"""MEMIT_rect on Llama-3-8B, the official repository's setting: sequential MEMIT with the paper's
hyperparameters, MPES patience 1, RECT (keep 40 %) at every batch
(WORKSPACE.md; table in jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.variant_config("MEMIT_rect", "llama3_8b")
