"""MEMIT_prune on Llama-3-8B, the official repository's setting: sequential MEMIT with the paper's
hyperparameters, MPES patience 1, PRUNE after the last batch (WORKSPACE.md; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.variant_config("MEMIT_prune", "llama3_8b")
