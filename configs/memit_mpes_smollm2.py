"""Sequential MEMIT + MPES on SmolLM2-135M (the paper's ablation: early stopping only)."""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_config("MEMIT_seq", mpes=True)
