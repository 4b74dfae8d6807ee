"""What a binary shows on the console: `--help` in sections, `--verbose`, and the start-up noise
that stays off the screen unless asked for.

Every binary imports this module (``import console``) and ends its flag definitions with

    __doc__ = console.help_sections(__doc__, SECTIONS, footer=...)

`SECTIONS` is a list of (title, flag names). `--help` then prints the module docstring, the flags
section by section (the title, then absl's usual lines for each of its flags, which absl sorts by
name) and the footer (what the binary writes); `--helpfull` shows the same sections among every
other module's flags (the `--config.<path>` overrides of experiments/cli.py, absl's logging flags).
A flag of the binary left out of every section is listed under "other flags", so none is hidden.

Noise hidden unless `--verbose` (or `JAXEDIT_VERBOSE=1`, which `scripts/_venv.sh` reads too):

* JAX's backend probing. On a machine without a TPU, JAX's first use logs
  ``Unable to initialize backend 'tpu': ... libtpu.so: cannot open shared object file`` (an INFO
  record of `jax._src.xla_bridge`, shown because absl's `app.run` prints INFO records) for each
  optional platform plugin it tries, then falls back to what is there. Only those INFO records are
  dropped: a backend asked for with `JAX_PLATFORMS` that fails still raises, and JAX's warnings (a
  GPU without a CUDA jaxlib, ...) still print. `JAX_PLATFORMS` itself is left alone: setting it
  would take the backend choice away from a user with an accelerator.
* transformers' import-time advisory "PyTorch was not found. Models won't be available ...":
  jaxedit uses transformers for tokenizers only.
* orbax-checkpoint's INFO records (a dozen per run checkpoint saved or read: temporary folders,
  renames, timings). It logs through absl's own logger, so they are told by the file that logged
  them (a path under `orbax/`); its warnings and errors still print.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_bool(
    "verbose",
    False,
    "Also show third-party noise (JAX's backend probing, transformers' PyTorch advisory, "
    "orbax-checkpoint's INFO records).",
)

# (logger, highest level dropped, message prefix): records of that logger at or below the level
# whose message starts with the prefix are dropped unless verbose() (module docstring).
NOISE = (
    ("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend"),
    ("transformers", logging.WARNING, "PyTorch was not found"),
)


def verbose() -> bool:
    """`--verbose` (once flags are parsed) or `JAXEDIT_VERBOSE` set to anything but 0."""
    if os.environ.get("JAXEDIT_VERBOSE", "0") not in ("", "0"):
        return True
    return FLAGS.is_parsed() and bool(FLAGS["verbose"].value)


class _DropNoise(logging.Filter):
    def __init__(self, level: int, prefix: str):
        super().__init__()
        self.level, self.prefix = level, prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level or verbose():
            return True
        try:
            return not record.getMessage().startswith(self.prefix)
        except Exception:  # a record that does not format is kept, as logging would
            return True


for _name, _level, _prefix in NOISE:
    logging.getLogger(_name).addFilter(_DropNoise(_level, _prefix))


class _DropOrbaxInfo(logging.Filter):
    """orbax-checkpoint's INFO (and DEBUG) records on absl's logger, unless verbose()."""

    def filter(self, record: logging.LogRecord) -> bool:
        sep = os.sep
        return (
            record.levelno > logging.INFO or f"{sep}orbax{sep}" not in record.pathname or verbose()
        )


logging.getLogger("absl").addFilter(_DropOrbaxInfo())


def help_sections(
    doc: str | None,
    sections: Sequence[tuple[str, Sequence[str]] | tuple[str, Sequence[str], str]],
    footer: str = "",
    flag_values: flags.FlagValues = FLAGS,
) -> str:
    """The docstring `--help` prints: `doc`, the flags in `sections`, then `footer`.

    The listed flags are registered under one pseudo-module per section (so absl's own flag list
    of the calling module is empty and `--helpfull` shows the sections too); names that are not
    defined are skipped. Flags of the calling module in no section go to a last "other flags"
    section.

    Args:
      doc: the binary's module docstring.
      sections: (title, flag names[, note]) in the order to show; a note is printed after the
        section's flags (e.g. about flags defined elsewhere).
      footer: text after the flags (e.g. the files a run writes).
      flag_values: the flags (absl's global FLAGS).

    Returns:
      The new module docstring (assign it to the binary's `__doc__`).
    """
    caller = sys._getframe(1).f_globals.get("__name__", "__main__")
    module = sys.argv[0] if caller == "__main__" else caller  # absl's name of the caller
    by_module = flag_values.flags_by_module_dict()
    listed = {name for section in sections for name in section[1]}
    other = sorted(f.name for f in by_module.get(module, []) if f.name not in listed)
    parts = [(doc or "").rstrip()]
    groups = [*sections, ("other flags", other)] if other else list(sections)
    for i, (title, names, *note) in enumerate(groups, 1):
        pseudo = f"{module} [{i}] {title}"
        for name in names:
            if name not in flag_values:
                continue
            flag = flag_values[name]
            owner = flag_values.find_module_defining_flag(name)
            if owner is not None and owner != pseudo:
                by_module[owner] = [f for f in by_module[owner] if f is not flag]
            flag_values.register_flag_by_module(pseudo, flag)
        text = flag_values.module_help(pseudo).strip("\n")
        if text:
            text = text.replace(f"{pseudo}:", f"{title}:", 1)
        elif note:
            text = f"{title}:"
        if text:
            parts.append(text + "".join(f"\n  {line}" for line in note))
    if footer.strip():
        parts.append(footer.strip("\n"))
    return "\n\n".join(parts) + "\n"
