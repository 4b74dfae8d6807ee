"""MEMIT_prune on SmolLM2-135M: sequential MEMIT + MPES (the tuned SmolLM2 setting) + PRUNE as the
official repository runs it (after the last batch, its update restrained against the weights
before it, natural log, added on top; WORKSPACE.md).
"""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_variant_config("MEMIT_prune")
