"""Edit requests: parsed from the common dataset layouts and validated up front.

An edit request asks the model to complete `prompt.format(subject)` with `target_new` instead of
`target_true`. Requests come in several layouts, all read by `parse_request` (auto-detected):

* ``"counterfact"`` — the nested CounterFact / multi_counterfact record::

      {"case_id": 0,
       "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                             "target_new": {"str": "English"}, "target_true": {"str": "French"}},
       "paraphrase_prompts": [...], "neighborhood_prompts": [...], "generation_prompts": [...]}

  The neighbourhood target is `target_true` (the neighbourhood prompts are about other subjects
  that share the true object).
* ``"counterfact_flat"`` — the flattened EasyEdit/MEND layout
  (`case_id, prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt,
  locality_ground_truth`) whose prompt has the subject written out.
* ``"zsre"`` — the MEND/MEMIT zsRE schema (`subject, src, pred, rephrase, alt, answers, loc,
  loc_ans`). prompt = `src` with the subject replaced by `{}`; target_new = `alt` (or `answers[0]`
  with ``zsre_target="answers"``, what the ENC/MEMIT `MENDQADataset` edits towards); target_true =
  `pred`, else `answers[0]`; paraphrase = `[rephrase]`; neighbourhood prompt = `loc` without its
  leading ``"nq question:"``, stripped, with ``"?"`` appended (as the reference does, even when the
  question already ends in "?"); neighbourhood target = `loc_ans`; case_id = the record's position
  in the file unless the record has a `case_id`.
* ``"plain"`` — ``{prompt, subject, target_new[, target_true, case_id, paraphrase_prompts,
  neighborhood_prompts, neighborhood_target, generation_prompts]}``; the written form of
  `EditRequest.to_dict`.

Targets may be strings or ``{"str": ...}`` dicts in every layout. Prompt lists may be a list of
strings or a single string.

Prompt rule (every layout): a prompt that contains ``{}`` is a template and must contain exactly
one ``{}``; otherwise the subject must occur in it written out, and its **first** occurrence is
replaced by ``{}`` (the reference's `str.replace(subject, "{}")` replaces every occurrence; none
of the shipped CounterFact or zsRE prompts has the subject twice, so the two agree on them). No
other brace may appear, because the algorithms fill prompts with `str.format`.

Two records of `zsre_mend_train_800.json` (positions 534 and 723) have an empty `alt`; they are
rejected with the default ``zsre_target="alt"``.

Validation collects every problem of every record and raises one `RequestError` listing them all
(record index, case_id, field, what is wrong and how to fix it). Record-level problems: missing
field, wrong type, subject not found, wrong number of ``{}``, empty or whitespace-only
subject/target, target_new equal to target_true (case- and whitespace-insensitive). Batch-level
problems (`validate_requests`): the same prompt+subject twice, the same case_id twice and, given a
tokenizer, a filled prompt plus target longer than the model's maximum length.

Subject-token positions follow SPEC §2.2 (ENC/AlphaEdit): `jaxedit.prompts.subject_last_index`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxedit.prompts import subject_token_mismatch, with_leading_space

logger = logging.getLogger(__name__)

LAYOUTS = ("counterfact", "counterfact_flat", "zsre", "plain")
ZSRE_TARGETS = ("alt", "answers")

_FLAT_MARKERS = ("ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")
_LIST_KEYS = ("requests", "data", "records", "edits")
_MAX_LISTED = 50
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One fact to edit: the model should complete `prompt.format(subject)` with `target_new`.

    Attributes:
      case_id: the record's id (int or str); the position in the file when the record has none.
      prompt: template with exactly one ``{}`` where the subject goes.
      subject: the subject string.
      target_new: the new object, as given (the algorithms put a space in front when it lacks one).
      target_true: the current object, or None when unknown.
      paraphrase_prompts: rephrasings of the filled prompt (generalisation), subject written out.
      neighborhood_prompts: prompts about other subjects (specificity).
      neighborhood_target: the answer the neighbourhood prompts should keep (zsRE `loc_ans`;
        CounterFact: `target_true`).
      generation_prompts: prompts for free generation (fluency/consistency metrics).
      layout: which input layout the record came from (one of `LAYOUTS`, or "" when built by
        hand); not part of equality.
    """

    case_id: int | str
    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_target: str | None = None
    generation_prompts: tuple[str, ...] = ()
    layout: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def filled_prompt(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def to_dict(self) -> dict[str, Any]:
        """The request as a ``"plain"``-layout JSON object (`parse_request` reads it back)."""
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
        }
        if self.target_true is not None:
            out["target_true"] = self.target_true
        for name in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
            out[name] = list(getattr(self, name))
        if self.neighborhood_target is not None:
            out["neighborhood_target"] = self.neighborhood_target
        return out


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: where, what, and how to fix it."""

    index: int | None
    case_id: Any
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = "record" if self.index is None else f"record {self.index}"
        if self.case_id is not None:
            where += f" (case_id {self.case_id!r})"
        return f"{where}, field {self.field!r}: {self.message}. Fix: {self.fix}"


class RequestError(ValueError):
    """Edit requests that cannot be used; `problems` lists every problem found.

    Attributes:
      problems: the problems, in record order.
      source: the file (or other origin) the records came from, if known.
    """

    def __init__(self, problems: Sequence[Problem], source: str | os.PathLike | None = None):
        self.problems = tuple(problems)
        self.source = None if source is None else os.fspath(source)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} with edit requests"
        if self.source:
            head += f" in {self.source}"
        lines = [f"  - {p}" for p in self.problems[:_MAX_LISTED]]
        if n > _MAX_LISTED:
            lines.append(f"  ... and {n - _MAX_LISTED} more (see RequestError.problems)")
        super().__init__(head + ":\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------
# Field readers


class _Fields:
    """Reads typed fields from one mapping, recording a Problem for each missing/ill-typed one."""

    def __init__(self, record: Mapping, index: int | None, case_id: Any, problems: list[Problem],
                 prefix: str = ""):
        self.record = record
        self.index = index
        self.case_id = case_id
        self.problems = problems
        self.prefix = prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def add(self, key: str, message: str, fix: str) -> None:
        self.problems.append(Problem(self.index, self.case_id, self.name(key), message, fix))

    def text(self, key: str, required: bool = True) -> Any:
        """A string field; `_MISSING` when absent or wrong (already reported if required)."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(key, "missing field", f"add {self.name(key)!r} (a string)")
            return _MISSING
        value = self.record[key]
        if not isinstance(value, str):
            self.add(key, f"must be a string, got {type(value).__name__} {value!r:.60}",
                     "write it as a JSON string")
            return _MISSING
        return value

    def target(self, key: str, required: bool = True) -> Any:
        """A target: a string or a ``{"str": ...}`` dict."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(key, "missing field",
                         f'add {self.name(key)!r} (a string or {{"str": ...}})')
            return _MISSING
        value = self.record[key]
        if isinstance(value, Mapping):
            if "str" not in value:
                self.add(key, f"target object has no 'str' key (keys {sorted(value)})",
                         'write the target as a string or {"str": "..."}')
                return _MISSING
            value = value["str"]
        if not isinstance(value, str):
            self.add(key, f"target must be a string, got {type(value).__name__} {value!r:.60}",
                     'write the target as a string or {"str": "..."}')
            return _MISSING
        return value

    def texts(self, key: str) -> Any:
        """An optional list of strings (a single string counts as a one-element list)."""
        if key not in self.record or self.record[key] is None:
            return ()
        value = self.record[key]
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            self.add(key, f"must be a list of strings, got {type(value).__name__}",
                     "write it as a JSON list of strings")
            return _MISSING
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            self.add(key, f"items {bad[:5]} are not strings", "make every item a JSON string")
            return _MISSING
        return tuple(value)

    def answers(self, key: str, required: bool) -> Any:
        """A non-empty list of answer strings (zsRE `answers`); `_MISSING` when absent/bad."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(key, "missing field", f"add {self.name(key)!r} (a list of strings)")
            return _MISSING
        value = self.texts(key)
        if value is _MISSING:
            return _MISSING
        if not value:
            self.add(key, "empty answer list", "give at least one answer")
            return _MISSING
        return value


def _case_id(record: Mapping, index: int | None, problems: list[Problem]) -> Any:
    if "case_id" not in record or record["case_id"] is None:
        return index
    value = record["case_id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        problems.append(Problem(
            index, None, "case_id",
            f"must be an int or a string, got {type(value).__name__} {value!r:.60}",
            "use an integer or string id, or drop the field to use the position"))
        return index
    return value


def detect_layout(record: Mapping) -> str | None:
    """The layout name of a raw record (one of `LAYOUTS`), or None if none fits."""
    if "requested_rewrite" in record:
        return "counterfact"
    if "src" in record and "subject" in record:
        return "zsre"
    if "prompt" in record and any(k in record for k in _FLAT_MARKERS):
        return "counterfact_flat"
    if "prompt" in record:
        return "plain"
    return None


def _template(prompt: Any, subject: Any, field: str, index: int | None, case_id: Any,
              problems: list[Problem]) -> Any:
    """A ``{}`` template from a prompt that holds ``{}`` or the subject written out."""
    if prompt is _MISSING:
        return _MISSING
    n = prompt.count("{}")
    if n == 0:
        if subject is _MISSING:
            return _MISSING
        if not subject.strip() or subject not in prompt:
            if subject.strip():
                problems.append(Problem(
                    index, case_id, field,
                    f"subject {subject!r} does not occur in prompt {prompt!r} and the prompt has "
                    "no '{}'",
                    "write the subject exactly as it appears in the prompt, or put '{}' where it "
                    "goes"))
            return _MISSING
        template = prompt.replace(subject, "{}", 1)
    elif n > 1:
        problems.append(Problem(index, case_id, field,
                                f"prompt {prompt!r} has {n} '{{}}' placeholders",
                                "keep exactly one '{}', where the subject goes"))
        return _MISSING
    else:
        template = prompt
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        problems.append(Problem(index, case_id, field,
                                f"prompt {prompt!r} has a brace other than the one '{{}}' "
                                "(str.format would fail on it)",
                                "remove the other '{' and '}' characters from the prompt"))
        return _MISSING
    return template


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _content_problems(values: Mapping[str, Any], names: Mapping[str, str], index: int | None,
                      case_id: Any, problems: list[Problem]) -> None:
    """Empty subject/targets and target_new == target_true; `_MISSING` values are skipped."""

    def add(key: str, message: str, fix: str) -> None:
        problems.append(Problem(index, case_id, names.get(key, key), message, fix))

    for key, what in (("subject", "subject"), ("target_new", "new target"),
                      ("target_true", "true target")):
        value = values.get(key, _MISSING)
        if isinstance(value, str) and not value.strip():
            add(key, f"the {what} is empty or whitespace-only ({value!r})",
                f"give a non-empty {what}" + (" or leave it out" if key == "target_true" else ""))
    new, true = values.get("target_new", _MISSING), values.get("target_true", _MISSING)
    if isinstance(new, str) and isinstance(true, str) and new.strip() and _norm(new) == _norm(true):
        add("target_new", f"target_new {new!r} equals target_true {true!r} (ignoring case and "
            "whitespace), so there is nothing to edit",
            "choose a different new target or drop the record")


# --------------------------------------------------------------------------------------------
# Parsing


def _parse(record: Any, index: int | None, zsre_target: str) -> tuple[EditRequest | None,
                                                                      list[Problem]]:
    problems: list[Problem] = []
    if not isinstance(record, Mapping):
        problems.append(Problem(index, None, "<record>",
                                f"expected a JSON object, got {type(record).__name__}",
                                "write each request as a JSON object"))
        return None, problems
    case_id = _case_id(record, index, problems)
    layout = detect_layout(record)
    if layout is None:
        problems.append(Problem(
            index, case_id, "<record>",
            f"unknown request layout (keys {sorted(record)})",
            "use a CounterFact record ('requested_rewrite'), a flattened CounterFact record "
            "('prompt', 'subject', 'target_new', 'ground_truth', ...), a zsRE record ('subject', "
            "'src', 'alt', ...) or {'prompt', 'subject', 'target_new'}"))
        return None, problems

    top = _Fields(record, index, case_id, problems)
    names: dict[str, str] = {}
    neighborhood_target: Any = None
    if layout == "counterfact":
        rr = record["requested_rewrite"]
        if not isinstance(rr, Mapping):
            problems.append(Problem(index, case_id, "requested_rewrite",
                                    f"must be an object, got {type(rr).__name__}",
                                    "write requested_rewrite as {'prompt', 'subject', "
                                    "'target_new', 'target_true'}"))
            return None, problems
        inner = _Fields(rr, index, case_id, problems, prefix="requested_rewrite.")
        prompt, subject = inner.text("prompt"), inner.text("subject")
        target_new, target_true = inner.target("target_new"), inner.target("target_true", False)
        paraphrase = top.texts("paraphrase_prompts")
        neighborhood = top.texts("neighborhood_prompts")
        generation = top.texts("generation_prompts")
        neighborhood_target = target_true
        names = {k: inner.name(k) for k in ("prompt", "subject", "target_new", "target_true")}
    elif layout == "counterfact_flat":
        prompt, subject = top.text("prompt"), top.text("subject")
        target_new, target_true = top.target("target_new"), top.target("ground_truth", False)
        paraphrase = top.texts("rephrase_prompt")
        neighborhood = top.texts("locality_prompt")
        neighborhood_target = top.target("locality_ground_truth", False)
        if neighborhood_target is _MISSING and "locality_ground_truth" not in record:
            neighborhood_target = target_true
        generation = top.texts("generation_prompts")
        names = {"target_true": "ground_truth"}
    elif layout == "zsre":
        if zsre_target not in ZSRE_TARGETS:
            raise ValueError(f"zsre_target={zsre_target!r}: expected one of {ZSRE_TARGETS}")
        prompt, subject = top.text("src"), top.text("subject")
        answers = top.answers("answers", required=zsre_target == "answers")
        pred = top.text("pred", required=False)
        if zsre_target == "alt":
            target_new = top.target("alt")
            target_true = pred if pred is not _MISSING else (
                answers[0] if answers is not _MISSING else _MISSING)
            names = {"target_new": "alt",
                     "target_true": "pred" if pred is not _MISSING else "answers"}
        else:
            target_new = answers[0] if answers is not _MISSING else _MISSING
            target_true = _MISSING
            names = {"target_new": "answers"}
        paraphrase = top.texts("rephrase")
        loc = top.text("loc", required=False)
        neighborhood = () if loc is _MISSING else (zsre_neighborhood_prompt(loc),)
        neighborhood_target = top.target("loc_ans", False)
        generation = top.texts("generation_prompts")
        names["prompt"] = "src"
    else:  # plain
        prompt, subject = top.text("prompt"), top.text("subject")
        target_new, target_true = top.target("target_new"), top.target("target_true", False)
        paraphrase = top.texts("paraphrase_prompts")
        neighborhood = top.texts("neighborhood_prompts")
        neighborhood_target = top.target("neighborhood_target", False)
        generation = top.texts("generation_prompts")

    names.setdefault("prompt", "prompt")
    template = _template(prompt, subject, names["prompt"], index, case_id, problems)
    _content_problems({"subject": subject, "target_new": target_new, "target_true": target_true},
                      names, index, case_id, problems)
    if problems:
        return None, problems
    request = EditRequest(
        case_id=case_id,
        prompt=template,
        subject=subject,
        target_new=target_new,
        target_true=None if target_true is _MISSING else target_true,
        paraphrase_prompts=paraphrase,
        neighborhood_prompts=neighborhood,
        neighborhood_target=None if neighborhood_target is _MISSING else neighborhood_target,
        generation_prompts=generation,
        layout=layout,
    )
    return request, problems


def zsre_neighborhood_prompt(loc: str) -> str:
    """The neighbourhood prompt of a zsRE record (SPEC §6.1, ENC `MENDQADataset`).

    Args:
      loc: the record's `loc`, e.g. ``"nq question: who sang tequila"``.

    Returns:
      `loc` without its leading ``"nq question:"``, stripped, plus ``"?"``.
    """
    text = loc.strip()
    if text.startswith("nq question:"):
        text = text[len("nq question:"):]
    return text.strip() + "?"


def parse_request(record: Mapping, index: int = 0, *, zsre_target: str = "alt") -> EditRequest:
    """Parses one raw record of any supported layout (auto-detected) into an `EditRequest`.

    Args:
      record: the raw JSON object.
      index: the record's position in its file or batch (used in messages, and as the case_id of
        records that have none).
      zsre_target: for zsRE records, "alt" (default: edit towards `alt`, the MEND edit target) or
        "answers" (edit towards `answers[0]`, as ENC/MEMIT's `MENDQADataset` does; target_true is
        then None).

    Returns:
      The request.

    Raises:
      RequestError: listing every problem of this record.
    """
    request, problems = _parse(record, index, zsre_target)
    if problems:
        raise RequestError(problems)
    return request


def parse_requests(records: Iterable[Any], start: int = 0, *, zsre_target: str = "alt",
                   check_duplicates: bool = True,
                   source: str | os.PathLike | None = None) -> list[EditRequest]:
    """Parses and validates many raw records, reporting every problem of every record at once.

    Args:
      records: raw JSON objects.
      start: index of the first record (messages and default case_ids count from it).
      zsre_target: see `parse_request`.
      check_duplicates: also reject repeated prompt+subject pairs (see `validate_requests`).
        Repeated case_ids are always rejected.
      source: named in the error message (e.g. the file).

    Returns:
      The requests, in order.

    Raises:
      RequestError: listing every problem found.
    """
    requests: list[EditRequest] = []
    indices: list[int] = []
    problems: list[Problem] = []
    for i, record in enumerate(records, start):
        request, found = _parse(record, i, zsre_target)
        problems.extend(found)
        if request is not None:
            requests.append(request)
            indices.append(i)
    problems.extend(_duplicate_problems(requests, indices, prompts=check_duplicates))
    if problems:
        problems.sort(key=lambda p: -1 if p.index is None else p.index)
        raise RequestError(problems, source)
    return requests


# --------------------------------------------------------------------------------------------
# Validation


def _request_problems(request: Any, index: int) -> list[Problem]:
    """Record-level problems of an already built `EditRequest` (e.g. one made by hand)."""
    if not isinstance(request, EditRequest):
        return [Problem(index, None, "<record>",
                        f"expected an EditRequest, got {type(request).__name__}",
                        "build requests with parse_request or EditRequest(...)")]
    problems: list[Problem] = []
    case_id = request.case_id
    if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
        problems.append(Problem(index, case_id, "case_id",
                                f"must be an int or a string, got {type(case_id).__name__}",
                                "use an integer or string id"))
    values: dict[str, Any] = {}
    for key in ("prompt", "subject", "target_new", "target_true", "neighborhood_target"):
        value = getattr(request, key)
        optional = key in ("target_true", "neighborhood_target")
        if value is None and optional:
            values[key] = _MISSING
        elif not isinstance(value, str):
            problems.append(Problem(index, case_id, key,
                                    f"must be a string, got {type(value).__name__} {value!r:.60}",
                                    "pass a str" + (" or None" if optional else "")))
            values[key] = _MISSING
        else:
            values[key] = value
    for key in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
        value = getattr(request, key)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(index, case_id, key, "must be a tuple of strings",
                                    "pass a tuple of str"))
    prompt = values["prompt"]
    if prompt is not _MISSING and prompt.count("{}") != 1:
        problems.append(Problem(index, case_id, "prompt",
                                f"prompt {prompt!r} has {prompt.count('{}')} '{{}}' placeholders",
                                "keep exactly one '{}', where the subject goes"))
    elif prompt is not _MISSING:
        _template(prompt, values["subject"], "prompt", index, case_id, problems)
    _content_problems(values, {}, index, case_id, problems)
    return problems


def _duplicate_problems(requests: Sequence[EditRequest], indices: Sequence[int],
                        prompts: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: dict[Any, tuple[int, Any]] = {}
    seen_prompts: dict[tuple[str, str], tuple[int, Any]] = {}
    for request, i in zip(requests, indices):
        if not isinstance(request, EditRequest):
            continue
        key_id = (type(request.case_id).__name__, request.case_id)
        if key_id in seen_ids:
            j, _ = seen_ids[key_id]
            problems.append(Problem(i, request.case_id, "case_id",
                                    f"case_id {request.case_id!r} is already used by record {j}",
                                    "give every request its own case_id"))
        else:
            seen_ids[key_id] = (i, request.case_id)
        if prompts:
            key = (request.prompt, request.subject)
            if key in seen_prompts:
                j, other = seen_prompts[key]
                problems.append(Problem(
                    i, request.case_id, "prompt",
                    f"same prompt and subject ({request.filled_prompt()!r}) as record {j} "
                    f"(case_id {other!r}) in one batch",
                    "edit each prompt+subject once per batch: drop one, or put them in different "
                    "batches"))
            else:
                seen_prompts[key] = (i, request.case_id)
    return problems


def validate_requests(requests: Sequence[EditRequest], tokenizer: Any = None,
                      max_tokens: int | None = None, *, check_duplicates: bool = True,
                      source: str | os.PathLike | None = None) -> None:
    """Checks a batch of requests and raises one error listing every problem.

    Checks each request (types, exactly one ``{}`` and no other brace, non-empty subject and
    targets, target_new != target_true), repeated case_ids, and with `check_duplicates` repeated
    prompt+subject pairs (two edits of one fact in one batch). Given a tokenizer, also checks that
    `filled_prompt() + " " + target_new` fits in `max_tokens` tokens (default: the tokenizer's
    `model_max_length` when that is a real limit, below 10**7) and logs a warning for subjects whose
    tokens are not a prefix of the filled prompt's tokens (`subject_token_mismatch`), where the
    subject-last-token index of SPEC §2.2 can point at the wrong token.

    Args:
      requests: the batch.
      tokenizer: a Hugging Face tokenizer (callable returning ``{"input_ids": [...]}`` and with
        `encode`), or None to skip the token checks.
      max_tokens: the model's maximum sequence length.
      check_duplicates: reject repeated prompt+subject pairs.
      source: named in the error message.

    Raises:
      RequestError: listing every problem found.
      ValueError: `max_tokens` was given without a tokenizer.
    """
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs a tokenizer to count tokens with")
    problems: list[Problem] = []
    valid: list[EditRequest] = []
    indices: list[int] = []
    for i, request in enumerate(requests):
        found = _request_problems(request, i)
        problems.extend(found)
        if not found:
            valid.append(request)
            indices.append(i)
    problems.extend(_duplicate_problems(valid, indices, prompts=check_duplicates))
    if tokenizer is not None:
        if max_tokens is None:
            limit = getattr(tokenizer, "model_max_length", None)
            max_tokens = limit if isinstance(limit, int) and 0 < limit < 10**7 else None
        mismatched: list[str] = []
        for request, i in zip(valid, indices):
            if max_tokens is not None:
                text = request.filled_prompt() + with_leading_space(request.target_new)
                n = len(tokenizer(text)["input_ids"])
                if n > max_tokens:
                    problems.append(Problem(
                        i, request.case_id, "prompt",
                        f"the filled prompt plus target ({text!r:.80}) is {n} tokens, more than "
                        f"the model's {max_tokens}",
                        "shorten the prompt or target, or drop the record"))
            issue = subject_token_mismatch(tokenizer, request.prompt, request.subject)
            if issue is not None:
                mismatched.append(f"record {i} (case_id {request.case_id!r}): {issue}")
        if mismatched:
            logger.warning("%d request(s) whose subject tokens are not a prefix of the prompt's "
                           "tokens (subject-last-token index may be off):\n%s", len(mismatched),
                           "\n".join(mismatched[:10]))
    if problems:
        problems.sort(key=lambda p: -1 if p.index is None else p.index)
        raise RequestError(problems, source)


# --------------------------------------------------------------------------------------------
# Files


def _read_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return _read_jsonl(path, text)
        raise RequestError([Problem(None, None, "<file>", f"not valid JSON: {e}",
                                    "write a JSON list of objects, or JSON Lines")], path) from e
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1:
            return next(iter(lists.values()))
        for key in _LIST_KEYS:
            if key in lists:
                return lists[key]
        raise RequestError([Problem(
            None, None, "<file>",
            f"a JSON object whose list of requests cannot be told apart (list-valued keys "
            f"{sorted(lists)})",
            f"put the requests in a top-level list, or under one of {list(_LIST_KEYS)}")], path)
    raise RequestError([Problem(None, None, "<file>",
                                f"top-level JSON value is a {type(data).__name__}",
                                "write a JSON list of request objects")], path)


def _read_jsonl(path: Path, text: str) -> list[Any]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RequestError([Problem(None, None, "<file>", f"line {n} is not valid JSON: {e}",
                                        "write one JSON object per line")], path) from e
    return records


def load_requests(path: str | os.PathLike, start: int = 0, num: int | None = None, *,
                  zsre_target: str = "alt", tokenizer: Any = None,
                  max_tokens: int | None = None) -> list[EditRequest]:
    """Reads, parses and validates edit requests from a file.

    Accepts a JSON list of records, a JSON object holding one list of records (or several, one of
    them under "requests"/"data"/"records"/"edits"), or JSON Lines (`.jsonl`, or any file with one
    JSON value per line). Record layouts are auto-detected per record (see the module docstring).

    Repeated case_ids are rejected; repeated prompt+subject pairs are not (CounterFact holds a few
    dozen: the same prompt and subject with different targets, which are different edits) — check
    each batch with `validate_requests` before editing it.

    Args:
      path: the file.
      start: index of the first record to read.
      num: how many records to read (default: all from `start`).
      zsre_target: see `parse_request`.
      tokenizer: optional tokenizer for the length check of `validate_requests`.
      max_tokens: optional maximum length for that check.

    Returns:
      The requests `start .. start + num - 1`. Messages and default case_ids use positions in the
      file.

    Raises:
      RequestError: naming the file and listing every problem found.
      FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit request file {path} does not exist")
    if start < 0 or (num is not None and num < 0):
        raise ValueError(f"start={start}, num={num}: both must be >= 0")
    records = _read_records(path)
    if start > len(records) or (start == len(records) and num != 0 and records):
        raise RequestError([Problem(None, None, "<file>",
                                    f"start={start} but the file holds {len(records)} records",
                                    f"use a start below {len(records)}")], path)
    stop = len(records) if num is None else min(len(records), start + num)
    requests = parse_requests(records[start:stop], start, zsre_target=zsre_target,
                              check_duplicates=False, source=path)
    if tokenizer is not None:
        validate_requests(requests, tokenizer, max_tokens, check_duplicates=False, source=path)
    return requests


# --------------------------------------------------------------------------------------------
