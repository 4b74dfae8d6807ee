"""ENCORE on Llama-2-7B with the paper's hyperparameters (reference §5; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.paper_config("ENCORE", "llama2_7b")
