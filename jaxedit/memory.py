"""Memory plans: per-device bytes of every editing stage, from executables compiled ahead of time.

`plan(config, edit_cfg, mesh, ...)` builds the model abstractly (shapes and shardings, no
weights), lowers and compiles each stage of one batch for `mesh` exactly as the editor runs it,
and reads XLA's own buffer assignment (`Compiled.memory_analysis()`): argument, temporary and
output bytes per device. Stages:

- `teacher` (LTI only): the teacher pass, one full forward of the prefixed rows (`r` × (rewriting
  prompts + the KL prompt) at `teacher_len`), whose output — last-layer log-probabilities at the
  target positions and the mid-layer logit lens, float32 over the vocabulary — stays resident
  through the search as an input of the next two stages;
- `search_prepare`: the clean pass over every search row (`r` requests × (rewriting prompts + the
  KL prompt)), which also caches the later blocks' keys and values;
- `search_loop`: the jitted `lax.while_loop` (forward from the edited layer on the window, the
  gradient with respect to δ, Adam);
- `keys`: keys and the current output at one edited layer (`editor.keys_and_current`);
- `stats`: one C0 accumulation step (`stats._accumulate`, all edited layers);
- `solve`: the method's closed form for one layer; `projector` (AlphaEdit): P from C0;
- `update`: W + ΔW rounded to the weight dtype.

Besides its own arguments a stage runs while other arrays stay resident: the weights, C0 (and for
AlphaEdit the projector) and the previous-edit cache of every edited layer, and the edit journal
(the last batch's ΔW in float32 and the kernels before it). A stage's `peak_bytes` is the resident
arrays + its other inputs + its temporaries + its outputs (less donated aliases); XLA's
`argument_bytes` are reported too, but they omit the inputs a stage does not read (jit prunes
them). The plan's peak is the largest stage peak. Sizes are per device (the arrays' shards).
CPU, GPU and TPU compilers assign buffers differently (fusion, layouts): a plan compiled on CPU
is an estimate for an accelerator; compiled on the target backend it is that backend's own figure.
One CPU-only cost is large: XLA:CPU has no bf16 matmul, so it converts bf16 weights to float32
copies for the dots of a pass (temporaries of about 2× the weights the pass reads); GPUs and TPUs
multiply bf16 directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxedit import editor, lti, search, sharding, solve, stats
from jaxedit.config import EditConfig
from jaxedit.models import ModelConfig, build_abstract, rewrite_path
from jaxedit.prompts import KeyBatch, SearchBatch, TeacherBatch

__all__ = ["HARDWARE", "Shapes", "advice", "fits", "plan"]

GiB = 1024**3
# Usable memory per device (bytes): HBM per TPU core / GPU.
HARDWARE: dict[str, int] = {
    "TPU v2-8": 8 * GiB,
    "TPU v3-8": 16 * GiB,
    "TPU v5e-1": 16 * GiB,
    "TPU v5e-4": 16 * GiB,
    "TPU v5e-8": 16 * GiB,
    "A100-40": 40 * GiB,
    "A100-80": 80 * GiB,
    "H100-80": 80 * GiB,
    "H200-141": 141 * GiB,
}
# Devices of each named machine: a mesh must use exactly these many.
HARDWARE_DEVICES: dict[str, int] = {
    "TPU v2-8": 8,
    "TPU v3-8": 8,
    "TPU v5e-1": 1,
    "TPU v5e-4": 4,
    "TPU v5e-8": 8,
}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The padded shapes a batch runs at (the editor buckets real prompts to these).

    Attributes:
      batch_size: requests per batch (padded like the editor: 100 stays 100).
      prompt_len: padded prompt length of the search and key rows.
      window_len: positions the search loop re-runs per row.
      target_len: padded target tokens per row.
      num_rewrite: rewriting prompts per request (context templates; the KL prompt is one more).
      num_key_contexts: key prompts per request.
      stats_len: padded document length of a C0 step (rows = stats_tokens // stats_len).
      stats_tokens: padded tokens per C0 step.
      teacher_len: padded length of LTI's teacher rows (the "Imagine that {prompt} {target}"
        prefix and the prompt: about twice prompt_len).
    """

    batch_size: int = 100
    prompt_len: int = 32
    window_len: int = 8
    target_len: int = 4
    num_rewrite: int = 6
    num_key_contexts: int = 6
    stats_len: int = 512
    stats_tokens: int = 4096
    teacher_len: int = 64


def _named(mesh, spec) -> NamedSharding:
    return NamedSharding(mesh, spec)


def _sds(shape, dtype, mesh, spec=None) -> Any:  # a jax.ShapeDtypeStruct, typed as an array
    spec = PartitionSpec() if spec is None else spec
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=_named(mesh, spec))


def _rows(shape, dtype, mesh) -> Any:
    return _sds(shape, dtype, mesh, sharding.rows_spec(mesh, shape))


def _square(f: int, dtype, mesh) -> Any:
    return _sds((f, f), dtype, mesh, sharding.square_spec(mesh, (f, f)))


def device_bytes(x: jax.ShapeDtypeStruct) -> int:
    """Bytes of one device's shard of `x`."""
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return int(math.prod(shard)) * jnp.dtype(x.dtype).itemsize


def abstract_model(config: ModelConfig, dtype, mesh):
    """(graphdef, params) with `ShapeDtypeStruct` leaves placed by the rule table."""
    graphdef, state = nnx.split(build_abstract(config, dtype=dtype))

    def one(path, x):
        spec = sharding.param_spec(config.family, sharding._path_str(path), x.shape, mesh)
        return _sds(x.shape, x.dtype, mesh, spec)

    return graphdef, jax.tree_util.tree_map_with_path(one, state)


def _analysis(lowered) -> dict[str, int]:
    m = lowered.compile().memory_analysis()
    alias = int(getattr(m, "alias_size_in_bytes", 0))
    return {
        "argument_bytes": int(m.argument_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": alias,
    }


def _with_rows(tree, r: int, mesh):
    """Abstract leaves of an `eval_shape` result: `[r, ...]` leaves over data, others replicated."""

    def one(x):
        if x.ndim and x.shape[0] == r:
            return _rows(x.shape, x.dtype, mesh)
        return _sds(x.shape, x.dtype, mesh)

    return jax.tree.map(one, tree)


def plan(
    config: ModelConfig,
    cfg: EditConfig,
    mesh,
    *,
    dtype="bfloat16",
    shapes: Shapes = Shapes(),
    cache: dict | None = None,
) -> dict[str, Any]:
    """The memory plan of one batch of `cfg` on `mesh` (see the module docstring). `cache` (a dict
    the caller keeps) reuses the compiled model stages across methods with the same layers.

    Returns `{"stages": {name: {"argument_bytes", "temp_bytes", "output_bytes", "peak_bytes",
    ...}}, "resident": {what: bytes}, "peak_bytes", "peak_stage"}`, bytes per device.
    """
    graphdef, params = abstract_model(config, dtype, mesh)
    f, d = config.intermediate_size, config.hidden_size
    s = shapes
    data = sharding.data_size(mesh)
    searched = min(s.batch_size, cfg.search.max_requests or s.batch_size)  # requests at once
    r = editor.padded_search_size(searched, data)  # search rows, padded as the editor pads them
    rk = -(-s.batch_size // data) * data  # key rows (pad_key_rows)
    g = s.num_rewrite + 1
    t, p, w = s.prompt_len, s.target_len, s.window_len
    z = cfg.z_layer
    i32, f32 = jnp.int32, jnp.float32
    prev_cache = cfg.method == "AlphaEdit" or (
        cfg.method in ("MEMIT_seq", "ENCORE") and cfg.solve.add_prev_edits
    )
    n_layers = len(cfg.layers)
    param_bytes = sum(device_bytes(x) for x in jax.tree.leaves(params))
    kernel = editor._get(params, rewrite_path(config, cfg.layers[0])).get_value()
    square = _square(f, f32, mesh)
    sq_bytes = device_bytes(square)
    dw = _sds((f, d), f32, mesh, kernel.sharding.spec)  # ΔW is kept in the kernel's sharding
    resident = {
        "weights": param_bytes,
        "C0": n_layers * sq_bytes,
        "previous-edit caches": n_layers * sq_bytes if prev_cache else 0,
        "projectors": n_layers * sq_bytes if cfg.method == "AlphaEdit" else 0,
        # The last batch's ΔW (float32) and the kernels before it (rollback), and the unedited
        # kernels the editor's model keeps.
        "journal": n_layers * (device_bytes(dw) + 2 * device_bytes(kernel)),
    }
    total_resident = sum(resident.values())
    stages: dict[str, dict[str, int]] = {}
    cache = {} if cache is None else cache
    hp = cfg.search
    lti_key = (hp.lti, hp.midlayer) if hp.lti else None  # LTI's search is another program
    model_key = (config, str(dtype), tuple(mesh.shape.items()), cfg.layers, z, shapes, r, lti_key)

    # XLA:CPU converts bf16 weights to float32 copies for its dots (see the module docstring):
    # compiled on CPU, each model pass is compiled once more with float32 weights (no converts) and
    # that temporary size gives the accelerator estimate.
    upcast = jax.default_backend() == "cpu" and jnp.dtype(dtype).itemsize < 4
    model32 = abstract_model(config, "float32", mesh) if upcast else None

    def add(name, make, inputs=lambda: (), resident: int | None = None, model_pass=False):
        """Compiles `make()` (`make(graphdef, params)` for a model pass; once per model stage:
        `cache`); the peak adds the resident arrays (`resident`, default all) and the stage's
        other inputs (`inputs()`, abstract)."""
        key = (model_key, name, cfg.method if name in ("solve", "projector") else None)
        if key not in cache:
            a = _analysis(make(graphdef, params) if model_pass else make())
            a["input_bytes"] = sum(device_bytes(x) for x in jax.tree.leaves(inputs()))
            a["accelerator_temp_bytes"] = a["temp_bytes"]
            if model_pass and model32 is not None:
                temp32 = _analysis(make(*model32))["temp_bytes"]
                a["accelerator_temp_bytes"] = min(a["temp_bytes"], temp32)
            cache[key] = a
        a = dict(cache[key])
        a["resident_bytes"] = total_resident if resident is None else resident
        rest = a["resident_bytes"] + a["input_bytes"] + a["output_bytes"] - a["alias_bytes"]
        a["peak_bytes"] = rest + a["temp_bytes"]
        a["accelerator_peak_bytes"] = rest + a["accelerator_temp_bytes"]
        stages[name] = a

    # Search.
    batch = SearchBatch(
        input_ids=_rows((r, g, t), i32, mesh),
        mask=_rows((r, g, t), i32, mesh),
        lookup=_rows((r, g), i32, mesh),
        target_pos=_rows((r, g, p), i32, mesh),
        target_ids=_rows((r, g, p), i32, mesh),
        target_mask=_rows((r, g, p), f32, mesh),
        valid=_rows((r,), jnp.bool_, mesh),
        window_start=_rows((r, g), i32, mesh),
        window_len=w,
    )
    ref: Any = None  # LTI's teacher distributions, resident through the search
    if hp.lti:
        teacher = TeacherBatch(
            input_ids=_rows((r, g, s.teacher_len), i32, mesh),
            mask=_rows((r, g, s.teacher_len), i32, mesh),
            target_pos=_rows((r, g, p), i32, mesh),
            lookup=_rows((r, g), i32, mesh),
        )
        add(
            "teacher",
            lambda gd, ps: lti.teacher_log_probs.lower(gd, ps, teacher, hp.midlayer),
            lambda: teacher,
            model_pass=True,
        )
        ref = jax.eval_shape(
            lambda tb: lti.teacher_log_probs(graphdef, params, tb, hp.midlayer), teacher
        )
        ref = _with_rows(ref, r, mesh)
    add(
        "search_prepare",
        lambda gd, ps: search._prepare.lower(gd, ps, batch, hp, z, ref),
        lambda: (batch, ref),
        model_pass=True,
    )

    def loop_inputs(gd=graphdef, ps=params):
        ctx, state = jax.eval_shape(lambda b, t: search._prepare(gd, ps, b, hp, z, t), batch, ref)
        return _with_rows(ctx, r, mesh), _with_rows(state, r, mesh)

    def loop(gd, ps):
        ctx, state = loop_inputs(gd, ps)
        return search._run.lower(gd, ps, ctx, state, hp, z, _sds((), i32, mesh))

    # Its inputs: the cached keys/values, h0, q0, ...
    add("search_loop", loop, loop_inputs, model_pass=True)
    # Keys at one layer.
    c = s.num_key_contexts
    kb = KeyBatch(
        input_ids=_rows((rk, c, t), i32, mesh),
        mask=_rows((rk, c, t), i32, mesh),
        lookup=_rows((rk, c), i32, mesh),
        groups=(1, c - 1),
    )
    add(
        "keys",
        lambda gd, ps: editor.keys_and_current.lower(gd, ps, kb, cfg.layers[-1], z),
        lambda: kb,
        model_pass=True,
    )
    # One C0 step (all edited layers at once), before any edit: the weights are resident, the
    # sums (what C0 becomes) are its inputs.
    rows = -(-max(1, s.stats_tokens // s.stats_len) // data) * data
    sums = tuple(square for _ in cfg.layers)
    docs = (_rows((rows, s.stats_len), i32, mesh), _rows((rows, s.stats_len), i32, mesh))
    add(
        "stats",
        lambda gd, ps: stats._accumulate.lower(gd, ps, sums, *docs, tuple(sorted(cfg.layers))),
        lambda: (sums, docs),
        resident=param_bytes,
        model_pass=True,
    )
    # The solve for one layer (C0, caches and projectors are resident).
    n = s.batch_size
    keys = _sds((f, n), f32, mesh)
    resid = _sds((d, n), f32, mesh)
    sv = cfg.solve
    method = "cholesky" if sv.solver == "cholesky" else "lu"
    if cfg.method == "AlphaEdit":
        add(
            "projector",  # once, before the first batch: its output is the resident projector
            lambda: solve.null_space_projector.lower(square, float(sv.nullspace_threshold)),
            resident=total_resident - resident["projectors"] // n_layers,
        )
        make = lambda: solve.alphaedit_update.lower(  # noqa: E731
            keys, resid, square, square, l2=float(sv.l2)
        )
    else:  # the editor's `_solve` options
        options = dict(
            cov_weight=float(sv.cov_weight), norm_lambda=float(sv.norm_lambda), method=method
        )
        if cfg.method == "EMMET":
            fn, options["emmet_lambda"] = solve.emmet_update, float(sv.emmet_lambda)
        else:
            fn, options["prev_kkt"] = solve.memit_update, square if prev_cache else None
        make = lambda: fn.lower(keys, resid, square, **options)  # noqa: E731
    add("solve", make, lambda: (keys, resid))
    add("update", lambda: editor._add_rounded.lower(kernel, dw))
    peak_stage = max(stages, key=lambda k: stages[k]["peak_bytes"])
    accel_stage = max(stages, key=lambda k: stages[k]["accelerator_peak_bytes"])
    return {
        "stages": stages,
        "resident": resident,
        "peak_bytes": stages[peak_stage]["peak_bytes"],
        "peak_stage": peak_stage,
        "accelerator_peak_bytes": stages[accel_stage]["accelerator_peak_bytes"],
        "accelerator_peak_stage": accel_stage,
        "cpu_bf16_upcast_removed": upcast,
        "mesh": dict(mesh.shape),
        "devices": int(np.prod(list(mesh.shape.values()))),
    }


def fits(result: dict[str, Any], headroom: float = 0.9) -> dict[str, bool]:
    """Per named hardware (all accelerators): the plan's mesh uses that many devices (where the
    machine has a fixed count) and its accelerator peak (`accelerator_peak_bytes`: the compiled
    peak, less XLA:CPU's bf16→f32 weight copies when the plan was compiled on CPU) is within
    `headroom` of a device's memory (the runtime keeps some)."""
    devices = result["devices"]
    out = {}
    for name, capacity in HARDWARE.items():
        count_ok = name not in HARDWARE_DEVICES or HARDWARE_DEVICES[name] == devices
        out[name] = bool(count_ok and result["accelerator_peak_bytes"] <= headroom * capacity)
    return out


def advice(result: dict[str, Any], capacity: int) -> list[str]:
    """Which knob helps when the plan does not fit a device of `capacity` bytes."""
    tips = []
    st, res = result["stages"], result["resident"]
    if res["weights"] > 0.5 * capacity:
        tips.append("weights dominate: more model shards (--mesh=data:1,model:N) or FSDP over data")
    if result["accelerator_peak_stage"].startswith("search"):
        tips.append(
            "the search dominates: search fewer requests at once (--config.search.max_requests; "
            "the update stays one batch), more data shards, or rematerialisation of the re-run "
            "blocks"
        )
    if (
        result["accelerator_peak_stage"] in ("solve", "projector")
        or st["solve"]["temp_bytes"] > 0.3 * capacity
    ):
        tips.append(
            "the solve holds a whole [f, f] matrix per device (XLA has no partitioned "
            "Cholesky/LU), so more shards do not shrink it: a device with more memory"
        )
    if res["C0"] + res["previous-edit caches"] + res["projectors"] > 0.3 * capacity:
        tips.append("C0 / caches / projectors are large: more devices split their rows")
    return tips or ["more devices or a smaller batch"]
