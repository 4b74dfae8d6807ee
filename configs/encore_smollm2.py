"""ENCORE on SmolLM2-135M: the Llama-3-8B setting, tuned for the small model (WORKSPACE.md)."""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_config("ENCORE")
