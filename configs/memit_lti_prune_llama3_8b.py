"""MEMIT_lti_prune on Llama-3-8B, the official repository's setting: MEMIT_lti (LTI's search, no
MPES) + PRUNE after the last batch as the repository runs it (WORKSPACE.md; table in
jaxedit/hparams.py).
"""

from jaxedit import hparams


def get_config():
    return hparams.lti_config("MEMIT_lti_prune", "llama3_8b")
