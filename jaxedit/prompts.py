"""Host-side tokenisation of every prompt the editor runs: one module for the search, the keys and
the requests' checks.

* where the subject ends (`subject_last_index`, docs/reference.md §2.2) and whether that index is
  reliable for a template (`subject_token_mismatch`);
* the target's token ids (`target_token_ids`: " " + target, no BOS, §2.3);
* the search's rows (`build_search_batch`: rewriting prompts = context templates × prompt + the
  target minus its last token, and the KL prompt "{subject} is a") and the key rows
  (`build_key_batch`: context templates × prompt, no target, §1.3), right-padded to bucketed shapes
  (`jaxedit.shapes`) as numpy arrays in the dataclasses the jitted code takes;
* LTI's teacher rows (`build_teacher_batch`: "Imagine that {prompt} {target}\n" before every
  rewriting prompt, the KL prompt as it is; WORKSPACE.md) and where the teacher is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxedit.config import TEACHER_POSITIONS
from jaxedit.shapes import bucket

if TYPE_CHECKING:
    from jaxedit.requests import EditRequest

Array = jax.Array
KL_PROMPT = "{} is a"  # the search's KL prompt (reference §2.3)
KL_POSITIONS = ("subject", "last")


def _pad_rows(rows: Sequence[Sequence[Sequence[int]]], t: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists `[r][c]` -> right-padded ids and mask `[r, c, t]` (int32, pad id 0)."""
    r, c = len(rows), max(len(row) for row in rows)
    ids = np.zeros((r, c, t), np.int32)
    mask = np.zeros((r, c, t), np.int32)
    for j, row in enumerate(rows):
        for i, seq in enumerate(row):
            ids[j, i, : len(seq)] = seq
            mask[j, i, : len(seq)] = 1
    return ids, mask


def with_leading_space(target: str) -> str:
    """`target` with one space in front unless it already starts with one (all reference repos)."""
    return target if target.startswith(" ") else " " + target


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
    i = template.index("{}")
    return template[:i], template[i + 2 :]


def subject_last_index(tokenizer: Any, template: str, subject: str) -> int:
    """Index of the subject's last token in the tokenized `template.format(subject)`.

    reference §2.2 (ENC/AlphaEdit `get_words_idxs_in_templates`, subtoken "last"): with `prefix` the
    template before ``{}``, the index is ``len(tokenizer.encode(prefix + subject)) - 1``, special
    tokens included as `encode` adds them (BOS for Llama-2/3, none for GPT-2 or SmolLM2). This is
    an absolute index into the full sentence's tokens as long as the tokens of prefix+subject are a
    prefix of them (`subject_token_mismatch` checks that).

    Args:
      tokenizer: a Hugging Face tokenizer.
      template: text with exactly one ``{}``.
      subject: the subject.

    Returns:
      The token index.

    Raises:
      ValueError: the template does not contain exactly one ``{}``.
    """
    prefix, _ = _split_template(template)
    return len(tokenizer.encode(prefix + subject)) - 1


def subject_token_mismatch(tokenizer: Any, template: str, subject: str) -> str | None:
    """Checks that the tokens of prefix+subject are a prefix of those of the whole sentence.

    When they are not (the subject's last word merges with the text after it, e.g. "{}s"), the
    index from `subject_last_index` may point at a token that is not the subject's last one.

    Args:
      tokenizer: a Hugging Face tokenizer.
      template: text with exactly one ``{}``.
      subject: the subject.

    Returns:
      None when they agree, else a description of the disagreement.

    Raises:
      ValueError: the template does not contain exactly one ``{}``.
    """
    prefix, suffix = _split_template(template)
    head = tokenizer.encode(prefix + subject)
    full = tokenizer.encode(prefix + subject + suffix)
    if full[: len(head)] == head:
        return None
    return (
        f"tokens of {prefix + subject!r} {head} are not a prefix of the tokens of "
        f"{prefix + subject + suffix!r} {full}; subject_last_index gives {len(head) - 1}"
    )


# --------------------------------------------------------------------------------------------------
# Batches


def target_token_ids(tokenizer, target: str) -> list[int]:
    """Token ids of " " + target, dropping a leading BOS/UNK (reference §2.3)."""
    ids = list(tokenizer(with_leading_space(target))["input_ids"])
    special = {tokenizer.bos_token_id, tokenizer.unk_token_id} - {None}
    if ids and ids[0] in special:
        ids = ids[1:]
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


def flatten_templates(templates: Sequence[Sequence[str]]) -> list[str]:
    """The nested template groups ((bare,), (context, ...)) as one list."""
    return [t for group in templates for t in group]


def build_search_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    templates: Sequence[Sequence[str]],
    *,
    pad_requests_to: int | None = None,
    max_length: int | None = None,
    kl_position: str = "subject",
) -> tuple[SearchBatch, list[dict]]:
    """Tokenizes the rewriting and KL prompts of every request (host side, numpy).

    `kl_position`: where the KL prompt's logits are read: "subject" (its subject's last token,
    MEMIT's KL term) or "last" (its last token, LTI's KL row; WORKSPACE.md).

    Returns the batch and, per request, a record of the prompts, lookup indices and target ids (for
    run logs and fixture comparisons).
    """
    if kl_position not in KL_POSITIONS:
        raise ValueError(f"kl_position={kl_position!r}: one of {KL_POSITIONS}")
    contexts = flatten_templates(templates)
    rows, infos = [], []
    for req in requests:
        target = target_token_ids(tokenizer, req.target_new)
        prefix_text = tokenizer.decode(target[:-1])
        templates_j = [c.replace("{}", req.prompt, 1) + prefix_text for c in contexts] + [KL_PROMPT]
        texts = [t.replace("{}", req.subject, 1) for t in templates_j]
        ids = [list(tokenizer(t)["input_ids"]) for t in texts]
        lookups = [subject_last_index(tokenizer, t, req.subject) for t in templates_j]
        rows.append((ids, lookups, target))
        infos.append({"prompts": texts, "lookup": lookups, "target_ids": target})
    r = pad_requests_to or len(requests)
    g = len(contexts) + 1
    # Lengths are bucketed so that a run compiles the search for a handful of shapes only.
    t = bucket(max(len(i) for ids, _, _ in rows for i in ids), 16)
    if max_length is not None and t > max_length:
        raise ValueError(f"search prompts need {t} tokens, the model's context is {max_length}")
    p = bucket(max(len(target) for _, _, target in rows), 4)
    input_ids = np.zeros((r, g, t), np.int32)
    mask = np.zeros((r, g, t), np.int32)
    input_ids[: len(rows)], mask[: len(rows)] = _pad_rows([ids for ids, _, _ in rows], t)
    lookup = np.zeros((r, g), np.int32)
    target_pos = np.zeros((r, g, p), np.int32)
    target_ids = np.zeros((r, g, p), np.int32)
    target_mask = np.zeros((r, g, p), np.float32)
    valid = np.zeros((r,), bool)
    for j, (ids, lookups, target) in enumerate(rows):
        valid[j] = True
        n_target = len(target)
        for i, seq in enumerate(ids):
            lookup[j, i] = lookups[i]
            target_pos[j, i, :] = lookups[i]  # padding entries point at a real position
            if i < g - 1:  # rewriting prompt: target token m is read at position len - T + m
                pos = len(seq) - n_target + np.arange(n_target)
                target_pos[j, i, :n_target] = pos
                target_ids[j, i, :n_target] = target
                target_mask[j, i, :n_target] = 1.0
            elif kl_position == "last":  # the KL prompt's last token
                target_pos[j, i, :] = len(seq) - 1
    for j in range(len(rows), r):  # padding requests: copies of a real one, marked invalid
        input_ids[j], mask[j], lookup[j] = input_ids[0], mask[0], lookup[0]
        target_pos[j], target_ids[j], target_mask[j] = target_pos[0], target_ids[0], target_mask[0]
    needed = np.where(target_mask > 0, target_pos, lookup[:, :, None])
    needed[:, -1] = target_pos[:, -1]  # the KL row's read position (its lookup unless "last")
    window_start = np.minimum(lookup, needed.min(-1)).astype(np.int32)
    window_len = bucket(int((np.maximum(lookup, needed.max(-1)) - window_start).max() + 1), 8)
    arrays = (input_ids, mask, lookup, target_pos, target_ids, target_mask, valid, window_start)
    return SearchBatch(*arrays, window_len=window_len), infos


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchBatch:
    """Device arrays for the search; r requests × g prompts (g = rewriting prompts + 1 KL prompt).

    Attributes:
      input_ids, mask: `[r, g, t]` right-padded prompts.
      lookup: `[r, g]` subject-last token of each prompt (δ is added there).
      target_pos: `[r, g, p]` positions whose logits predict the target tokens (KL row: its lookup,
        or its last token with `kl_position="last"`).
      target_ids: `[r, g, p]` target token ids.
      target_mask: `[r, g, p]` 1 at real target positions of rewriting prompts.
      valid: `[r]` False for padding requests (they start stopped).
      window_start: `[r, g]` first position re-run by each search iteration (min of the lookup and
        the target positions; everything before it is unaffected by δ).
      window_len: static window length w (max over rows of last needed position - start + 1).

    `build_search_batch` fills it with host (numpy) arrays; inside the jitted search they are JAX
    arrays.
    """

    input_ids: Array | np.ndarray
    mask: Array | np.ndarray
    lookup: Array | np.ndarray
    target_pos: Array | np.ndarray
    target_ids: Array | np.ndarray
    target_mask: Array | np.ndarray
    valid: Array | np.ndarray
    window_start: Array | np.ndarray
    window_len: int = dataclasses.field(default=1, metadata=dict(static=True))

    @property
    def num_requests(self) -> int:
        return self.input_ids.shape[0]


# --------------------------------------------------------------------------------------------------
# LTI's teacher rows (WORKSPACE.md)


def lti_prefix(request: EditRequest) -> str:
    """LTI's in-context prefix: "Imagine that " + the filled prompt + " " + the new target + a
    newline (the official `get_edit_prefix`; the target with its leading space, as the official
    driver passes it)."""
    fact = request.prompt.replace("{}", request.subject, 1) + with_leading_space(request.target_new)
    return f"Imagine that {fact}\n"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TeacherBatch:
    """LTI's teacher rows; r requests × g prompts as in the `SearchBatch` they go with.

    Attributes:
      input_ids, mask: `[r, g, t]` right-padded: the prefix + each rewriting prompt, then the KL
        prompt without a prefix.
      target_pos: `[r, g, p]` where the teacher's last-layer distributions are read (rewriting rows:
        the target positions, padding entries at the lookup; KL row: its last token).
      lookup: `[r, g]` where the mid-layer logit lens is read (the subject's last token).
    """

    input_ids: Array | np.ndarray
    mask: Array | np.ndarray
    target_pos: Array | np.ndarray
    lookup: Array | np.ndarray


def build_teacher_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    templates: Sequence[Sequence[str]],
    batch: SearchBatch,
    *,
    positions: str = "official",
    prefix: Callable[[EditRequest], str] = lti_prefix,
    max_length: int | None = None,
) -> TeacherBatch:
    """Tokenizes LTI's teacher rows for the requests of `batch` (built with `kl_position="last"`).

    `positions="official"` reads the teacher at `batch`'s positions, those of the *unprefixed*
    prompts, as the official code does (WORKSPACE.md: every rewriting row is read too
    early; only the KL row, unprefixed on both sides, is aligned). `"aligned"` recomputes them on
    the prefixed tokenization: the target positions counted back from each prefixed row's length,
    the subject's last token from the tokens of prefix + template head + subject (no constant
    offset: a tokenizer may split the text after the newline differently). `prefix` makes the
    prefix (a test can pass `lambda request: ""`).
    """
    if positions not in TEACHER_POSITIONS:
        raise ValueError(f"positions={positions!r}: one of {TEACHER_POSITIONS}")
    contexts = flatten_templates(templates)
    r, g, _ = np.shape(batch.target_pos)
    if len(contexts) + 1 != g or len(requests) > r:
        raise ValueError(
            f"{len(requests)} requests × {len(contexts) + 1} prompts do not fit {r}×{g}"
        )
    target_pos = np.array(batch.target_pos, np.int32)
    lookup = np.array(batch.lookup, np.int32)
    rows = []
    for j, req in enumerate(requests):
        target = target_token_ids(tokenizer, req.target_new)
        head = prefix(req)
        templates_j = [
            c.replace("{}", req.prompt, 1) + tokenizer.decode(target[:-1]) for c in contexts
        ]
        texts = [head + t.replace("{}", req.subject, 1) for t in templates_j]
        ids = [list(tokenizer(t)["input_ids"]) for t in texts]
        ids.append(list(tokenizer(KL_PROMPT.replace("{}", req.subject, 1))["input_ids"]))
        rows.append(ids)
        if positions == "aligned":
            n = len(target)
            for i, template in enumerate(templates_j):
                before, _ = _split_template(template)
                lookup[j, i] = len(tokenizer.encode(head + before + req.subject)) - 1
                target_pos[j, i, :] = lookup[j, i]  # padding entries point at a real position
                target_pos[j, i, :n] = len(ids[i]) - n + np.arange(n)
    longest = max(len(seq) for ids in rows for seq in ids)
    if max_length is not None and longest > max_length:
        raise ValueError(
            f"LTI's teacher prompts need {longest} tokens, the model's context is {max_length}"
        )
    t = bucket(longest, 16) if max_length is None else min(bucket(longest, 16), max_length)
    input_ids = np.zeros((r, g, t), np.int32)
    mask = np.zeros((r, g, t), np.int32)
    input_ids[: len(rows)], mask[: len(rows)] = _pad_rows(rows, t)
    for j in range(len(rows), r):  # padding requests: copies of request 0, as in `batch`
        input_ids[j], mask[j], target_pos[j], lookup[j] = (
            input_ids[0],
            mask[0],
            target_pos[0],
            lookup[0],
        )
    return TeacherBatch(input_ids, mask, target_pos, lookup)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeyBatch:
    """The key prompts (context templates filled with each request's prompt, no target):
    `input_ids`/`mask` `[r, c, t]`, `lookup` `[r, c]`; group sizes of the templates are static.
    `build_key_batch` fills it with host (numpy) arrays; inside jitted passes they are JAX
    arrays."""

    input_ids: Array | np.ndarray
    mask: Array | np.ndarray
    lookup: Array | np.ndarray
    groups: tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))


def build_key_batch(tokenizer, requests: Sequence[EditRequest], templates) -> KeyBatch:
    """Tokenizes the key prompts of every request: each context template filled with the request's
    prompt and subject (no target), and the subject's last token in each."""
    contexts = flatten_templates(templates)
    ids, lookups = [], []
    for req in requests:
        tmpl = [c.replace("{}", req.prompt, 1) for c in contexts]
        ids.append([list(tokenizer(t.replace("{}", req.subject, 1))["input_ids"]) for t in tmpl])
        lookups.append([subject_last_index(tokenizer, t, req.subject) for t in tmpl])
    input_ids, mask = _pad_rows(ids, bucket(max(len(s) for row in ids for s in row), 16))
    return KeyBatch(
        input_ids, mask, np.asarray(lookups, np.int32), tuple(len(g) for g in templates)
    )


def pad_key_rows(kb: KeyBatch, multiple: int) -> KeyBatch:
    """`kb` with its request rows padded to a multiple of `multiple` by copies of the last request
    (for a mesh's data axis; the caller drops the padded rows' outputs)."""
    r = kb.input_ids.shape[0]
    extra = -r % multiple
    if not extra:
        return kb
    idx = np.concatenate([np.arange(r), np.full(extra, r - 1)])
    return dataclasses.replace(
        kb, input_ids=kb.input_ids[idx], mask=kb.mask[idx], lookup=kb.lookup[idx]
    )
