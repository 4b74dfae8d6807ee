"""MEMIT_prune on SmolLM2-135M with the original PRUNE (Ma et al.): after the last batch, the total
update W - W0 restrained against W0 (log base 1.2), replacing it (WORKSPACE.md).
"""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_variant_config("MEMIT_prune", original=True)
