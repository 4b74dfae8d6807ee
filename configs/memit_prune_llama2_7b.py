"""MEMIT_prune on Llama-2-7B, the official repository's setting: sequential MEMIT with the paper's
hyperparameters, MPES off, PRUNE after the last batch (WORKSPACE.md; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.variant_config("MEMIT_prune", "llama2_7b")
