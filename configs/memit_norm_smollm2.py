"""Sequential MEMIT + the Frobenius-norm constraint on SmolLM2-135M (the paper's
ablation: λ_n only).
"""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_config("MEMIT_seq", norm=True)
