"""MEMIT_lti_rect on SmolLM2-135M: MEMIT_lti + RECT keeping 40 % of each update (the official
setting).

There is no official SmolLM2 setting; this one is chosen by analogy with the Llama ones: the tuned
SmolLM2 solve setting and edited layers 4-8 of the other SmolLM2 configs, the Llama-3-8B LTI search
(lr 0.5, 30 steps, clamp 4, weight decay 1e-3, nll 0.125, last-layer KL 0.0725, mid-layer KL
0.0425, no MPES), and the mid layer at block 14 of 30, about the relative depth of Llama's block 15
of 32 (jaxedit/hparams.py `smollm2_lti_config`).
"""

from jaxedit import hparams


def get_config():
    return hparams.smollm2_lti_config("MEMIT_lti_rect")
