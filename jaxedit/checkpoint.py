"""Run checkpoints with orbax-checkpoint: numbered step folders, each written atomically.

`save(directory, step, arrays, meta)` writes `directory/<step>/` (the arrays with orbax's standard
handler, `meta` as JSON) through an `ocp.CheckpointManager`: orbax writes into a temporary folder
and renames it once complete, so a process killed mid-save leaves the previous step as the newest
valid one (the unfinished temporary folder is ignored and cleaned up later). The last `keep` steps
are kept. Sharded `jax.Array`s are written by each host from its own shards (no gather).
`restore(directory, template)` reads the newest complete step; with a template (arrays or
`jax.ShapeDtypeStruct`s) every array comes back with the template's sharding and dtype, so nothing
is gathered on one host. Round trips are bit-exact (float32, bfloat16, float64, integers).

orbax is imported on first use, so `import jaxedit` does not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxedit.errors import CorruptFileError

KEEP = 2


def _ocp():
    import orbax.checkpoint as ocp  # lazy: only runs that checkpoint need it

    return ocp


def _manager(directory: str | os.PathLike, keep: int = KEEP, *, create: bool = True):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=options,
        item_handlers={
            "arrays": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )


def steps(directory: str | os.PathLike) -> list[int]:
    """The complete steps in `directory`, oldest first (none when it does not exist)."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory, create=False) as mngr:
        return sorted(int(s) for s in mngr.all_steps())


def save(
    directory: str | os.PathLike,
    step: int,
    arrays: Mapping[str, jax.Array | np.ndarray],
    meta: Mapping[str, Any] | None = None,
    *,
    keep: int = KEEP,
) -> None:
    """Writes step `step` (arrays and JSON-serialisable `meta`) atomically and waits for it; keeps
    the newest `keep` steps."""
    ocp = _ocp()
    with _manager(directory, keep) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(dict(arrays)),
                meta=ocp.args.JsonSave(dict(meta or {})),
            ),
            force=True,
        )
        mngr.wait_until_finished()


def _abstract(x) -> Any:
    if isinstance(x, np.ndarray | np.generic):
        return np.zeros(np.shape(x), x.dtype)  # restored as a numpy array of this dtype
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def _fix(fix: str | None) -> str:
    return f" (fix: {fix})" if fix else ""


def inspect(
    directory: str | os.PathLike, *, fix: str | None = None, step: int | None = None
) -> tuple[int, dict[str, Any], dict[str, jax.ShapeDtypeStruct]] | None:
    """(step, meta, name -> shape and dtype) of the newest complete step in `directory` (or of
    `step`), read from its metadata only (no array data); None when there is no such complete
    step. A step whose metadata cannot be read raises `CorruptFileError` naming it."""
    ocp = _ocp()
    found = steps(directory)
    if not found or (step is not None and step not in found):
        return None
    step = found[-1] if step is None else step
    with _manager(directory, create=False) as mngr:
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            tree = mngr.item_metadata(step)["arrays"]
            shapes = {
                k: jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype))
                for k, v in dict(tree).items()
            }
        except Exception as err:  # orbax/tensorstore report damage in many types
            raise _corrupt(Path(directory) / str(step), err, fix) from None
    if not isinstance(meta, dict):
        raise CorruptFileError(
            f"checkpoint step {Path(directory) / str(step)} has no metadata{_fix(fix)}"
        )
    return step, meta, shapes


def _corrupt(where: Path, err: Exception, fix: str | None) -> CorruptFileError:
    text = str(err).strip().splitlines()
    msg = f": {text[0][:300]}" if text else ""
    return CorruptFileError(
        f"checkpoint step {where} is not readable ({err.__class__.__name__}{msg}){_fix(fix)}"
    )


def restore(
    directory: str | os.PathLike,
    template: Mapping[str, Any] | None = None,
    *,
    fix: str | None = None,
    step: int | None = None,
) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """(step, arrays, meta) of the newest complete step in `directory` (or of `step`), or None when
    there is no such step.
    An array whose name, shape and dtype match an entry of `template` (name -> array or
    `jax.ShapeDtypeStruct`) is restored like it: a `jax.Array` with its sharding (each host reads
    only its shards), or numpy; every other saved array as numpy (so a caller can report a
    mismatch itself). A step that cannot be read raises `CorruptFileError` naming it."""
    ocp = _ocp()
    found = inspect(directory, fix=fix, step=step)
    if found is None:
        return None
    step, meta, shapes = found
    template = template or {}
    target: dict[str, Any] = {}
    for name, saved in shapes.items():
        want = template.get(name)
        if (
            want is not None
            and tuple(want.shape) == saved.shape
            and np.dtype(want.dtype) == saved.dtype
        ):
            target[name] = _abstract(want)
        else:
            target[name] = np.zeros(saved.shape, saved.dtype)
    with _manager(directory, create=False) as mngr:
        try:
            arrays = mngr.restore(
                step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(target))
            )["arrays"]
        except Exception as err:
            raise _corrupt(Path(directory) / str(step), err, fix) from None
    return step, dict(arrays), meta
