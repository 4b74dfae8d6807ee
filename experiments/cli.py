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


def define_mesh_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """`--mesh` (the device mesh) and the multi-host flags (`jax.distributed`)."""
    flags.DEFINE_string(
        "mesh",
        None,
        "Device mesh 'data:D,model:M' (D·M = all devices; weights split over model and, "
        "FSDP-style, data; request rows over data) or 'auto'. Default: one device.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "coordinator",
        None,
        "host:port of process 0 for a multi-host run (jax.distributed); with --num_processes and "
        "--process_id. Only process 0 writes files and logs.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("num_processes", 1, "Processes of a multi-host run.", lower_bound=1)
    flags.DEFINE_integer(
        "process_id", 0, "This process's index in a multi-host run.", lower_bound=0
    )


def start_processes(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Joins the multi-host run named by `--coordinator` (before any JAX computation) and checks
    `--mesh` against the devices."""
    from jaxedit import sharding

    fv = flag_values
    if fv["coordinator"].value:
        if fv["process_id"].value >= fv["num_processes"].value:
            raise UserError(
                f"--process_id={fv['process_id'].value} with --num_processes="
                f"{fv['num_processes'].value} (fix: ids run from 0 to num_processes - 1)"
            )
        sharding.initialize_distributed(
            fv["coordinator"].value, fv["num_processes"].value, fv["process_id"].value
        )
    elif fv["num_processes"].value > 1:
        raise UserError("--num_processes > 1 needs --coordinator=host:port (fix: pass it)")
    sharding.parse_mesh(fv["mesh"].value or "")


def shard_model(model, flag_values: flags.FlagValues = flags.FLAGS):
    """The model placed on the `--mesh` (unchanged without one)."""
    from jaxedit import sharding

    return model.shard(sharding.make_mesh(flag_values["mesh"].value, model.config))


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
