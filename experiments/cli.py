"""What every experiment binary shares on its command line: the editing config and its overrides,
and one rule for user errors.

Config: `--config=configs/<file>.py` names a config file (its `get_config()` returns an
`EditConfig`); every leaf field can then be set with `--config.<path>=<value>`
(`--config.search.lr=0.1`, `--config.layers=4-8`, `--config.solve.float64=true`, ...;
`jaxedit.overrides` parses them by the field's type). The result is validated as a whole before
any work starts.

User errors: `run(main)` replaces `absl.app.run`. A bad flag, or an input error raised by the binary
or by jaxedit (`UserError`, `jaxedit.errors.InputError` and its subclasses, absl's `UsageError`),
ends the process with exit status 2 and one line on stderr:

    error: <what is wrong, naming the input> (fix: <what to do>)

before any output is written where it can be known up front. Everything else is a programming error
and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

from jaxedit import config as config_lib
from jaxedit import overrides
from jaxedit.errors import InputError

EXIT_USER_ERROR = 2


class UserError(InputError):
    """An error in what the user passed to a binary (flags, files, data)."""


def define_config_flags(default: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """`--config` (a configs/*.py file) and one `--config.<path>` flag per editing-config field."""
    flags.DEFINE_string(
        "config",
        default,
        "A configs/*.py file whose get_config() returns an EditConfig.",
        flag_values=flag_values,
    )
    for path in overrides.config_fields():
        flags.DEFINE_string(
            f"config.{path}",
            None,
            f"Override the config's {path} ({overrides.describe(path)}).",
            flag_values=flag_values,
        )


def config_file_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.EditConfig:
    """The `EditConfig` of the `--config` file."""
    path = flag_values["config"].value
    try:
        return config_lib.load_config_file(path)
    except FileNotFoundError:
        raise UserError(
            f"--config={path}: no such config file (fix: pass a configs/*.py file)"
        ) from None


def apply_config_overrides(
    cfg: config_lib.EditConfig, flag_values: flags.FlagValues = flags.FLAGS
) -> config_lib.EditConfig:
    """`cfg` with every `--config.<path>` given on the command line applied, then validated."""
    for field in overrides.config_fields():
        text = flag_values[f"config.{field}"].value
        if text is not None:
            cfg = overrides.override(cfg, field, text)
    cfg.validate()
    return cfg


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.EditConfig:
    """The `--config` file with the `--config.<path>` overrides applied and validated."""
    return apply_config_overrides(config_file_from_flags(flag_values), flag_values)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        _fail(f"{err} (fix: see --helpfull)")
        raise  # unreachable


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with the user-error rule of the module docstring."""

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (InputError, app.UsageError) as err:
            _fail(str(err).splitlines()[0] if isinstance(err, app.UsageError) else str(err))

    app.run(guarded, flags_parser=_parse_flags)
