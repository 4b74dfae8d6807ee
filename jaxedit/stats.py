"""Key statistics: the uncentred second moment C0 = E[k kᵀ] of the rewrite-module inputs (reference
§4.1).

k is the input of the MLP output projection (`down_proj` / `c_proj`) at every real token of every
document; C0 = Σ k kᵀ / #tokens, with no mean subtraction (MEMIT's `SecondMoment`). All edited
layers are measured in one pass over the corpus on the **unedited** model (the reference measures
them lazily inside the first batch, after earlier layers were already edited: quirk Q12).

Documents are tokenized one by one as the reference does (`encode(text, truncation=True,
max_length=...)`), packed into padded batches of similar length, and accumulated by a jitted step in
float32 at highest matmul precision. Results are cached as MEMIT-style `.npz` files (`mom2.mom2`,
`mom2.count`) under a key made of the model fingerprint (config + a strided checksum of the
parameters C0 depends on), the layer, the corpus (path, size, mtime) and the sample count. MEMIT's
published statistics import with `load_memit_npz`. AlphaEdit's null-space projector is cached beside
C0.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.typing import ArrayLike

from jaxedit import convert, sharding
from jaxedit.errors import InputError
from jaxedit.files import read_npz
from jaxedit.lm import LanguageModel
from jaxedit.models import Probe
from jaxedit.progress import LOG_EVERY_S, Progress
from jaxedit.shapes import bucket_pow2

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerStats:
    """Per-layer second moments C0 `[f, f]` and, for AlphaEdit, null-space projectors."""

    cov: dict[int, jax.Array]
    null_proj: dict[int, jax.Array] = dataclasses.field(default_factory=dict)


def model_fingerprint(model: LanguageModel, max_layer: int) -> str:
    """A short hash of the config and of every parameter that C0 at layers <= max_layer depends on.

    A strided sample of each tensor (plus its shape and dtype) keeps this cheap on 8B models while
    any real change of weights (another checkpoint, an edit) changes it.
    """
    h = hashlib.sha256(model.config.hf_json.encode() or repr(model.config).encode())
    if model.config.matmul_precision != "highest":  # C0 of the same weights at another precision
        h.update(model.config.matmul_precision.encode())
    for path, value in sorted(
        convert.state_arrays(model.params).items(), key=lambda kv: str(kv[0])
    ):
        layer = next((p for p in path if isinstance(p, int)), None)
        if layer is not None and layer > max_layer:
            continue
        size = int(np.prod(value.shape))
        stride = max(1, size // 65536)
        # The strided sample is taken where the array lives (only it is gathered across hosts).
        sample = sharding.to_host(jnp.ravel(value)[::stride]) if stride > 1 else None
        sample = sharding.to_host(value).reshape(-1) if sample is None else sample
        h.update(str(path).encode() + str((size,)).encode() + str(value.dtype).encode())
        h.update(np.ascontiguousarray(sample).tobytes())
    return h.hexdigest()[:16]


def corpus_key(text_path: str | os.PathLike, num_samples: int, max_length: int) -> str:
    p = Path(text_path)
    stat = p.stat()
    ident = f"{p.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{num_samples}|{max_length}"
    return f"{p.stem}_{num_samples}_{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _accumulate(graphdef, params, sums, ids, mask, layers: tuple[int, ...]):
    model = nnx.merge(graphdef, params)
    out = model(ids, mask, Probe(key_layers=layers, stop_layer=max(layers)))
    m = mask.astype(jnp.float32)
    new = []
    for s, layer in zip(sums, layers):
        k = out.keys[layer].astype(jnp.float32) * m[:, :, None]
        new.append(s + jnp.einsum("btf,btg->fg", k, k, precision=jax.lax.Precision.HIGHEST))
    return tuple(new)


def collect_second_moments(
    model: LanguageModel,
    token_docs: Iterable[Sequence[int]],
    layers: Sequence[int],
    *,
    batch_tokens: int = 4096,
    total: int | None = None,
    log_every: float = LOG_EVERY_S,
    progress: bool = True,
) -> tuple[dict[int, np.ndarray], int]:
    """C0 per layer from tokenized documents (each a list of ids), and the token count.

    Documents are grouped into batches of at most `batch_tokens` padded tokens (lengths bucketed to
    multiples of 64 so a corpus compiles a handful of shapes). With `progress`, documents done
    (of `total`), rate and time left are reported (`jaxedit.progress`: a bar on a terminal, else a
    log line every `log_every` s).
    """
    layers = tuple(sorted(layers))
    f = model.config.intermediate_size
    mesh = model.mesh  # with a mesh: batch rows over `data`, the sums' rows over every device
    sums = tuple(sharding.place_square(mesh, jnp.zeros((f, f), jnp.float32)) for _ in layers)
    count, docs_done, t_start = 0, 0, time.perf_counter()
    bar = Progress(  # its summary is the "key statistics: ... tokens in ... s" line below
        total,
        "key statistics",
        "documents",
        enabled=progress,
        log_every=log_every,
        final_line=False,
    )

    def length_bucket(
        n: int,
    ) -> int:  # powers of two from 64: a corpus compiles a handful of shapes
        return bucket_pow2(n, 64)

    pending: dict[int, list] = {}  # length bucket -> documents waiting for a full batch

    def flush(t: int, docs: list, sums):
        rows = max(1, batch_tokens // t)  # fixed rows per length bucket
        rows = -(-rows // sharding.data_size(mesh)) * sharding.data_size(mesh)  # (masked padding)
        ids = np.zeros((rows, t), np.int32)
        mask = np.zeros((rows, t), np.int32)
        for i, d in enumerate(docs):
            ids[i, : len(d)] = d
            mask[i, : len(d)] = 1
        ids, mask = sharding.place_rows(mesh, (ids, mask))
        return _accumulate(
            model.graphdef, model.params, sums, jnp.asarray(ids), jnp.asarray(mask), layers
        )

    for doc in token_docs:
        if not len(doc):
            continue
        doc_ids = np.asarray(doc, np.int32)
        t = length_bucket(len(doc_ids))
        group = pending.setdefault(t, [])
        group.append(doc_ids)
        if len(group) == max(1, batch_tokens // t):
            previous, sums = sums, flush(t, group, sums)
            jax.block_until_ready(previous)  # one batch in flight: the reported rate is real
            pending[t] = []
        count += len(doc_ids)
        docs_done += 1
        bar.update(tokens=count)
    for t, group in pending.items():
        if group:
            sums = flush(t, group, sums)
    bar.close()
    if count == 0:
        raise InputError("the statistics corpus has no tokens (fix: pass a corpus with text)")
    log.info(
        "key statistics: %d documents, %d tokens in %.1f s",
        docs_done,
        count,
        time.perf_counter() - t_start,
    )
    return {layer: sharding.to_host(s) / np.float32(count) for layer, s in zip(layers, sums)}, count


def save_npz(path: Path, cov: np.ndarray, count: int, meta: dict | None = None) -> None:
    """MEMIT's layout: `mom2.mom2` (the *mean* k kᵀ here) and `mom2.count`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays: dict[str, ArrayLike] = {
        "mom2.mom2": cov.astype(np.float32),
        "mom2.count": np.int64(count),
        "jaxedit.meta": json.dumps(meta or {}),
    }
    # allow_pickle is numpy's default, given so that mypy does not match `**arrays` against it
    np.savez(tmp, allow_pickle=True, **arrays)
    os.replace(tmp, path)


def load_memit_npz(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a MEMIT statistics file (`{layer}_float32_mom2_{N}.npz`).

    MEMIT stores the running *sum* divided lazily: `SecondMoment.state_dict()` saves `mom2` as the
    sum of k kᵀ with `count`; jaxedit's own files store the mean. Both are told apart by the
    `jaxedit.meta` entry, and the mean C0 = mom2 / count is returned either way.
    """
    data = read_npz(path, "statistics file", "delete it, or pass MEMIT's original file")
    if "mom2.mom2" not in data or "mom2.count" not in data:
        raise InputError(f"{path}: not a MEMIT statistics file (needs mom2.mom2 and mom2.count)")
    mom2, count = data["mom2.mom2"].astype(np.float32), int(data["mom2.count"])
    if "jaxedit.meta" in data:
        return mom2, count
    return mom2 / np.float32(count), count


class StatsCache:
    """C0 (and AlphaEdit projectors) on disk under `{root}/{fingerprint}/{corpus}/layer{L}.npz`.

    A cache file that cannot be read (cut short by a crash, overwritten) is a cache miss: a warning
    names it, the value is computed again and the file replaced; it is never an error, since the
    cache holds nothing that cannot be recomputed."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, corpus: str):
        self.dir = Path(root) / fingerprint / corpus

    def cov_path(self, layer: int) -> Path:
        return self.dir / f"layer{layer}_mom2.npz"

    def proj_path(self, layer: int, threshold: float) -> Path:
        return self.dir / f"layer{layer}_nullproj_{threshold:g}.npy"

    def get_cov(self, layer: int) -> np.ndarray | None:
        p = self.cov_path(layer)
        if not p.exists():
            return None
        try:
            return load_memit_npz(p)[0]
        except InputError as err:
            log.warning("ignoring a corrupt statistics cache file, recomputing it: %s", err)
            return None

    def put_cov(self, layer: int, cov: np.ndarray, count: int, meta: dict) -> None:
        save_npz(self.cov_path(layer), cov, count, meta)

    def get_proj(self, layer: int, threshold: float) -> np.ndarray | None:
        p = self.proj_path(layer, threshold)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (EOFError, OSError, ValueError) as err:  # a cut-short or overwritten .npy
            log.warning("ignoring a corrupt projector cache file %s, recomputing it: %s", p, err)
            return None

    def put_proj(self, layer: int, threshold: float, proj: np.ndarray) -> None:
        p = self.proj_path(layer, threshold)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, proj)
        os.replace(tmp, p)


def read_corpus(text: str | os.PathLike, num_samples: int) -> list[str]:
    """The first `num_samples` documents of a corpus: a `.txt` (blank-line separated), `.jsonl`
    ({"text": ...}) or folder, a raw WikiText file (`*.raw`: its paragraphs, detokenized), or
    `hf:NAME[:CONFIG[:SPLIT]]`, a Hugging Face dataset with a "text" field (needs `datasets`;
    streamed, in the dataset's order)."""
    from jaxedit import corpus

    if str(text).startswith("hf:"):
        return _hf_dataset_texts(str(text)[3:], num_samples)
    path = Path(text)
    docs: Iterable[str]
    if path.suffix == ".raw":
        docs = corpus.wikitext_paragraphs(path)
    else:
        docs = corpus.read_documents(path)
    out: list[str] = []
    for doc in docs:
        if len(out) >= num_samples:
            break
        out.append(doc)
    if not out:
        raise InputError(
            f"stats corpus {path} has no documents (fix: pass a non-empty corpus: .txt with "
            "blank-line separated documents, .jsonl with a 'text' field, a folder, or WikiText)"
        )
    return out


_MEMIT_NAME = re.compile(r".*\.(\d+)\.mlp\.[A-Za-z_]+_float32_mom2_(\d+)\.npz$")


def find_memit_stats(directory: str | os.PathLike) -> dict[int, Path]:
    """MEMIT's statistics files in a directory, by layer (names like
    `transformer.h.17.mlp.c_proj_float32_mom2_100000.npz`; the largest sample count wins)."""
    found: dict[int, tuple[int, Path]] = {}
    for path in Path(directory).glob("*.npz"):
        m = _MEMIT_NAME.match(path.name)
        if m:
            layer, n = int(m.group(1)), int(m.group(2))
            if layer not in found or n > found[layer][0]:
                found[layer] = (n, path)
    return {layer: p for layer, (_, p) in found.items()}


def _hf_dataset_texts(spec: str, num_samples: int) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "stats text 'hf:...' needs the `datasets` package: pip install datasets"
        ) from err
    name, config, split = [*spec.split(":"), None, None][:3]
    ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    out: list[str] = []
    for row in ds:
        if len(out) >= num_samples:
            break
        out.append(row["text"])
    return out


def layer_stats(
    model: LanguageModel,
    layers: Sequence[int],
    text: str | os.PathLike,
    *,
    num_samples: int,
    max_length: int = 0,
    cache_dir: str | os.PathLike | None = None,
    null_threshold: float | None = None,
    memit_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """C0 for `layers` (imported from MEMIT's published files in `memit_dir`, read from the cache,
    or computed once on this model), plus AlphaEdit projectors when `null_threshold` is given.
    `progress` reports the accumulation's progress (`collect_second_moments`). Returns an
    `editor.LayerStats`."""
    from jaxedit import corpus, solve
    from jaxedit.editor import LayerStats

    max_length = max_length or model.config.max_position_embeddings
    cache = None
    if cache_dir:
        fp = model_fingerprint(model, max(layers))
        if str(text).startswith("hf:"):
            key = f"{str(text)[3:].replace(':', '_').replace('/', '_')}_{num_samples}_{max_length}"
        else:
            key = corpus_key(text, num_samples, max_length)
        cache = StatsCache(cache_dir, fp, key)
    cov = {}
    todo = []
    imported = find_memit_stats(memit_dir) if memit_dir else {}
    for layer in layers:
        if layer in imported:
            cov[layer] = load_memit_npz(imported[layer])[0]
            log.info("key statistics for layer %d imported from %s", layer, imported[layer])
            continue
        hit = cache.get_cov(layer) if cache else None
        if cache is not None and hit is not None:
            cov[layer] = hit
        else:
            todo.append(layer)
    cached = [layer for layer in layers if layer in cov and layer not in imported]
    if cache is not None and cached:  # one line for all layers read from the cache
        log.info(
            "key statistics for layers %s from the cache %s",
            ", ".join(map(str, cached)),
            cache.dir,
        )
    if todo:
        docs = read_corpus(text, num_samples)
        toks = corpus.tokenize_documents(model.tokenizer, docs, max_length)
        new, count = collect_second_moments(model, toks, todo, total=len(docs), progress=progress)
        for layer, c in new.items():
            cov[layer] = c
            if cache and jax.process_index() == 0:  # one writer in a multi-host run
                cache.put_cov(
                    layer,
                    c,
                    count,
                    {
                        "text": str(text),
                        "num_samples": num_samples,
                        "max_length": max_length,
                        "tokens": count,
                    },
                )
    stats = LayerStats(cov={l: jnp.asarray(c) for l, c in cov.items()})
    if null_threshold is not None:
        for layer in layers:
            proj = cache.get_proj(layer, null_threshold) if cache else None
            if proj is None:
                proj, dim = solve.null_space_projector(jnp.asarray(cov[layer]), null_threshold)
                proj = np.asarray(proj)
                log.info("AlphaEdit null space of layer %d: dimension %d", layer, int(dim))
                if cache and jax.process_index() == 0:
                    cache.put_proj(layer, null_threshold, proj)
            stats.null_proj[layer] = jnp.asarray(proj)
    return stats
