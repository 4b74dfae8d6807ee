"""AlphaEdit_lti on Llama-2-7B, the official repository's setting: AlphaEdit's null-space update
with LTI's search (prob_cutoff 0: no MPES; WORKSPACE.md; table in jaxedit/hparams.py).
There is no GPT2-XL setting: the official JSON is a copy of AlphaEdit's and cannot load.
"""

from jaxedit import hparams


def get_config():
    return hparams.lti_config("AlphaEdit_lti", "llama2_7b")
