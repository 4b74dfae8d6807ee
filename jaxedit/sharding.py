"""Device meshes and where every array of an edit lives (one device, many, or several hosts).

jaxedit does not write collectives: it places arrays with `jax.sharding.NamedSharding`s on a
`Mesh` with two axes, `data` and `model`, and lets XLA's SPMD partitioner split every jitted
computation (search, keys, statistics, solves) to match. A model without a mesh is on one device
and every code path is the single-device one.

Parameters (`param_spec`, the rule table `RULES`): attention heads and MLP width over `model`
(Megatron-style: column-split q/k/v, gate/up and c_attn/c_fc; row-split o_proj, down_proj and the
c_proj's), the vocabulary of the embedding and the head over `model`, and the other axis of each
matrix over `data` (FSDP-style: the weights are split further across the data replicas; XLA
gathers them for each matmul). Norm scales and biases of width d are replicated (small). A mesh
axis that does not divide an array axis is dropped for that axis (the array is replicated along
it; `shard_report` lists every such fallback), so any model runs on any mesh.

Editing data:
- the search's request rows and the key pass's rows are split over `data` (the editor pads the
  request count to a multiple of the data size with inert rows);
- C0's corpus batches are split over `data` (padded rows are masked out);
- C0 `[f, f]`, AlphaEdit's projector and the previous-edit caches are stored with their rows split
  over every device (`square_spec`): they are the largest editing arrays (Llama-3-8B: 822 MB each
  per layer) and only the solve reads them;
- the closed-form solves (Cholesky / LU / eigh) have no SPMD partitioning in XLA, so the compiler
  gathers their `[f, f]` operand onto each device for the factorisation: the solve's temporaries
  are the one place a device holds a full `[f, f]` (the memory plan counts it);
- ΔW comes back in the rewritten kernel's own sharding, and the keys / targets the editor reports
  are gathered to the host (`to_host`, across processes when needed).

Several hosts (`jax.distributed`): every process builds the same global mesh over all devices;
host data (weights read from disk, token batches) are the same on every process and each process
places only the shards its own devices hold (`place`: `jax.make_array_from_callback`), so nothing
is sent between hosts to load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxedit.errors import InputError

__all__ = [
    "AXES",
    "RULES",
    "auto_shape",
    "data_size",
    "initialize_distributed",
    "make_mesh",
    "param_spec",
    "parse_mesh",
    "place",
    "place_rows",
    "place_square",
    "reshard",
    "rows_spec",
    "shard_params",
    "shard_report",
    "square_spec",
    "to_host",
]

AXES = ("data", "model")
_D, _M = "data", "model"

# (regex over the "/"-joined parameter path, one mesh axis (or None) per array axis). First match
# wins; an unmatched path is replicated.
RULES: dict[str, tuple[tuple[str, tuple[str | None, ...]], ...]] = {
    "llama": (
        (r"embed_tokens/embedding$", (_M, _D)),  # [vocab, d]
        (r"lm_head/kernel$", (_D, _M)),  # [d, vocab]
        (r"self_attn/[qkv]_proj/kernel$", (_D, _M)),  # [d, heads·hd]: heads over model
        (r"self_attn/o_proj/kernel$", (_M, _D)),  # [heads·hd, d]
        (r"mlp/(gate|up)_proj/kernel$", (_D, _M)),  # [d, f]: MLP width over model
        (r"mlp/down_proj/kernel$", (_M, _D)),  # [f, d] (the rewritten matrix)
    ),
    "gpt2": (
        (r"wte/embedding$", (_M, _D)),  # [vocab, d] (tied head)
        (r"wpe/embedding$", (None, _D)),  # [positions, d]
        (r"attn/c_attn/kernel$", (_D, _M)),  # [d, 3d]: q, k, v heads over model
        (r"attn/c_attn/bias$", (_M,)),
        (r"attn/c_proj/kernel$", (_M, _D)),  # [d, d]
        (r"mlp/c_fc/kernel$", (_D, _M)),  # [d, f]
        (r"mlp/c_fc/bias$", (_M,)),
        (r"mlp/c_proj/kernel$", (_M, _D)),  # [f, d] (the rewritten matrix)
    ),
}


# ------------------------------------------------------------------------------------------------
# Meshes


def parse_mesh(spec: str, num_devices: int | None = None) -> dict[str, int] | None:
    """`"data:D,model:M"` -> {"data": D, "model": M}; `""`/`"none"` -> None (one device);
    `"auto"` -> {"auto": n}. Raises InputError naming `--mesh` on bad text or when D·M is not the
    device count."""
    text = (spec or "").strip().lower()
    if text in ("", "none"):
        return None
    n = jax.device_count() if num_devices is None else num_devices
    if text == "auto":
        return {"auto": n}
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition(":")
        name = name.strip()
        if not sep or name not in AXES or name in sizes or not value.strip().isdigit():
            raise InputError(
                f"--mesh={spec!r}: expected 'data:D,model:M' (or 'auto'), e.g. 'data:2,model:4'"
            )
        sizes[name] = int(value)
        if sizes[name] < 1:
            raise InputError(f"--mesh={spec!r}: axis {name} must be at least 1")
    sizes.setdefault(_D, 1)
    sizes.setdefault(_M, 1)
    if sizes[_D] * sizes[_M] != n:
        raise InputError(
            f"--mesh={spec!r}: data·model = {sizes[_D] * sizes[_M]} but there are {n} devices "
            f"(fix: make the product {n}, or use --mesh=auto)"
        )
    return sizes


def auto_shape(num_devices: int, config=None) -> dict[str, int]:
    """The mesh `--mesh=auto` picks: as many model shards as divide the device count, the MLP width
    and the key/value heads (tensor parallelism keeps every weight split without gathers), the rest
    over data."""
    model = 1
    for m in range(num_devices, 0, -1):
        if num_devices % m:
            continue
        if config is not None and (config.intermediate_size % m or config.num_kv_heads % m):
            continue
        model = m
        break
    return {_D: num_devices // model, _M: model}


def make_mesh(
    spec: str | dict[str, int] | None,
    config=None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh | None:
    """A `Mesh(("data", "model"))` over `devices` (default: every device of every process), from a
    `--mesh` string or a parsed dict; None for a single-device run."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec or "", len(devices)) if isinstance(spec, (str, type(None))) else spec
    if sizes is None:
        return None
    if "auto" in sizes:
        sizes = auto_shape(len(devices), config)
    grid = np.asarray(devices, dtype=object).reshape(sizes[_D], sizes[_M])
    return Mesh(grid, AXES)


def data_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape[_D]


def initialize_distributed(
    coordinator: str, num_processes: int, process_id: int, *, timeout_s: int = 300
) -> None:
    """`jax.distributed.initialize` for a multi-host run (call it before any other JAX call).

    On CPU the cross-process collectives use gloo (XLA's CPU default has none across processes).
    Every process then sees every device in `jax.devices()`, so `make_mesh` builds the one global
    mesh."""
    # Only the CPU client reads this; GPU/TPU processes use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


# ------------------------------------------------------------------------------------------------
# Specs


def _fit(mesh: Mesh, shape: Sequence[int], axes: Sequence[Any]) -> PartitionSpec:
    """`axes`, less every mesh axis (or tuple of axes) that does not divide its array axis."""
    out = []
    for dim, ax in zip(shape, axes):
        names = ax if isinstance(ax, tuple) else (ax,) if ax else ()
        size = math.prod(mesh.shape[a] for a in names)
        out.append(ax if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def param_spec(family: str, path: str, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The `PartitionSpec` of the parameter at `path` ("/"-joined) under `RULES[family]`."""
    for pattern, axes in RULES[family]:
        if re.search(pattern, path) and len(axes) == len(shape):
            return _fit(mesh, shape, axes)
    return PartitionSpec()


def rows_spec(mesh: Mesh, shape: Sequence[int]) -> PartitionSpec:
    """Leading axis over `data` (when it divides), the rest replicated."""
    return _fit(mesh, shape, (_D,) + (None,) * (len(shape) - 1))


def square_spec(mesh: Mesh, shape: Sequence[int]) -> PartitionSpec:
    """`[f, f]` editing matrices (C0, projectors, previous-edit caches): rows over every device."""
    return _fit(mesh, shape, ((_D, _M), None))


# ------------------------------------------------------------------------------------------------
# Placement


def place(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global `jax.Array` with `sharding` from host data that every process holds in full (or a
    `jax.Array`, resharded). Each process builds only its own devices' shards."""
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if not x.is_fully_addressable:  # a global array: let XLA move the shards
            return jax.jit(lambda a: a, out_shardings=sharding)(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place_rows(mesh: Mesh | None, tree):
    """Every array leaf of `tree` with its leading axis over `data` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: place(x, NamedSharding(mesh, rows_spec(mesh, np.shape(x)))), tree)


def place_square(mesh: Mesh | None, x):
    """An `[f, f]` editing matrix placed by `square_spec` (unchanged without a mesh)."""
    if mesh is None:
        return x
    return place(x, NamedSharding(mesh, square_spec(mesh, np.shape(x))))


def _path_str(path) -> str:
    """ "model/layers/0/mlp/down_proj/kernel" for a pytree path into an `nnx.State` (the trailing
    `.value` of the Variable dropped)."""
    keys = [p for p in path if not isinstance(p, jax.tree_util.GetAttrKey)]
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in keys)


def shard_params(params, family: str, mesh: Mesh):
    """The `nnx.State` `params` with every array placed by the rule table (values unchanged)."""

    def one(path, x):
        spec = param_spec(family, _path_str(path), np.shape(x), mesh)
        return place(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(one, params)


def reshard(x: jax.Array, like: jax.Array) -> jax.Array:
    """`x` in the sharding of `like` (a no-op on one device)."""
    if isinstance(like, jax.Array) and isinstance(like.sharding, NamedSharding):
        return place(x, like.sharding)
    return x


def to_host(x) -> np.ndarray:
    """A numpy copy of a (possibly multi-process) array: gathered across processes when this
    process does not hold all of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def shard_report(params, family: str, mesh: Mesh) -> dict[str, Any]:
    """What each device holds: per parameter, its spec, global and per-device bytes; and the
    parameters a rule named but whose axes did not divide (`fallbacks`)."""
    rows, fallbacks, total, per_device = [], [], 0, 0
    for path, v in nnx.to_flat_state(params):
        x = v[...] if hasattr(v, "get_value") or hasattr(v, "value") else v
        name = "/".join(map(str, path))
        want = next((axes for pat, axes in RULES[family] if re.search(pat, name)), None)
        spec = param_spec(family, name, x.shape, mesh)
        nbytes = x.size * x.dtype.itemsize
        shard = x.addressable_shards[0].data if isinstance(x, jax.Array) else x
        local = shard.size * x.dtype.itemsize
        total += nbytes
        per_device += local
        rows.append({"path": name, "spec": str(spec), "bytes": nbytes, "device_bytes": local})
        if want is not None and tuple(spec) != tuple(want):
            fallbacks.append(name)
    return {"params": rows, "fallbacks": fallbacks, "bytes": total, "device_bytes": per_device}
