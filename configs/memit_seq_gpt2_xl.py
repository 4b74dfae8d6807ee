"""MEMIT_seq on GPT2-XL with the paper's hyperparameters (reference §5; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.paper_config("MEMIT_seq", "gpt2_xl")
