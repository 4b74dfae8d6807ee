"""MEMIT_rect on SmolLM2-135M: sequential MEMIT + MPES (the tuned SmolLM2 setting) + RECT as the
official repository runs it (keep 40 % of each update, by relative change; WORKSPACE.md).
"""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_variant_config("MEMIT_rect")
