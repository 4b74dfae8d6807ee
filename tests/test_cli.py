"""Command-line config overrides (`--config.<path>=<value>`) through absl's real flag parser.

Every leaf field of the editing config is overridden once, through a fresh `FlagValues` on which the
binaries' own `experiments/cli.py` defined its flags; the parsed config must hold the new value in
that field and the file's values everywhere else. Bad values are refused naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from absl import flags

from jaxedit import config, overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def cli():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import cli as module
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return module


def _parse(cli, *args: str) -> config.EditConfig:
    fv = flags.FlagValues()
    cli.define_config_flags(TINY, flag_values=fv)
    fv(["prog", *args])
    return cli.config_from_flags(fv)


def _leaf(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


# Fields with one accepted value (the others are refused, see
# test_bad_values_are_refused_naming_the_field).
SINGLE_VALUED = ("search.constr_pos",)


def _new_value(path: str, hint, old):
    """A valid value other than `old` for the field, and how to write it on a command line."""
    if path in overrides.CHOICES:
        value = next(c for c in overrides.CHOICES[path] if c != old)
        return value, value
    if path == "layers":
        return (0, 1, 2), "0-2"
    if path == "templates":
        value = (("{}",), ("A. {}", "B. {}"))
        return value, json.dumps([list(g) for g in value])
    if hint is bool:
        return (not old), str(not old).lower()
    if hint is int:
        return old + 1, str(old + 1)
    if path == "regularize.prune_log_base":  # a log base must be > 1
        return 1.2, "1.2"
    if hint is float:
        value = 0.5 if old != 0.5 else 0.25  # valid for the other float fields (stop_prob < 1)
        return value, repr(value)
    return "other-value", "other-value"


def test_every_field_can_be_overridden_from_the_command_line(cli):
    base = config.load_config_file(TINY)
    fields = overrides.config_fields()
    assert {"search.lr", "solve.norm_lambda", "layers", "method", "solve.float64"} <= set(fields)
    for path, hint in fields.items():
        if path in SINGLE_VALUED:
            continue
        value, text = _new_value(path, hint, _leaf(base, path))
        cfg = _parse(cli, f"--config.{path}={text}")
        assert _leaf(cfg, path) == value, path
        # Everything else is the file's value.
        expected = overrides.override(base, path, text)
        assert dataclasses.asdict(cfg) == dataclasses.asdict(expected), path
        assert _leaf(base, path) != value  # the loaded file config was not modified


def test_several_overrides_and_the_documented_example(cli):
    cfg = _parse(
        cli, "--config.search.lr=0.1", "--config.solve.norm_lambda=3", "--config.layers=1,2"
    )
    assert (cfg.search.lr, cfg.solve.norm_lambda, cfg.layers) == (0.1, 3.0, (1, 2))
    assert isinstance(cfg.solve.norm_lambda, float)  # JSON/flag ints must not change signatures


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("--config.search.lr=fast", r"search\.lr.*not a number"),
        ("--config.search.num_steps=2.5", r"search\.num_steps.*not an integer"),
        ("--config.solve.float64=maybe", r"solve\.float64.*not a boolean"),
        ("--config.method=ROME", r"method.*one of MEMIT"),
        ("--config.layers=a,b", r"layers.*not a list of integers"),
        ("--config.templates=[[1]]", r"templates.*lists of strings"),
        ("--config.search.lr=-1", r"search\.lr=-1\.0: must be > 0"),
        ("--config.solve.norm_lambda=-2", r"solve\.norm_lambda=-2\.0: must be >= 0"),
        ("--config.stats.num_samples=0", r"stats\.num_samples=0: must be >= 1"),
        ("--config.layers=3,1", r"layers=\(3, 1\): must be a non-empty ascending"),
        ("--config.matmul_precision=bf16", r"matmul_precision.*one of highest"),
        ("--config.search.constr_pos=last", r"search\.constr_pos='last'.*crashes"),
        ("--config.search.teacher_positions=shifted", r"search\.teacher_positions.*one of"),
    ],
)
def test_bad_values_are_refused_naming_the_field(cli, arg, match):
    from jaxedit.errors import InputError

    with pytest.raises(InputError, match=match):
        _parse(cli, arg)


def test_an_unknown_field_is_a_flag_error(cli):
    with pytest.raises(flags.Error, match=r"config\.lr"):
        _parse(cli, "--config.lr=0.1")
    with pytest.raises(overrides.OverrideError, match=r"did you mean --config\.search\.lr"):
        overrides.override(config.EditConfig(), "lr", "0.1")
