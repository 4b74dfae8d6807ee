"""MEMIT_lti_prune on Llama-2-7B, the official repository's setting: MEMIT_lti (LTI's search, no
MPES) + PRUNE after the last batch as the repository runs it (WORKSPACE.md; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.lti_config("MEMIT_lti_prune", "llama2_7b")
