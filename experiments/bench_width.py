"""Editing at real width: a Llama-3-8B-shaped model (its widths, GQA 32/8, d_ff 14336, vocabulary
128256; random bf16 weights from a seed) with fewer blocks, time and peak memory per stage, beside
the memory plan's prediction for the same run.

    python experiments/bench_width.py --mesh=data:1,model:8 --out=width_8dev.json   # 8 devices
    python experiments/bench_width.py --mesh= --out=width_1dev.json                  # 1 device

On CPU the devices are host devices (the binary sets XLA_FLAGS for the mesh before JAX starts), so
"memory" is the process's resident set: per stage the peak (VmHWM, reset before the stage) less the
resident set before the weights were built, for all devices together. The plan (`jaxedit.memory`,
compiled for the same mesh and shapes) is per device; its total is that × the devices. Stages: the
weights (drawn on the host one parameter at a time, then placed), one C0 accumulation step, then two
batches (the second is measured: the journal of the first then exists, as in a long run), each
split into the search (`Editor.search`) and the update (`Editor.apply` with the search's targets).
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    for _arg in sys.argv:
        if _arg.startswith("--mesh=") and ":" in _arg:
            _sizes = dict(p.split(":", 1) for p in _arg.split("=", 1)[1].split(","))
            _n = int(_sizes.get("data", 1)) * int(_sizes.get("model", 1))
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
            ).strip()

import dataclasses
import json
import time
import zlib
from pathlib import Path

import cli
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from jaxedit import editor, hparams, memory, sharding, stats, testing
from jaxedit import requests as requests_lib
from jaxedit.lm import LanguageModel
from jaxedit.models import build, presets

import paths

FLAGS = flags.FLAGS
flags.DEFINE_string("mesh", "data:1,model:8", "Mesh 'data:D,model:M'; empty: one device.")
flags.DEFINE_integer("num_layers", 3, "Blocks of the Llama-3-8B-shaped model.", lower_bound=2)
flags.DEFINE_list("layers", ["1"], "Edited layers (the last is the target layer).")
flags.DEFINE_integer("batch_size", 4, "Requests per batch.", lower_bound=1)
flags.DEFINE_integer("num_steps", 5, "Search steps.", lower_bound=2)
flags.DEFINE_string("method", "ENCORE", "Editing method (the paper's Llama-3-8B setting).")
flags.DEFINE_integer("seed", 0, "Weight seed.")
flags.DEFINE_string("out", None, "Write the figures here as JSON.")

GB = 1e9


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Resets the process's peak resident set (Linux: VmHWM := VmRSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak() -> int:
    return _status("VmHWM")


def build_sharded(config, mesh, dtype, seed: int):
    """(graphdef, params): random normal(0, 0.02) matrices and unit norm scales, each drawn on the
    host from `seed` and the parameter's path (the same weights on any mesh), one parameter at a
    time, and placed on the devices by the rule table (only one parameter's float32 draw is ever
    on the host)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(config, dtype=dtype, seed=seed)))

    def one(path, x):
        name = sharding._path_str(path)
        if x.ndim == 1:
            host = np.ones(x.shape, np.float32)
        else:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            host = rng.standard_normal(x.shape, dtype=np.float32)
            host *= 0.02
        host = host.astype(x.dtype)
        if mesh is None:
            return jax.device_put(host)
        spec = sharding.param_spec(config.family, name, x.shape, mesh)
        return sharding.place(host, jax.sharding.NamedSharding(mesh, spec))

    return graphdef, jax.tree_util.tree_map_with_path(one, abstract)


def stage(name: str, fn, figures: dict, base: int):
    reset_peak()
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    dt = time.perf_counter() - t0
    figures[name] = {"time_s": round(dt, 2), "peak_bytes": peak() - base}
    print(f"{name:12s} {dt:8.1f} s   peak {(peak() - base) / GB:6.2f} GB (all devices)", flush=True)
    return out


def main(argv):
    del argv
    layers = tuple(int(x) for x in FLAGS.layers)
    arch = presets.architecture("llama3_8b", num_layers=FLAGS.num_layers)
    if max(layers) >= arch.num_layers:
        raise cli.UserError(f"--layers={FLAGS.layers}: the model has {arch.num_layers} blocks")
    mesh = sharding.make_mesh(FLAGS.mesh or None, arch)
    cfg = hparams.paper_config(FLAGS.method, "llama3_8b")
    cfg = dataclasses.replace(
        cfg,
        layers=layers,
        search=dataclasses.replace(cfg.search, num_steps=FLAGS.num_steps),
    )
    tok = testing.gpt2_tokenizer(paths.shared_dir() / "data" / "gpt2_tokenizer")
    data = paths.shared_dir() / "data" / "counterfact" / "counterfact-edit.json"
    reqs = requests_lib.load_requests(str(data), 0, 2 * FLAGS.batch_size)
    batches = [reqs[: FLAGS.batch_size], reqs[FLAGS.batch_size :]]
    figures: dict = {}
    devices = 1 if mesh is None else mesh.devices.size
    print(
        f"llama3_8b-shaped, {arch.num_layers} blocks, bf16, {devices} device(s), mesh {FLAGS.mesh}"
    )

    base = _status("VmRSS")  # JAX started, nothing built
    graphdef, params = stage(
        "weights", lambda: build_sharded(arch, mesh, jnp.bfloat16, FLAGS.seed), figures, base
    )
    model = LanguageModel(arch, tok, graphdef, params, source="llama3_8b-shaped", mesh=mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    corpus = stats.read_corpus(
        paths.shared_dir() / "data" / "text" / "wikitext-2-raw.wiki.test.raw", 64
    )
    docs = [tok(t)["input_ids"][:64] for t in corpus]
    cov, _ = stage(
        "stats",
        lambda: stats.collect_second_moments(model, docs, layers, progress=False),
        figures,
        base,
    )
    # C0 goes to the devices once: placed by the editor on a mesh, one device array otherwise.
    st = stats.LayerStats(cov={l: c if mesh else jnp.asarray(c) for l, c in cov.items()})
    templates = (("{}",), ("The following is true. {}", "Here is a fact. {}"))
    cfg = dataclasses.replace(cfg, templates=templates)
    ed = editor.Editor(model, cfg, st, templates, max_journal=1)
    del cov, st
    state = ed.init_state()
    state, _ = ed.apply(state, batches[0])  # batch 1: compiles, and leaves a journal
    res, _ = stage("search", lambda: ed.search(state.params, batches[1]), figures, base)
    targets = sharding.to_host(res.targets)[: len(batches[1])]
    state, _ = stage("update", lambda: ed.apply(state, batches[1], targets=targets), figures, base)

    # The plan for the same run: the shapes the editor used.
    sb, _ = editor.build_search_batch(
        tok, batches[1], templates, pad_requests_to=ed._padded_size(len(batches[1]))
    )
    kb = editor.build_key_batch(tok, batches[1], templates)
    shapes = memory.Shapes(
        batch_size=len(batches[1]),
        prompt_len=max(sb.input_ids.shape[2], kb.input_ids.shape[2]),
        window_len=sb.window_len,
        target_len=sb.target_ids.shape[2],
        num_rewrite=sb.input_ids.shape[1] - 1,
        num_key_contexts=kb.input_ids.shape[1],
        stats_len=64,
        stats_tokens=4096,
    )
    plan_mesh = mesh or sharding.make_mesh("data:1,model:1", arch, devices=jax.devices()[:1])
    plan = memory.plan(arch, cfg, plan_mesh, dtype="bfloat16", shapes=shapes)
    pst = plan["stages"]
    predicted = {
        "weights": plan["resident"]["weights"],
        "stats": pst["stats"]["peak_bytes"],
        "search": max(pst["search_prepare"]["peak_bytes"], pst["search_loop"]["peak_bytes"]),
        "update": max(pst[k]["peak_bytes"] for k in ("keys", "solve", "update")),
    }
    print(f"\n{'stage':12s} {'measured GB':>12s} {'plan GB':>10s} {'plan/measured':>14s}")
    for k, v in figures.items():
        v["plan_bytes"] = predicted[k] * devices
        ratio = v["plan_bytes"] / max(v["peak_bytes"], 1)
        v["plan_over_measured"] = round(ratio, 3)
        print(f"{k:12s} {v['peak_bytes'] / GB:12.2f} {v['plan_bytes'] / GB:10.2f} {ratio:14.2f}")
    measured_peak = max(v["peak_bytes"] for v in figures.values())
    plan_peak = plan["peak_bytes"] * devices
    print(
        f"peak: measured {measured_peak / GB:.2f} GB, plan {plan_peak / GB:.2f} GB "
        f"({plan_peak / measured_peak:.2f}×)"
    )
    out = {
        "model": "llama3_8b-shaped",
        "num_layers": arch.num_layers,
        "parameters": n_params,
        "devices": devices,
        "mesh": FLAGS.mesh or None,
        "method": FLAGS.method,
        "layers": list(layers),
        "batch_size": FLAGS.batch_size,
        "num_steps": FLAGS.num_steps,
        "backend": jax.default_backend(),
        "stages": figures,
        "measured_peak_bytes": measured_peak,
        "plan_peak_bytes": plan_peak,
        "plan": plan,
    }
    if FLAGS.out:
        Path(FLAGS.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
