"""Sequential editor: explicit state in, new state and a report out (reference §3, §10).

One batch, in the reference order:

    Z = search(θ_start)                                  # all requests, one jitted while_loop
    for i, l in enumerate(layers):
        K, H = keys(θ, l), h_{z_layer}(θ) at the bare prompts    # θ holds this batch's layers < l
        R = (Z - H) / (len(layers) - i)
        dW_l = solve(method, K, R, C0_l, prev_kkt_l, ...)  # closed form, jitted
        θ.W_l = θ_start.W_l + dW_l
        prev_kkt_l += K Kᵀ                                 # methods with a previous-edit cache
    θ.W_l = θ_start.W_l + RECT(dW_l)                       # regularize.rect_keep_percent > 0
    θ.W_l = PRUNE(...)                                     # prune_when="every_batch" (or `prune`)

`EditState` is immutable; `apply` returns a new one, so a batch that fails (bad request, a
non-finite target or update) leaves the caller's state exactly as it was. The journal records each
batch's applied deltas (RECT's masked ones) and PRUNE's Δ' with the kernel it went onto; rollback
replays the journal from its base with the same floating-point operations: bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit import regularize, sharding, solve
from jaxedit.config import EditConfig
from jaxedit.errors import InputError
from jaxedit.lm import LanguageModel
from jaxedit.models import Probe, rewrite_path
from jaxedit.prompts import KeyBatch, build_key_batch, pad_key_rows
from jaxedit.requests import EditRequest, validate_requests
from jaxedit.search import SearchResult, search_requests
from jaxedit.shapes import bucket_in
from jaxedit.state import BatchReport, EditState, JournalEntry
from jaxedit.stats import LayerStats

log = logging.getLogger(__name__)
Array = jax.Array


class EditError(InputError, RuntimeError):
    """A batch could not be applied (e.g. a non-finite target: the requests or hyperparameters
    cannot be edited); the state passed in is unchanged."""


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _kernel(params, path) -> Array:
    return _get(params, path)[...]


def _with_kernels(params, config, kernels: dict[int, Array]):
    """A new State sharing every untouched array, with the given rewrite kernels replaced."""
    new = jax.tree.map(lambda x: x, params)
    for layer, value in kernels.items():
        _get(new, rewrite_path(config, layer)).set_value(value)
    return new


@jax.jit
def _add_rounded(kernel: Array, dw: Array) -> Array:
    """kernel + dW in float32, rounded once to the kernel's dtype (in the kernel's sharding)."""
    return (kernel.astype(jnp.float32) + dw.astype(jnp.float32)).astype(kernel.dtype)


def _add_placed(kernel: Array, dw: Array) -> Array:
    return sharding.reshard(_add_rounded(kernel, dw), kernel)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "z_layer"))
def keys_and_current(
    graphdef, params, kb: KeyBatch, layer: int, z_layer: int
) -> tuple[Array, Array]:
    """K `[f, r]` (per template group mean, then mean over groups; reference §1.3) and H `[d, r]`,
    the output of block z_layer at the subject's last token of the bare prompt (reference §3
    step 2)."""
    model = nnx.merge(graphdef, params)
    r, c, t = kb.input_ids.shape
    out = model(
        kb.input_ids.reshape(r * c, t),
        kb.mask.reshape(r * c, t),
        Probe(
            read_index=jnp.asarray(kb.lookup).reshape(r * c),  # a no-op under jit
            key_layers=(layer,),
            resid_layers=(z_layer,),
            stop_layer=z_layer,
        ),
    )
    k = out.keys[layer].astype(jnp.float32).reshape(r, c, -1)
    means, start = [], 0
    for size in kb.groups:
        means.append(jnp.mean(k[:, start : start + size], axis=1))
        start += size
    keys = jnp.mean(jnp.stack(means), axis=0)  # [r, f]
    current = out.residuals[z_layer].astype(jnp.float32).reshape(r, c, -1)[:, 0]
    return keys.T, current.T


def padded_search_size(n: int, data: int = 1) -> int:
    """The search's padded request count for n requests: a few buckets, so a run compiles the
    search a handful of times, and a multiple of the mesh's data size."""
    size = bucket_in(n, (1, 2, 4, 8, 10, 16, 32, 50, 64, 100, 128), 64)
    return -(-size // data) * data


class Editor:
    """Applies batches of edit requests to a model, sequentially, with explicit state.

    Args:
      model: the model to edit (its params are the starting state).
      cfg: the editing config (method, layers, search, solve).
      stats: C0 per edited layer (and projectors for AlphaEdit).
      templates: context templates in the nested reference form.
      max_journal: batches kept for rollback (older ones are folded into the journal's base).

    A model placed on a mesh (`LanguageModel.shard`) is edited on it: the statistics, caches and
    batches are placed as `jaxedit.sharding` describes, and every pass runs partitioned.
    """

    def __init__(
        self,
        model: LanguageModel,
        cfg: EditConfig,
        stats: LayerStats,
        templates,
        max_journal: int = 16,
    ):
        cfg.validate(model.config.num_layers)
        self.model, self.cfg, self.mesh = model, cfg, model.mesh
        if self.mesh is not None:  # C0 and projectors: rows over every device
            stats = LayerStats(
                cov={l: sharding.place_square(self.mesh, c) for l, c in stats.cov.items()},
                null_proj={
                    l: sharding.place_square(self.mesh, p) for l, p in stats.null_proj.items()
                },
            )
        self.stats = stats
        # The editor's own passes (search, keys) run at the editing config's precision.
        self._graphdef = model.with_precision(cfg.matmul_precision).graphdef
        self.templates = tuple(tuple(g) for g in templates)
        self.max_journal = max_journal
        self._original = {
            l: _kernel(model.params, rewrite_path(model.config, l)) for l in cfg.layers
        }
        missing = [l for l in cfg.layers if l not in stats.cov and cfg.method != "AlphaEdit"]
        missing += [l for l in cfg.layers if cfg.method == "AlphaEdit" and l not in stats.null_proj]
        if missing:
            raise ValueError(f"statistics missing for layers {missing} (method {cfg.method})")
        if cfg.solve.float64 and not jax.config.read("jax_enable_x64"):
            raise ValueError(
                "solve.float64=True needs 64-bit JAX: set JAX_ENABLE_X64=1 (CPU/GPU only)"
            )

    @property
    def uses_prev_cache(self) -> bool:
        m = self.cfg.method
        return m == "AlphaEdit" or (m in ("MEMIT_seq", "ENCORE") and self.cfg.solve.add_prev_edits)

    def init_state(self, params=None) -> EditState:
        params = self.model.params if params is None else params
        f = self.model.config.intermediate_size
        dtype = jnp.float64 if self.cfg.solve.float64 else jnp.float32
        kkt = (
            {l: sharding.place_square(self.mesh, jnp.zeros((f, f), dtype)) for l in self.cfg.layers}
            if self.uses_prev_cache
            else {}
        )
        kernels = self._kernels(params)
        return EditState(
            params=params, prev_kkt=kkt, num_edits=0, journal=(), base_kernels=kernels, base_kkt=kkt
        )

    # ---------------------------------------------------------------------------------------------

    def search(self, params, requests: Sequence[EditRequest]) -> tuple[SearchResult, list[dict]]:
        """Target activations of `requests` (in chunks of `search.max_requests` when set; the
        results are those of the real requests only, concatenated)."""
        size = self.cfg.search.max_requests
        if size <= 0 or len(requests) <= size:
            return self._search(params, requests)
        parts = [
            self._search(params, requests[i : i + size]) for i in range(0, len(requests), size)
        ]
        infos = [info for _, chunk in parts for info in chunk]
        counts = [len(chunk) for _, chunk in parts]

        def cat(*xs, axis=0):  # the real requests' rows of each chunk, in order
            rows = [sharding.to_host(x) for x in xs]
            rows = [x[:c] if axis == 0 else x[:, :c] for x, c in zip(rows, counts)]
            return np.concatenate(rows, axis=axis)

        results = [res for res, _ in parts]
        res = SearchResult(
            targets=cat(*(r.targets for r in results)),
            target_init=cat(*(r.target_init for r in results)),
            delta=cat(*(r.delta for r in results)),
            stop_steps=cat(*(r.stop_steps for r in results)),
            target_prob=cat(*(r.target_prob for r in results)),
            loss=cat(*(r.loss for r in results)),
            history={k: cat(*(r.history[k] for r in results), axis=1) for k in results[0].history},
            teacher_time=sum(r.teacher_time for r in results),
        )
        return res, infos

    def _search(self, params, requests: Sequence[EditRequest]) -> tuple[SearchResult, list[dict]]:
        model, cfg = self.model, self.cfg
        inputs = (model.tokenizer, requests, self.templates, cfg.search, cfg.z_layer)
        return search_requests(
            self._graphdef,
            params,
            *inputs,
            pad_requests_to=self._padded_size(len(requests)),
            max_length=model.config.max_position_embeddings,
            mesh=self.mesh,
        )

    def _padded_size(self, n: int) -> int:
        return padded_search_size(n, sharding.data_size(self.mesh))

    def _solve(self, layer, keys, resid, prev):
        s, m = self.cfg.solve, self.cfg.method
        method = "cholesky" if s.solver == "cholesky" else "lu"
        if s.float64:
            keys, resid = keys.astype(jnp.float64), resid.astype(jnp.float64)
        if m == "AlphaEdit":
            proj = self.stats.null_proj[layer].astype(keys.dtype)
            return solve.alphaedit_update(
                keys, resid, proj, prev + solve.key_gram(keys), l2=float(s.l2)
            )
        cov = self.stats.cov[layer].astype(keys.dtype)
        # Python floats: the solvers trace them, so another λ does not recompile.
        options = dict(
            cov_weight=float(s.cov_weight), norm_lambda=float(s.norm_lambda), method=method
        )
        if m == "EMMET":
            return solve.emmet_update(
                keys, resid, cov, emmet_lambda=float(s.emmet_lambda), **options
            )
        return solve.memit_update(keys, resid, cov, prev_kkt=prev, **options)

    def apply(
        self, state: EditState, requests: Sequence[EditRequest], targets: np.ndarray | None = None
    ) -> tuple[EditState, BatchReport]:
        """Applies one batch. Raises (RequestError, EditError, ValueError) with `state` untouched.

        Args:
          state: the state before the batch (not modified).
          requests: the batch.
          targets: optional precomputed target activations z `[n, d]` (skips the search; for
            replaying a run or checking the update against reference targets).
        """
        if not requests:
            raise ValueError("empty batch")
        validate_requests(requests, self.model.tokenizer, self.model.config.max_position_embeddings)
        cfg, mcfg = self.cfg, self.model.config
        n = len(requests)
        t0 = time.perf_counter()
        if targets is not None:
            targets = np.asarray(targets, np.float32)
            if targets.shape != (n, mcfg.hidden_size):
                raise ValueError(f"targets shape {targets.shape} != ({n}, {mcfg.hidden_size})")
            nan = np.full((n,), np.nan, np.float32)
            res = SearchResult(targets, targets * np.nan, targets * np.nan, nan, nan, nan, {})
            infos: list[dict] = [{}] * n
        else:
            res, infos = self.search(state.params, requests)
            targets = sharding.to_host(res.targets)[:n]
        search_time = time.perf_counter() - t0
        if not np.isfinite(targets).all():
            raise EditError(
                f"non-finite target in the search (case_ids {[q.case_id for q in requests]})"
            )

        t0 = time.perf_counter()
        kb = build_key_batch(self.model.tokenizer, requests, self.templates)
        if self.mesh is not None:  # rows over `data`: pad with copies, dropped from the outputs
            kb = sharding.place_rows(self.mesh, pad_key_rows(kb, sharding.data_size(self.mesh)))
        z = jnp.asarray(targets.T)  # [d, n]
        params = state.params
        start = self._kernels(params)
        deltas, kkts, keys_out, new_kkt = {}, {}, {}, dict(state.prev_kkt)
        reg, extra = cfg.regularize, dict[str, Any]()
        for i, layer in enumerate(cfg.layers):
            keys, current = keys_and_current(self._graphdef, params, kb, layer, cfg.z_layer)
            keys, current = keys[:, :n], current[:, :n]
            resid = (z - current) / (len(cfg.layers) - i)
            prev = state.prev_kkt[layer] if self.uses_prev_cache else None
            dw = self._solve(layer, keys, resid, prev)
            # Later layers' keys and residuals see the full update, also under RECT (the
            # repository's spreading runs before its mask); the mask is against the current W.
            new_kernel = sharding.reshard(_add_rounded(start[layer], dw), start[layer])
            params = _with_kernels(params, mcfg, {layer: new_kernel})
            if reg.rect:
                dw, extra.setdefault("rect", {})[str(layer)] = regularize.rect_update(
                    start[layer], dw, reg.rect_keep_percent
                )
            deltas[layer] = sharding.reshard(dw.astype(jnp.float32), start[layer])
            keys_out[layer] = keys
            if self.uses_prev_cache:
                kkt = solve.key_gram(keys.astype(state.prev_kkt[layer].dtype))
                kkts[layer] = kkt
                prev = state.prev_kkt[layer]
                new_kkt[layer] = sharding.reshard(prev + kkt, prev)
        finite = all(bool(jnp.isfinite(d).all()) for d in deltas.values())
        if not finite:
            raise EditError(f"non-finite weight update (case_ids {[q.case_id for q in requests]})")
        if reg.rect:  # the model keeps the masked updates
            masked = {l: _add_placed(start[l], d) for l, d in deltas.items()}
            params = _with_kernels(params, mcfg, masked)
        pruned, onto = {}, ""
        if reg.prune and reg.prune_when == "every_batch":
            current = self._kernels(params)
            pruned, onto, new, extra["prune"] = self._pruned(start, current, deltas)
            params = _with_kernels(params, mcfg, new)
        update_time = time.perf_counter() - t0

        entry = JournalEntry(tuple(q.case_id for q in requests), deltas, kkts, pruned, onto)
        journal, base_kernels, base_kkt = (
            (*state.journal, entry),
            state.base_kernels,
            state.base_kkt,
        )
        while len(journal) > self.max_journal:  # fold the oldest entry into the base
            base_kernels, base_kkt = self._replay(base_kernels, base_kkt, journal[:1])
            journal = journal[1:]
        new_state = EditState(
            params=params,
            prev_kkt=new_kkt,
            num_edits=state.num_edits + n,
            journal=journal,
            base_kernels=base_kernels,
            base_kkt=base_kkt,
        )
        report = BatchReport(
            case_ids=[q.case_id for q in requests],
            targets=targets,
            target_init=sharding.to_host(res.target_init)[:n],
            stop_steps=sharding.to_host(res.stop_steps)[:n],
            target_prob=sharding.to_host(res.target_prob)[:n],
            history={k: sharding.to_host(v)[:, :n] for k, v in res.history.items()},
            keys={l: sharding.to_host(k) for l, k in keys_out.items()},
            deltas={l: sharding.to_host(d) for l, d in deltas.items()},
            delta_norm={l: float(jnp.linalg.norm(d)) for l, d in deltas.items()},
            weight_norm={
                l: float(jnp.linalg.norm(k.astype(jnp.float32)))
                for l, k in self._kernels(params).items()
            },
            search_time=search_time,
            update_time=update_time,
            teacher_time=float(res.teacher_time),
            prompts=infos[:n],
            regularizer=extra,
        )
        return new_state, report

    def _kernels(self, params) -> dict[int, Array]:
        return {l: _kernel(params, rewrite_path(self.model.config, l)) for l in self.cfg.layers}

    def _pruned(self, previous, current, deltas):
        """`regularize.prune_kernels` of the edited kernels; EditError on a non-finite Δ'."""
        out = regularize.prune_kernels(
            self.cfg.regularize, previous, current, deltas, self._original, add=_add_placed
        )
        if not all(bool(jnp.isfinite(d).all()) for d in out[0].values()):
            raise EditError("non-finite PRUNE update (the SVD did not converge)")
        return out

    @property
    def prunes_at_end(self) -> bool:
        """PRUNE is on and runs once, after the last batch (the caller calls `prune`)."""
        return self.cfg.regularize.prune and self.cfg.regularize.prune_when == "end"

    def prune(self, state: EditState) -> tuple[EditState, dict]:
        """PRUNE applied to `state` (`prune_when="end"`: once, after the last batch) and a JSON
        record of it. It is kept with the last journal entry: `rollback(state, 1)` undoes that
        batch and PRUNE together, bit for bit, and a second call is refused. The official
        reference needs that entry (its Δ, the weights before it); the original one runs on any
        state (without a journal the pruned kernels become the rollback base)."""
        reg, last = self.cfg.regularize, (state.journal[-1] if state.journal else None)
        if not reg.prune or (last is not None and last.prune):
            raise ValueError("PRUNE is off in this config, or already ran on the last batch")
        if last is None and reg.prune_reference == "official_last_batch":
            raise ValueError(
                "official PRUNE needs the last batch in the journal (max_journal >= 1)"
            )
        current = previous = self._kernels(state.params)
        if last is not None:
            previous = self._replay(state.base_kernels, state.base_kkt, state.journal[:-1])[0]
        pruned, onto, new, info = self._pruned(previous, current, last.deltas if last else {})
        params = _with_kernels(state.params, self.model.config, new)
        if last is None:
            return dataclasses.replace(state, params=params, base_kernels=new), info
        entry = dataclasses.replace(last, prune=pruned, prune_onto=onto)
        return dataclasses.replace(state, params=params, journal=(*state.journal[:-1], entry)), info

    def _replay(self, kernels, kkt, entries):
        kernels, kkt = dict(kernels), dict(kkt)
        for e in entries:
            for layer, dw in e.deltas.items():
                before = kernels[layer]
                kernels[layer] = _add_placed(before, dw)
                if layer in e.prune:  # PRUNE's Δ', added to the kernel it was added to
                    onto = {"current": kernels[layer], "previous": before}.get(
                        e.prune_onto, self._original[layer]
                    )
                    kernels[layer] = _add_placed(onto, e.prune[layer])
            for layer, inc in e.kkt.items():
                kkt[layer] = sharding.reshard(kkt[layer] + inc, kkt[layer])
        return kernels, kkt

    def rollback(self, state: EditState, k: int = 1) -> EditState:
        """Undoes the last k batches exactly (bit-identical kernels and caches)."""
        if not 0 <= k <= len(state.journal):
            raise ValueError(f"rollback k={k}: the journal holds {len(state.journal)} batches")
        keep = state.journal[: len(state.journal) - k]
        kernels, kkt = self._replay(state.base_kernels, state.base_kkt, keep)
        removed = sum(len(e.case_ids) for e in state.journal[len(keep) :])
        params = _with_kernels(state.params, self.model.config, kernels)
        return dataclasses.replace(
            state,
            params=params,
            prev_kkt=kkt if state.prev_kkt else {},
            num_edits=state.num_edits - removed,
            journal=keep,
        )

    def state_arrays(self, state: EditState, *, host: bool = True) -> dict[str, Any]:
        """What a run checkpoint needs to continue exactly: the rewrite kernels, the previous-edit
        caches and the edit count (the rollback journal is not kept). `host=False` leaves the
        kernels and caches as the (possibly sharded) `jax.Array`s they are, for a checkpointer
        that writes each shard where it lives; the edit count is a numpy int64 either way."""

        def out(x):
            return sharding.to_host(x) if host else x

        arrays: dict[str, Any] = {"num_edits": np.asarray(state.num_edits, np.int64)}
        for layer in self.cfg.layers:
            arrays[f"kernel_L{layer}"] = out(
                _kernel(state.params, rewrite_path(self.model.config, layer))
            )
            if state.prev_kkt:
                arrays[f"prev_kkt_L{layer}"] = out(state.prev_kkt[layer])
        return arrays

    def restore_state(self, arrays) -> EditState:
        """The `EditState` saved by `state_arrays` (bit-identical kernels and caches, empty
        journal)."""
        base = self.init_state()
        kernels, kkt = {}, {}
        names = [f"kernel_L{l}" for l in self.cfg.layers] + ["num_edits"]
        names += [f"prev_kkt_L{l}" for l in self.cfg.layers] if self.uses_prev_cache else []
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(
                f"checkpoint has no {', '.join(missing)}: it belongs to another configuration "
                "(fix: delete it, or start a new run)"
            )
        for layer in self.cfg.layers:
            want = base.base_kernels[layer]
            got = arrays[f"kernel_L{layer}"]  # numpy, or a jax.Array kept where it is
            if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != want.dtype:
                raise InputError(
                    f"checkpoint kernel of layer {layer} is {got.shape} {got.dtype}, the model's "
                    f"is {want.shape} {want.dtype}: the checkpoint belongs to another model "
                    "(fix: delete it, or start a new run)"
                )
            kernels[layer] = self._like(got, want)
            if self.uses_prev_cache:
                kkt[layer] = self._like(arrays[f"prev_kkt_L{layer}"], base.base_kkt[layer])
        params = _with_kernels(self.model.params, self.model.config, kernels)
        return EditState(
            params=params,
            prev_kkt=kkt,
            num_edits=int(arrays["num_edits"]),
            journal=(),
            base_kernels=kernels,
            base_kkt=kkt,
        )

    def _like(self, x, ref: Array) -> Array:
        """`x` (numpy or a jax.Array) as a device array placed like `ref`."""
        if self.mesh is None:
            return jnp.asarray(x)
        return sharding.place(x, ref.sharding)

    def edited_model(self, state: EditState) -> LanguageModel:
        return self.model.replace(params=state.params)
