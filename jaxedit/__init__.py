"""jaxedit: lifelong sequential knowledge editing (MEMIT, AlphaEdit, EMMET, ENCORE) in JAX/Flax.

Public API:
  load(source, dtype=None) -> LanguageModel   preset name, HF directory, .gguf file or hub id
  save_hf(model, out_dir)                     export back to a Hugging Face directory
  LanguageModel.logits / .generate            scoring and greedy continuation
  Editor(model, cfg, stats, templates)        sequential editing: init_state(), apply(),
                                              edited_model()
  EditConfig                                  the editing configuration (method, layers, search,
                                              solve)
"""

from jaxedit.config import EditConfig
from jaxedit.editor import Editor
from jaxedit.lm import PRESETS, LanguageModel, load, load_gguf, load_hf_dir, save_hf
from jaxedit.models import ModelConfig, ModelOutput, Probe

__all__ = [
    "PRESETS",
    "EditConfig",
    "Editor",
    "LanguageModel",
    "ModelConfig",
    "ModelOutput",
    "Probe",
    "load",
    "load_gguf",
    "load_hf_dir",
    "save_hf",
]
__version__ = "0.1.0"
