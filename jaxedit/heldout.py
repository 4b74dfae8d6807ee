"""Held-out language-modelling loss and drift from the unedited model.

Held-out text is text C0 never saw (by default WikiText-2's validation paragraphs; C0 uses the
test split). Each document is tokenized with the tokenizer's own convention, cut at `max_length`
tokens, and scored teacher-forced: token t+1 from tokens 0..t, for every t, so a document of n
tokens contributes n − 1 predictions (documents with fewer than two tokens are skipped).

- **NLL / perplexity**: mean NLL per predicted token over all documents (Σ NLL / Σ predictions)
  and exp of it; the 95 % interval is a bootstrap over documents of that ratio
  (`jaxedit.uncertainty.bootstrap_ratio`; the unit is the document).
- **Drift** (`reference` once on the unedited model, then `measure(..., reference=ref)`): at every
  predicted position, KL(edited ‖ unedited) of the next-token distributions and whether the two
  models' top-1 tokens agree. The unedited side is kept compactly: its top-k token ids and
  log-probabilities plus the log of the remaining mass. The KL is computed over those k tokens
  plus one "rest" bin (the edited model's probability of the same k tokens, and its remaining
  mass): the KL of the two distributions coarsened to k + 1 outcomes, which by the data-processing
  inequality is a lower bound of the full-vocabulary KL and equals it when both models put
  negligible mass outside the k tokens (k = 32 by default; `tests/test_heldout.py` compares it
  with the full KL). Per-token means over documents with a bootstrap interval over documents.

Every pass is one jitted function per (rows, length) bucket: documents are sorted by length,
padded to powers of two (from 64) and grouped into batches of at most `batch_tokens` padded
tokens, so a corpus compiles a handful of shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit import uncertainty
from jaxedit.errors import InputError
from jaxedit.shapes import bucket_pow2

__all__ = ["Heldout", "Reference", "load", "measure", "reference", "score"]

TOP_K = 32
BATCH_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class Heldout:
    """Tokenized held-out documents (each ≥ 2 tokens) and where they came from."""

    docs: tuple[np.ndarray, ...]
    source: str
    max_length: int

    @property
    def predictions(self) -> int:
        return int(sum(len(d) - 1 for d in self.docs))


@dataclasses.dataclass(frozen=True)
class Reference:
    """The unedited model's next-token distributions, compactly: per document `[n − 1, k]` top-k
    ids and log-probabilities, and `[n − 1]` log of the remaining mass."""

    ids: tuple[np.ndarray, ...]
    logp: tuple[np.ndarray, ...]
    log_rest: tuple[np.ndarray, ...]
    k: int

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for arrs in (self.ids, self.logp, self.log_rest) for a in arrs))


def read_documents(path: str | os.PathLike, num_docs: int) -> list[str]:
    """The first `num_docs` documents of `path`: WikiText files (name containing "wikitext", raw or
    tokenized) by paragraph with headings dropped; other corpora as `stats.read_corpus` reads
    them."""
    from jaxedit import corpus, stats

    p = Path(path)
    if "wikitext" in p.name.lower():
        return corpus.wikitext_paragraphs(p)[:num_docs]
    return stats.read_corpus(p, num_docs)


def load(
    tokenizer, path: str | os.PathLike, num_docs: int = 200, max_length: int = 1024
) -> Heldout:
    """The first `num_docs` documents of `path`, tokenized and cut at `max_length` tokens."""
    texts = read_documents(path, num_docs)
    docs = []
    for text in texts:
        ids = np.asarray(tokenizer(text)["input_ids"][:max_length], np.int32)
        if len(ids) >= 2:
            docs.append(ids)
    if not docs:
        raise InputError(
            f"held-out text {path} has no document of two or more tokens (fix: pass a corpus "
            "with text)"
        )
    return Heldout(tuple(docs), str(path), max_length)


def _batches(lengths: Sequence[int], batch_tokens: int):
    """(indices, padded length) groups: documents sorted by length, padded to powers of two."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(bucket_pow2(int(lengths[i]), 64), []).append(int(i))
    for t, idx in groups.items():
        rows = max(1, batch_tokens // t)
        for s in range(0, len(idx), rows):
            yield idx[s : s + rows], t, rows


@functools.partial(jax.jit, static_argnames=("graphdef", "k"))
def _pass(graphdef, params, ids, mask, ref_ids, ref_logp, ref_rest, k: int):
    """Per row: Σ NLL and predictions; with k > 0 the top-k of the next-token log-probs; with a
    reference (ref_ids non-empty) Σ coarse KL(model ‖ reference) and Σ top-1 agreement."""
    model = nnx.merge(graphdef, params)
    logits = model(ids, mask).logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # predicts ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    out = {"nll": -jnp.sum(tok * valid, -1), "count": jnp.sum(valid, -1)}
    if k > 0:
        top_logp, top_ids = jax.lax.top_k(logp, k)
        rest = jnp.log1p(-jnp.minimum(jnp.sum(jnp.exp(top_logp), -1), 1.0 - 1e-7))
        out.update(top_ids=top_ids, top_logp=top_logp, log_rest=rest)
    if ref_ids.shape[-1] > 0:
        q = jnp.take_along_axis(logp, ref_ids, axis=-1)  # the model's log p of the ref's top-k
        q_rest = jnp.log1p(-jnp.minimum(jnp.sum(jnp.exp(q), -1), 1.0 - 1e-7))
        kl = jnp.sum(jnp.exp(q) * (q - ref_logp), -1) + jnp.exp(q_rest) * (q_rest - ref_rest)
        agree = (jnp.argmax(logp, -1) == ref_ids[..., 0]).astype(jnp.float32)
        out.update(kl=jnp.sum(kl * valid, -1), agree=jnp.sum(agree * valid, -1))
    return out


def score(
    model,
    heldout: Heldout,
    *,
    ref: Reference | None = None,
    k: int = 0,
    batch_tokens: int = BATCH_TOKENS,
) -> tuple[dict[str, np.ndarray], Reference | None]:
    """Per-document sums (`nll`, `count`, with `ref` also `kl`, `agree`), and with `k > 0` the
    model's own top-k `Reference`."""
    n = len(heldout.docs)
    sums = {key: np.zeros(n) for key in ("nll", "count", "kl", "agree")}
    top: dict[str, list] = {"ids": [None] * n, "logp": [None] * n, "log_rest": [None] * n}
    kk = ref.k if ref is not None else 0
    for idx, t, rows in _batches([len(d) for d in heldout.docs], batch_tokens):
        ids = np.zeros((rows, t), np.int32)
        mask = np.zeros((rows, t), np.int32)
        r_ids = np.zeros((rows, t - 1, kk), np.int32)
        r_logp = np.zeros((rows, t - 1, kk), np.float32)
        r_rest = np.zeros((rows, t - 1), np.float32)
        for row, i in enumerate(idx):
            d = heldout.docs[i]
            ids[row, : len(d)] = d
            mask[row, : len(d)] = 1
            if ref is not None:
                m = len(d) - 1
                r_ids[row, :m], r_logp[row, :m], r_rest[row, :m] = (
                    ref.ids[i],
                    ref.logp[i],
                    ref.log_rest[i],
                )
        out = jax.device_get(
            _pass(model.graphdef, model.params, ids, mask, r_ids, r_logp, r_rest, k)
        )
        for row, i in enumerate(idx):
            for key in ("nll", "count", *(("kl", "agree") if ref is not None else ())):
                sums[key][i] = out[key][row]
            if k > 0:
                m = len(heldout.docs[i]) - 1
                top["ids"][i] = out["top_ids"][row, :m].astype(np.int32)
                top["logp"][i] = out["top_logp"][row, :m].astype(np.float32)
                top["log_rest"][i] = out["log_rest"][row, :m].astype(np.float32)
    own = None
    if k > 0:
        own = Reference(tuple(top["ids"]), tuple(top["logp"]), tuple(top["log_rest"]), k)
    if ref is None:
        sums.pop("kl"), sums.pop("agree")
    return sums, own


def reference(model, heldout: Heldout, k: int = TOP_K, **kw) -> Reference:
    """The (unedited) model's compact next-token distributions on `heldout` (computed once)."""
    _, ref = score(model, heldout, k=k, **kw)
    assert ref is not None
    return ref


def measure(
    model,
    heldout: Heldout,
    *,
    ref: Reference | None = None,
    seed: int = 0,
    n_boot: int = uncertainty.N_BOOT,
    **kw,
) -> dict:
    """NLL per token, perplexity and (with `ref`) drift, each with a 95 % bootstrap interval over
    documents."""
    sums, _ = score(model, heldout, ref=ref, **kw)
    boot = dict(seed=seed, n_boot=n_boot)
    nll = uncertainty.bootstrap_ratio(sums["nll"], sums["count"], **boot)
    out = {
        "nll": nll["value"],
        "nll_ci": nll["ci"],
        "perplexity": float(np.exp(nll["value"])),
        "perplexity_ci": [float(np.exp(x)) for x in nll["ci"]],
        "tokens": int(sums["count"].sum()),
        "docs": len(heldout.docs),
        "unit": "document",
        "source": heldout.source,
        "max_length": heldout.max_length,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": uncertainty.LEVEL},
    }
    if ref is not None:
        kl = uncertainty.bootstrap_ratio(sums["kl"], sums["count"], **boot)
        agree = uncertainty.bootstrap_ratio(sums["agree"], sums["count"], **boot)
        out.update(
            kl=kl["value"],
            kl_ci=kl["ci"],
            top1_agreement=agree["value"],
            top1_agreement_ci=agree["ci"],
            drift_top_k=ref.k,
        )
    # The per-document sums (aligned with `heldout.docs`): what a paired comparison of two models
    # on the same documents resamples (`paired_ratio`).
    out["per_doc"] = {k: [float(x) for x in np.asarray(v)] for k, v in sums.items()}
    return out


def paired_ratio(a: dict, b: dict, key: str = "nll", *, seed: int = 0, n_boot: int = 1000) -> dict:
    """Σ key / Σ count of model a minus that of model b, from two `measure(...)["per_doc"]` on the
    same documents, with the interval over documents resampled jointly for both models
    (`significant` when it excludes 0). For key "nll" the difference is of mean NLL per token
    (log of the perplexity ratio)."""
    num_a, den_a = np.asarray(a[key], np.float64), np.asarray(a["count"], np.float64)
    num_b, den_b = np.asarray(b[key], np.float64), np.asarray(b["count"], np.float64)
    if not (len(num_a) == len(num_b) == len(den_a) == len(den_b)) or not np.array_equal(
        den_a, den_b
    ):
        raise ValueError("paired held-out scores must be of the same documents and tokens")

    def ratio(num, den):
        return float(np.sum(num) / max(float(np.sum(den)), 1e-300))

    return uncertainty.paired_difference(
        ratio, [num_a, den_a], [num_b, den_b], seed=seed, n_boot=n_boot
    )
