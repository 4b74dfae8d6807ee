"""Setting single fields of an `EditConfig` from text: command lines and sweeps.

Every leaf field of the editing config has a dotted path (`method`, `layers`, `search.lr`,
`solve.norm_lambda`, `stats.num_samples`, `templates`, ...). `override(cfg, path, text)` parses the
text by the field's declared type and returns a new config; the input is never modified:

* floats and ints: Python literals (`0.1`, `1e-3`, `25`); an int field refuses `2.5`;
* booleans: `true`/`false` (also `1`/`0`, `yes`/`no`);
* strings: as given; fields with a fixed set of values (`method`, `search.mpes_prompts`, ...) refuse
  anything else and list the choices;
* `layers`: `4,5,6,7,8`, `[4, 5, 6, 7, 8]` or a range `4-8`;
* `templates`: JSON, the nested form `[["{}"], ["The following text ... {}", ...]]`.

A value that does not parse raises `OverrideError` naming the field, the value and what is expected;
`EditConfig.validate` then checks the whole config (ranges, layers against the model).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any

from jaxedit.config import METHODS, PRUNE_REFERENCES, PRUNE_WHEN, TEACHER_POSITIONS, EditConfig
from jaxedit.errors import InputError
from jaxedit.numerics import PRECISIONS

__all__ = ["CHOICES", "OverrideError", "config_fields", "describe", "override", "parse_value"]

# Fields whose value is one of a fixed set (validated here, before the run starts).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "matmul_precision": PRECISIONS,
    "search.mpes_prompts": ("context", "all"),
    "search.weight_decay_form": ("norm", "squared"),
    "search.teacher_positions": TEACHER_POSITIONS,
    "solve.solver": ("cholesky", "lu"),
    "regularize.prune_reference": PRUNE_REFERENCES,
    "regularize.prune_when": PRUNE_WHEN,
}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class OverrideError(InputError):
    """A `--config.<path>=<value>` that names no field or does not parse for the field's type."""


@functools.cache
def _fields(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_fields(hint, f"{prefix}{field.name}."))
        else:
            out[prefix + field.name] = hint
    return out


def config_fields() -> dict[str, Any]:
    """Dotted path -> declared type of every leaf field of `EditConfig` (nested ones expanded)."""
    return dict(_fields(EditConfig))


def describe(path: str) -> str:
    """A short description of what `path` accepts (for --help and error messages)."""
    if path in CHOICES:
        return "one of " + ", ".join(CHOICES[path])
    hint = config_fields()[path]
    if path == "layers":
        return "ints: 4,5,6 or 4-8"
    if path == "templates":
        return 'JSON nested lists: [["{}"], ["... {}", ...]]'
    return {float: "a number", int: "an integer", bool: "true or false", str: "text"}.get(
        hint, str(hint)
    )


def _fail(path: str, text: str, why: str) -> OverrideError:
    return OverrideError(f"--config.{path}={text!r}: {why} (expected {describe(path)})")


def _layers(path: str, text: str) -> tuple[int, ...]:
    body = text.strip().strip("[]()")
    try:
        if "-" in body and "," not in body:
            lo, hi = (int(p) for p in body.split("-"))
            return tuple(range(lo, hi + 1))
        return tuple(int(p) for p in body.split(",") if p.strip())
    except ValueError:
        raise _fail(path, text, "not a list of integers") from None


def _templates(path: str, text: str) -> tuple[tuple[str, ...], ...]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, text, f"not JSON ({err.msg})") from None
    if not isinstance(value, list) or not all(
        isinstance(g, list) and all(isinstance(t, str) for t in g) for g in value
    ):
        raise _fail(path, text, "not a list of lists of strings")
    return tuple(tuple(g) for g in value)


def parse_value(path: str, text: str) -> Any:
    """The value of field `path` written as `text` (see the module docstring)."""
    fields = config_fields()
    if path not in fields:
        close = [p for p in fields if p.split(".")[-1] == path.split(".")[-1]]
        hint = f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""
        raise OverrideError(f"--config.{path}: the editing config has no field {path!r}{hint}")
    hint = fields[path]
    if path == "layers":
        return _layers(path, text)
    if path == "templates":
        return _templates(path, text)
    if hint is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise _fail(path, text, "not a boolean")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise _fail(path, text, "not an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise _fail(path, text, "not a number") from None
    if path in CHOICES and text not in CHOICES[path]:
        raise _fail(path, text, "not an accepted value")
    return text


def _replace(obj: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    child = getattr(obj, parts[0])
    return dataclasses.replace(obj, **{parts[0]: _replace(child, parts[1:], value)})


def override(cfg: EditConfig, path: str, text: str) -> EditConfig:
    """A copy of `cfg` with field `path` set from `text` (`cfg` and its sections stay as they
    were)."""
    return _replace(cfg, path.split("."), parse_value(path, text))
