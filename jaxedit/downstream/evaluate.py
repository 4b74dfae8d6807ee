"""Downstream evaluation over the model (reference §7): the prediction passes (a shared-context
KV-cache path and the plain one), `predict`, and the entry points `evaluate_task` /
`evaluate_downstream`.

    from jaxedit import downstream
    res = downstream.evaluate_downstream(model, "sst2,mrpc", "../shared/data/downstream")

Two predictions per test:

* Generation: `gen_len` (default 3; AlphaEdit used 5) greedy tokens after the prompt, parsed into a
  class index or -1 (invalid). `f1` is the weighted F1 of these (invalid counts as an error), `mcc`
  their Matthews correlation; `correct` / `incorrect` / `invalid` count them.
* Likelihood: each answer word is scored as f"{prompt} {word}" by the mean NLL of the word's tokens
  (`metrics.answer_nll`), the most likely word wins (binary tasks: ties go to class 0; MMLU and
  Dialogue: -1 unless one option is strictly the most likely). `f1_new` and `correct_new` use these.

Speed. Generation and the likelihood of single-token answer words come from one jitted pass per
batch: the few-shot context that all prompts of a task share is run once and its attention
keys/values are reused (the model's window mode), so each test only computes its own question
tokens, then decodes the remaining gen_len - 1 tokens over that KV cache (`jaxedit.lm.decode_loop`,
the loop of `LanguageModel.generate`). The first decoding step's logits give the likelihood of every
answer word that is exactly one token after the prompt (true for SmolLM2 and GPT-2 on all tasks);
other words go through `metrics.answer_nll`. `fast=False` uses `LanguageModel.generate` and
`metrics.answer_nll` for everything (the plain path, used to check the fast one). Batches are sorted
by question length; the prefill compiles once per (rows, buffer length, window bucket of 16) and the
decoding loop once per (rows, buffer length), and the parameters are arguments, so later evaluations
of an edited model reuse every compiled shape. SmolLM2-135M, 8 tasks x 100 tests, 4 shots, on a busy
2-core CPU: about 7.5 min for the first evaluation in a process (roughly half of it compilation),
about 4 min for each later one; peak memory about 3 GB above the model (freed heap pages are handed
back to the OS after each batch).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit import metrics
from jaxedit.downstream.data import load_full_mmlu, load_items, split_items
from jaxedit.downstream.prompts import Prompt, build_prompts, token_ids
from jaxedit.downstream.scoring import score_predictions
from jaxedit.downstream.tasks import DEFAULT_GEN_LEN, TASKS, Task, check_quirks, resolve_tasks
from jaxedit.errors import InputError
from jaxedit.lm import decode_loop
from jaxedit.models import Probe
from jaxedit.models.layers import merge_cache
from jaxedit.progress import Progress
from jaxedit.shapes import bucket

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnums=0)
def _context_kv(graphdef, params, ids):
    """Attention keys/values of every layer for `ids` `[n, c]` (no logits)."""
    model = nnx.merge(graphdef, params)
    n = model.num_layers
    return model(ids, None, Probe(kv_layers=tuple(range(n)), stop_layer=n - 1)).kv


@functools.partial(jax.jit, static_argnums=(0, 7))
def _prefill(graphdef, params, ids, lengths, start, ctx_kv, cand, window):
    """One window pass over each prompt's own tokens on top of a cached context.

    Args:
      ids: `[b, t]` prompt tokens, right-padded; positions < start[b] hold the context's tokens.
      lengths: `[b]` prompt lengths; start: `[b]` first position computed (start + window <= t).
      ctx_kv: {layer: (k, v)} of the context, `[1, c, ...]` (shared) or `[b, c, ...]`.
      cand: `[b, n]` token ids whose log-probabilities after the prompt are returned.
      window: static number of positions computed from `start`.
    Returns:
      `[b, n]` log-probabilities of `cand`, the `[b, v]` logits after each prompt, and the
      full-length K/V cache {layer: (k, v)} `[b, t, ...]` of the prompts (what `lm.decode_loop`
      continues from).
    """
    model = nnx.merge(graphdef, params)
    b, t = ids.shape
    layers = tuple(range(model.num_layers))
    cache = {}
    for i in layers:
        pair = []
        for x in ctx_kv[i]:
            c = min(x.shape[1], t)
            full = jnp.zeros((b, t, *x.shape[2:]), x.dtype)
            pair.append(full.at[:, :c].set(jnp.broadcast_to(x[:, :c], (b, c, *x.shape[2:]))))
        cache[i] = tuple(pair)
    mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    qpos = start[:, None] + jnp.arange(window, dtype=jnp.int32)[None, :]
    out = model(
        ids,
        mask,
        Probe(
            window_start=start,
            window_size=window,
            kv_cache=cache,
            kv_layers=layers,
            logits_index=(lengths - 1 - start)[:, None],
        ),
    )
    cache = {i: tuple(merge_cache(c, n, qpos) for c, n in zip(cache[i], out.kv[i])) for i in layers}
    logits = out.logits[:, 0]
    cand_logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), cand, axis=-1)
    return cand_logp, logits, cache


def _release_host_memory() -> None:
    """Hands freed heap pages back to the OS. glibc keeps them otherwise, and the K/V caches of long
    prompts (hundreds of MB per batch) then leave the process several GB larger after each task.
    A no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _prompt_ids(p: Prompt) -> list[int]:
    """The token ids of a prompt (`predict` tokenizes the prompts built without them)."""
    if p.ids is None:
        raise ValueError("a prompt without token ids: tokenize it first (see `predict`)")
    return p.ids


def _decode_new(model, toks: Sequence[int]) -> str:
    toks = list(toks)
    if model.eos_id in toks:
        toks = toks[: toks.index(model.eos_id)]
    return model.tokenizer.decode([t for t in toks if t >= 0], skip_special_tokens=True)


def _fast_pass(
    model,
    prompts: Sequence[Prompt],
    cand: np.ndarray,
    gen_len: int,
    batch_size: int,
    max_context: int,
    min_share: int = 2,
    bar: Progress | None = None,
):
    """Continuations and candidate log-probs for all prompts, sharing each few-shot context's K/V.

    Prompts whose context is shared by fewer than `min_share` prompts run without a cached context
    (their window covers the whole prompt). `bar` counts the prompts done."""
    tok = model.tokenizer
    n = len(prompts)
    prompt_ids = [_prompt_ids(p) for p in prompts]
    groups: dict[str, list[int]] = {}
    for j, p in enumerate(prompts):
        groups.setdefault(p.context if p.context else "", []).append(j)
    solo = [j for ctx, js in groups.items() if len(js) < min_share or not ctx for j in js]
    shared = {ctx: js for ctx, js in groups.items() if len(js) >= min_share and ctx}
    plan = list(shared.items()) + ([("", solo)] if solo else [])
    cand_logp = np.zeros(cand.shape, np.float64)
    continuations = [""] * n
    eos, key = jnp.int32(model.eos_id), jax.random.key(0)  # greedy: the key is not used
    for ctx, js in plan:
        if ctx:
            ctx_ids = token_ids(tok, [ctx])[0]
        else:
            ctx_ids = [model.pad_id]  # a dummy context: every row starts at 0
        c_pad = min(bucket(len(ctx_ids), 64), max_context)
        ctx_ids = ctx_ids[:c_pad]
        buf = np.full((1, c_pad), model.pad_id, np.int32)
        buf[0, : len(ctx_ids)] = ctx_ids
        kv = _context_kv(model.graphdef, model.params, jnp.asarray(buf))
        shared_len = [_common_prefix(prompt_ids[j], ctx_ids) if ctx else 0 for j in js]
        lens = [len(prompt_ids[j]) for j in js]
        # the token buffer: prompt + gen_len - 1 fed-back tokens, within the context where possible
        t = min(bucket(max(lens) + gen_len - 1, 64), max(max_context, max(lens)))
        order = np.argsort([lens[k] - shared_len[k] for k in range(len(js))], kind="stable")
        n_batches = -(-len(js) // batch_size)
        rows = -(-len(js) // n_batches)
        for s0 in range(0, len(js), rows):
            sel = [int(k) for k in order[s0 : s0 + rows]]
            sel_pad = sel + [sel[-1]] * (rows - len(sel))
            window = min(bucket(max(lens[k] - shared_len[k] for k in sel)), t)
            ids = np.full((rows, t), model.pad_id, np.int32)
            for r, k in enumerate(sel_pad):
                ids[r, : lens[k]] = prompt_ids[js[k]]
            length = np.array([lens[k] for k in sel_pad], np.int32)
            start = np.array(
                [min(shared_len[k], lens[k] - 1, t - window) for k in sel_pad], np.int32
            )
            cidx = np.array([cand[js[k]] for k in sel_pad], np.int32)
            ids_d, length_d = jnp.asarray(ids), jnp.asarray(length)
            lp, logits, cache = _prefill(
                model.graphdef,
                model.params,
                ids_d,
                length_d,
                jnp.asarray(start),
                kv,
                jnp.asarray(cidx),
                window,
            )
            _, toks = decode_loop(
                model.graphdef, model.params, ids_d, length_d, cache, logits, eos, gen_len, key, 0
            )
            del cache
            lp, toks = np.asarray(lp), np.asarray(toks)
            _release_host_memory()
            for r, k in enumerate(sel):
                cand_logp[js[k]] = lp[r]
                continuations[js[k]] = _decode_new(model, toks[r])
            if bar is not None:
                bar.update(len(sel))
    return continuations, cand_logp


def _single_token_candidates(model, prompts: Sequence[Prompt], words: Sequence[str]):
    """`[n, w]` token ids of each word when f"{prompt} {word}" adds exactly that one token after the
    prompt's own tokens, and a mask of the prompts where this holds for every word."""
    cand = np.zeros((len(prompts), len(words)), np.int32)
    ok = np.ones(len(prompts), bool)
    texts = [f"{p.text} {w}" for p in prompts for w in words]
    full = token_ids(model.tokenizer, texts)
    for j, p in enumerate(prompts):
        for k in range(len(words)):
            f = full[j * len(words) + k]
            p_ids = _prompt_ids(p)
            if len(f) == len(p_ids) + 1 and f[: len(p_ids)] == p_ids:
                cand[j, k] = f[-1]
            else:
                ok[j] = False
    return cand, ok


def predict(
    model,
    task: Task,
    prompts: Sequence[Prompt],
    *,
    quirks: str = "clean",
    gen_len: int = DEFAULT_GEN_LEN,
    batch_size: int = 16,
    max_context: int | None = None,
    fast: bool = True,
    progress: bool = True,
) -> dict:
    """Generation and likelihood predictions for built prompts.

    `progress` reports the prompts done, rate and time left (`jaxedit.progress`).

    Returns {"preds", "preds_new", "continuations", "nll" `[n, words]`}.
    """
    if model.tokenizer is None:
        raise ValueError("downstream evaluation needs a model with a tokenizer")
    if gen_len < 1:
        raise ValueError(f"gen_len={gen_len}: must be >= 1")
    max_context = max_context or model.config.max_position_embeddings
    if model.config.family == "gpt2" and max_context > model.config.max_position_embeddings:
        raise ValueError(
            f"max_context={max_context} exceeds the learned position table "
            f"({model.config.max_position_embeddings})"
        )
    missing = [p for p in prompts if p.ids is None]
    for p, i in zip(missing, token_ids(model.tokenizer, [p.text for p in missing])):
        p.ids = i
    prompt_lens = [len(_prompt_ids(p)) for p in prompts]
    too_long = [n for n in prompt_lens if n > max_context]
    if too_long:
        raise InputError(
            f"task {task.name}: a prompt of {max(too_long)} tokens exceeds the "
            f"context ({max_context} tokens) even without few-shots (fix: shorten the task's "
            "items, or drop the task for this model)"
        )
    words = task.words
    nll = np.full((len(prompts), len(words)), np.nan)
    bar = Progress(len(prompts), f"downstream {task.name}", "prompts", enabled=progress)
    if fast:
        cand, ok = _single_token_candidates(model, prompts, words)
        continuations, cand_logp = _fast_pass(
            model, prompts, cand, gen_len, batch_size, max_context, bar=bar
        )
        nll[ok] = -cand_logp[ok]
        rest = np.flatnonzero(~ok)
    else:
        continuations = [""] * len(prompts)
        order = np.argsort(prompt_lens, kind="stable")
        for s0 in range(0, len(prompts), batch_size):
            sel = order[s0 : s0 + batch_size]
            outs = model.generate([prompts[int(j)].text for j in sel], gen_len)
            for j, o in zip(sel, outs):
                continuations[j] = o
            bar.update(len(sel))
        rest = np.arange(len(prompts))
    bar.close()
    if len(rest):
        pairs = [(prompts[int(j)].text, w) for j in rest for w in words]
        scores = metrics.answer_nll(
            model, pairs, batch_size=max(8, batch_size * len(words)), progress=progress
        )
        nll[rest] = np.asarray(scores).reshape(len(rest), len(words))
    preds = [task.parse(c, quirks, p.text) for c, p in zip(continuations, prompts)]
    preds_new = [task.likelihood_choice(row) for row in nll]
    return {"preds": preds, "preds_new": preds_new, "continuations": continuations, "nll": nll}


# --------------------------------------------------------------------------------------------------
# entry point


# --------------------------------------------------------------------------------------------------
# entry points


def evaluate_task(
    model,
    task: str,
    data_dir: str | os.PathLike,
    *,
    num_tests: int | None = 100,
    num_few_shots: int = 4,
    gen_len: int = DEFAULT_GEN_LEN,
    quirks: str = "clean",
    mmlu_source: str | os.PathLike = "fewshot",
    batch_size: int = 16,
    max_context: int | None = None,
    fast: bool = True,
    details: bool = False,
    progress: bool = True,
    at_most_tests: bool = False,
) -> dict:
    """Few-shot downstream scores of `model` on one task.

    Args:
      model: a `LanguageModel` with a tokenizer.
      task: a name (unique substrings accepted, see `resolve_tasks`).
      data_dir: folder with `{task}.json` (not read for full MMLU).
      num_tests: tests per task (items 10..10+num_tests); None = all. Full MMLU: total questions.
      num_few_shots: k, the first k items of the few-shot pool (<= 10).
      gen_len: greedy tokens generated for the generation prediction.
      quirks: "clean" or "reference" (the `tasks` module docstring).
      mmlu_source: "fewshot" (mmlu.json in data_dir) or a folder with the full MMLU dev/ and test/
        CSVs.
      batch_size: prompts per model call.
      max_context: the context used for few-shot dropping (default max_position_embeddings).
      fast: the shared-context KV-cache path (False: `generate` + `answer_nll`, slower, same results
        up to float rounding).
      details: also return per-test records (labels, predictions, continuations, NLLs).
      progress: report the prompts done, rate and time left (`jaxedit.progress`).
      at_most_tests: `num_tests` is an upper bound: a task with fewer test items uses them all.
    Returns:
      {"f1", "f1_new", "mcc", "correct", "correct_new", "incorrect", "invalid", "total",
      "num_few_shots", "gen_len", "quirks", "few_shots_dropped", "time_s"[, "mmlu_source",
      "records"]}.
    """
    check_quirks(quirks)
    name = resolve_tasks([task])[0]
    spec = TASKS[name]
    t0 = time.perf_counter()
    max_context = max_context or model.config.max_position_embeddings
    full_mmlu = name == "mmlu" and str(mmlu_source) != "fewshot"
    if full_mmlu:
        shots, tests = load_full_mmlu(mmlu_source, num_few_shots, num_tests, at_most_tests)
    else:
        shots, tests = split_items(
            load_items(name, data_dir), num_few_shots, num_tests, at_most_tests
        )
    prompts = build_prompts(
        spec,
        shots,
        tests,
        quirks=quirks,
        tokenizer=model.tokenizer,
        max_context=max_context,
        gen_len=gen_len,
    )
    out = predict(
        model,
        spec,
        prompts,
        quirks=quirks,
        gen_len=gen_len,
        batch_size=batch_size,
        max_context=max_context,
        fast=fast,
        progress=progress,
    )
    _release_host_memory()
    labels = [p.label for p in prompts]
    res = score_predictions(labels, out["preds"], out["preds_new"])
    res.update(
        num_few_shots=num_few_shots,
        gen_len=gen_len,
        quirks=quirks,
        few_shots_dropped=int(sum(p.num_shots < num_few_shots for p in prompts)),
        time_s=time.perf_counter() - t0,
    )
    if name == "mmlu":
        res["mmlu_source"] = str(mmlu_source)
    if details:
        res["records"] = [
            {
                "label": y,
                "pred": a,
                "pred_new": b,
                "continuation": c,
                "nll": [float(x) for x in row],
                "num_shots": p.num_shots,
            }
            for y, a, b, c, row, p in zip(
                labels, out["preds"], out["preds_new"], out["continuations"], out["nll"], prompts
            )
        ]
    log.info(
        "downstream %s: f1 %.3f f1_new %.3f mcc %.3f correct %d/%d invalid %d (%.1f s)",
        name,
        res["f1"],
        res["f1_new"],
        res["mcc"],
        res["correct"],
        res["total"],
        res["invalid"],
        res["time_s"],
    )
    return res


def evaluate_downstream(
    model, tasks: str | Sequence[str], data_dir: str | os.PathLike, **options
) -> dict[str, dict]:
    """Few-shot downstream scores of `model`: {task: `evaluate_task` result}.

    Args:
      model: a `LanguageModel` with a tokenizer.
      tasks: names (list or comma-separated; unique substrings accepted, see `resolve_tasks`);
        `DEFAULT_TASKS` is the reference's selection.
      data_dir: folder with `{task}.json`.
      **options: the keyword arguments of `evaluate_task` (num_tests, num_few_shots, gen_len,
        quirks, mmlu_source, batch_size, max_context, fast, details, progress).
    """
    return {name: evaluate_task(model, name, data_dir, **options) for name in resolve_tasks(tasks)}
