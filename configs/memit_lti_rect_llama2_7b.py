"""MEMIT_lti_rect on Llama-2-7B, the official repository's setting: MEMIT_lti (LTI's search, no
MPES) + RECT keeping 40 % of each update by relative change (WORKSPACE.md; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.lti_config("MEMIT_lti_rect", "llama2_7b")
