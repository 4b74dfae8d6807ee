"""Per-device memory of one editing batch, from executables compiled ahead of time (no weights).

    python experiments/memory_plan.py --model=llama3_8b --mesh=data:1,model:8 --batch_size=100 \
        --dtype=bfloat16 --method=ENCORE --out=plan.json

The model is built abstractly (shapes and shardings only), each stage of a batch is compiled for
the mesh (the search's clean pass and loop at the batch's shapes, the key pass, a C0 step, the
method's solve, AlphaEdit's projector, the weight update) and XLA's buffer assignment gives the
argument, temporary and output bytes per device (`jaxedit.memory`). It prints them, the resident
arrays, the peak as compiled, the accelerator estimate (compiled on CPU: without XLA:CPU's float32
copies of bf16 weights, which GPUs and TPUs do not make), a fits / does-not-fit verdict for named
hardware from the accelerator estimate (a machine with a fixed device count must match the mesh's)
and, where it does not fit, which knob helps. `--out` writes
`{"stages": {name: {"argument_bytes", "temp_bytes", "output_bytes", "peak_bytes"}},
"peak_bytes", "fits": {hardware: bool}, ...}` (bytes per device).

Several methods and meshes at once (`--method=ENCORE,MEMIT --mesh="data:1,model:8 data:8,model:1"`)
give a table and `{"plans": [...]}`. On a CPU machine the binary gives itself as many host devices
as the largest mesh needs (XLA_FLAGS, before JAX starts); the plan is then XLA:CPU's buffer
assignment, an estimate for an accelerator. Run it on the accelerator for that backend's figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys


def _devices_needed(argv: list[str]) -> int:
    """The largest D·M among the --mesh values (read before JAX is imported)."""
    need = 1
    for arg in argv:
        if arg.startswith("--mesh="):
            for spec in arg.split("=", 1)[1].split():
                sizes = dict(p.split(":") for p in spec.split(",") if ":" in p)
                with contextlib.suppress(ValueError):  # the flag's own check names it
                    need = max(need, int(sizes.get("data", 1)) * int(sizes.get("model", 1)))
    return need


# Host devices for the CPU backend (the flag affects only XLA's host platform, so it is harmless
# on a GPU/TPU machine); a device count set by the caller is kept.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    _n = _devices_needed(sys.argv)
    if _n > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
        ).strip()

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cli  # noqa: E402  (experiments/cli.py: the user-error rule)
import jax  # noqa: E402
from absl import flags  # noqa: E402

from jaxedit import hparams, memory, sharding  # noqa: E402
from jaxedit.models import presets  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "llama3_8b", f"Architecture: one of {', '.join(presets.ARCHITECTURES)}."
)
flags.DEFINE_integer("num_layers", None, "Blocks (default: the architecture's).", lower_bound=1)
flags.DEFINE_string("mesh", "data:1,model:8", "Mesh 'data:D,model:M'; several separated by spaces.")
flags.DEFINE_string(
    "method",
    "ENCORE",
    "MEMIT, MEMIT_seq, ENCORE, AlphaEdit, EMMET, MEMIT_lti, AlphaEdit_lti (comma list).",
)
flags.DEFINE_integer("batch_size", 100, "Requests per batch.", lower_bound=1)
flags.DEFINE_integer(
    "search_requests",
    0,
    "Requests searched at once (the config's search.max_requests; 0 = the whole batch).",
    lower_bound=0,
)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"], "Weight dtype.")
flags.DEFINE_integer("prompt_len", 32, "Padded length of the search and key prompts.")
flags.DEFINE_integer("stats_len", 512, "Padded document length of a C0 step.")
flags.DEFINE_string("out", None, "Write the plan(s) here as JSON.")

GB = 1e9


def _gb(x: int) -> str:
    return f"{x / GB:.2f}"


def _config(method: str, model: str):
    paper = {"llama3_8b", "llama2_7b", "gpt2_xl"}
    base = "llama3_8b" if model not in paper else model
    if method in hparams.LTI_VARIANTS:  # LTI's search: its teacher pass and KL buffers
        return hparams.lti_config(method, base)
    return hparams.paper_config(method, base)


def one_plan(model: str, method: str, mesh_text: str, cache: dict) -> dict:
    """The plan of `method` on `model` for the mesh `mesh_text` (over the first D·M devices)."""
    arch = presets.architecture(model)
    if FLAGS.num_layers:
        arch = presets.architecture(model, num_layers=FLAGS.num_layers)
    cfg = _config(method, model)
    cfg = dataclasses.replace(
        cfg, search=dataclasses.replace(cfg.search, max_requests=FLAGS.search_requests)
    )
    if max(cfg.layers) >= arch.num_layers:
        raise cli.UserError(
            f"--num_layers={arch.num_layers}: {method} edits layers {list(cfg.layers)} (fix: "
            f"at least {max(cfg.layers) + 1} layers)"
        )
    mesh = sharding.make_mesh(mesh_text, arch, devices=jax.devices()[: _count(mesh_text)])
    shapes = memory.Shapes(
        batch_size=FLAGS.batch_size, prompt_len=FLAGS.prompt_len, stats_len=FLAGS.stats_len
    )
    t0 = time.perf_counter()
    res = memory.plan(arch, cfg, mesh, dtype=FLAGS.dtype, shapes=shapes, cache=cache)
    res.update(
        model=model,
        num_layers=arch.num_layers,
        method=method,
        batch_size=FLAGS.batch_size,
        search_requests=FLAGS.search_requests or FLAGS.batch_size,
        dtype=FLAGS.dtype,
        fits=memory.fits(res),
        compile_s=round(time.perf_counter() - t0, 1),
        backend=jax.default_backend(),
    )
    res["advice"] = {
        hw: memory.advice(res, cap) for hw, cap in memory.HARDWARE.items() if not res["fits"][hw]
    }
    return res


def print_plan(res: dict) -> None:
    mesh = "×".join(str(v) for v in res["mesh"].values())
    print(
        f"\n{res['model']} ({res['num_layers']} blocks, {res['dtype']}), {res['method']}, batch "
        f"{res['batch_size']} (searched {res['search_requests']} at once), mesh data×model "
        f"{mesh} ({res['backend']}); GB per device:"
    )
    print(
        f"  {'stage':16s} {'arguments':>10s} {'temp':>8s} {'outputs':>8s} {'peak':>8s} "
        f"{'accel. peak':>12s}"
    )
    for name, st in res["stages"].items():
        print(
            f"  {name:16s} {_gb(st['argument_bytes']):>10s} {_gb(st['temp_bytes']):>8s} "
            f"{_gb(st['output_bytes']):>8s} {_gb(st['peak_bytes']):>8s} "
            f"{_gb(st['accelerator_peak_bytes']):>12s}"
        )
    print("  resident:", ", ".join(f"{k} {_gb(v)}" for k, v in res["resident"].items() if v))
    print(
        f"  peak {_gb(res['peak_bytes'])} GB per device as compiled ({res['peak_stage']}); "
        f"accelerator estimate {_gb(res['accelerator_peak_bytes'])} GB "
        f"({res['accelerator_peak_stage']})"
        + ("; XLA:CPU's bf16->f32 weight copies removed" if res["cpu_bf16_upcast_removed"] else "")
    )
    print("  fits:", ", ".join(f"{hw} {'yes' if ok else 'no'}" for hw, ok in res["fits"].items()))
    shown = set()
    for hw, tips in res["advice"].items():
        if hw in memory.HARDWARE_DEVICES and memory.HARDWARE_DEVICES[hw] != res["devices"]:
            continue  # another device count: not a memory question
        for tip in tips:
            if tip not in shown:
                print(f"  to fit {hw}: {tip}")
                shown.add(tip)


def main(argv):
    del argv
    if FLAGS.model not in presets.ARCHITECTURES:
        raise cli.UserError(
            f"--model={FLAGS.model}: unknown (fix: one of {', '.join(presets.ARCHITECTURES)})"
        )
    meshes = FLAGS.mesh.split()
    for m in meshes:
        sharding.parse_mesh(m, _count(m))  # a bad spec is named here
    methods = [m.strip() for m in FLAGS.method.split(",") if m.strip()]
    known = ("MEMIT", "MEMIT_seq", "ENCORE", "AlphaEdit", "EMMET", "MEMIT_lti", "AlphaEdit_lti")
    for m in methods:
        if m not in known:
            raise cli.UserError(f"--method={m}: unknown (fix: one of {', '.join(known)})")
    cache: dict = {}
    plans = []
    for mesh_text in meshes:
        if _count(mesh_text) > jax.device_count():
            raise cli.UserError(
                f"--mesh={mesh_text} needs {_count(mesh_text)} devices, this machine has "
                f"{jax.device_count()} (fix: a smaller mesh, or run on more devices)"
            )
        for method in methods:
            res = one_plan(FLAGS.model, method, mesh_text, cache)
            print_plan(res)
            plans.append(res)
    if FLAGS.out:
        out = plans[0] if len(plans) == 1 else {"plans": plans}
        Path(FLAGS.out).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {FLAGS.out}")


def _count(mesh_text: str) -> int:
    """D·M of a mesh spec (a plan may use fewer devices than the machine has)."""
    sizes = dict(p.split(":", 1) for p in mesh_text.split(",") if ":" in p)
    try:
        return int(sizes.get("data", 1)) * int(sizes.get("model", 1))
    except ValueError:
        raise cli.UserError(
            f"--mesh={mesh_text!r}: expected 'data:D,model:M', e.g. 'data:2,model:4'"
        ) from None


if __name__ == "__main__":
    cli.run(main)
