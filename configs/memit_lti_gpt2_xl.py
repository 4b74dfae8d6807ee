"""MEMIT_lti on GPT2-XL, the official repository's setting: sequential MEMIT with LTI's search
(in-context teacher, last-layer and mid-layer KL, no MPES; WORKSPACE.md; table in
jaxedit/hparams.py). Teacher positions: "official" (the repository's); override with
--config.search.teacher_positions=aligned.
"""

from jaxedit import hparams


def get_config():
    return hparams.lti_config("MEMIT_lti", "gpt2_xl")
