"""MEMIT on Llama-3-8B with the paper's hyperparameters (reference §5; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.paper_config("MEMIT", "llama3_8b")
