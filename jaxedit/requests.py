"""Edit requests: parsed from the common dataset layouts and validated up front.

An edit request asks the model to complete `prompt.format(subject)` with `target_new` instead of
`target_true`. Requests come in several record layouts (CounterFact nested and flattened, zsRE,
plain), all read by `parse_request` (auto-detected; `jaxedit.records` describes the layouts and the
prompt rule and reads the records).

Validation collects every problem of every record and raises one `RequestError` listing them all
(record index, case_id, field, what is wrong and how to fix it). Record-level problems: missing
field, wrong type, subject not found, wrong number of ``{}``, empty or whitespace-only
subject/target, target_new equal to target_true (case- and whitespace-insensitive). Batch-level
problems (`validate_requests`): the same prompt+subject twice, the same case_id twice and, given a
tokenizer, a filled prompt plus target longer than the model's maximum length.

Subject-token positions follow reference §2.2 (ENC/AlphaEdit): `jaxedit.prompts.subject_last_index`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxedit.errors import InputError, MissingFileError
from jaxedit.prompts import subject_token_mismatch, with_leading_space
from jaxedit.records import (
    LAYOUTS,
    MISSING,
    ZSRE_TARGETS,
    Problem,
    content_problems,
    detect_layout,
    parse_record,
    prompt_template,
    zsre_neighborhood_prompt,
)

__all__ = [
    "LAYOUTS",
    "ZSRE_TARGETS",
    "EditRequest",
    "Problem",
    "RequestError",
    "detect_layout",
    "load_requests",
    "parse_request",
    "parse_requests",
    "validate_requests",
    "zsre_neighborhood_prompt",
]

logger = logging.getLogger(__name__)

_LIST_KEYS = ("requests", "data", "records", "edits")
_MAX_LISTED = 50


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


class RequestError(InputError):
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
# Parsing


def _parse(
    record: Any, index: int | None, zsre_target: str
) -> tuple[EditRequest | None, list[Problem]]:
    fields, problems = parse_record(record, index, zsre_target)
    return (None if fields is None else EditRequest(**fields)), problems


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
    assert request is not None  # parse_record returns fields whenever it found no problem
    return request


def parse_requests(
    records: Iterable[Any],
    start: int = 0,
    *,
    zsre_target: str = "alt",
    check_duplicates: bool = True,
    source: str | os.PathLike | None = None,
) -> list[EditRequest]:
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
        return [
            Problem(
                index,
                None,
                "<record>",
                f"expected an EditRequest, got {type(request).__name__}",
                "build requests with parse_request or EditRequest(...)",
            )
        ]
    problems: list[Problem] = []
    case_id = request.case_id
    if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
        problems.append(
            Problem(
                index,
                case_id,
                "case_id",
                f"must be an int or a string, got {type(case_id).__name__}",
                "use an integer or string id",
            )
        )
    values: dict[str, Any] = {}
    for key in ("prompt", "subject", "target_new", "target_true", "neighborhood_target"):
        value = getattr(request, key)
        optional = key in ("target_true", "neighborhood_target")
        if value is None and optional:
            values[key] = MISSING
        elif not isinstance(value, str):
            problems.append(
                Problem(
                    index,
                    case_id,
                    key,
                    f"must be a string, got {type(value).__name__} {value!r:.60}",
                    "pass a str" + (" or None" if optional else ""),
                )
            )
            values[key] = MISSING
        else:
            values[key] = value
    for key in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
        value = getattr(request, key)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            problems.append(
                Problem(index, case_id, key, "must be a tuple of strings", "pass a tuple of str")
            )
    prompt = values["prompt"]
    if prompt is not MISSING and prompt.count("{}") != 1:
        problems.append(
            Problem(
                index,
                case_id,
                "prompt",
                f"prompt {prompt!r} has {prompt.count('{}')} '{{}}' placeholders",
                "keep exactly one '{}', where the subject goes",
            )
        )
    elif prompt is not MISSING:
        prompt_template(prompt, values["subject"], "prompt", index, case_id, problems)
    content_problems(values, {}, index, case_id, problems)
    return problems


def _duplicate_problems(
    requests: Sequence[EditRequest], indices: Sequence[int], prompts: bool = True
) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: dict[Any, tuple[int, Any]] = {}
    seen_prompts: dict[tuple[str, str], tuple[int, Any]] = {}
    for request, i in zip(requests, indices):
        if not isinstance(request, EditRequest):
            continue
        key_id = (type(request.case_id).__name__, request.case_id)
        if key_id in seen_ids:
            j, _ = seen_ids[key_id]
            msg = f"case_id {request.case_id!r} is already used by record {j}"
            fix = "give every request its own case_id"
            problems.append(Problem(i, request.case_id, "case_id", msg, fix))
        else:
            seen_ids[key_id] = (i, request.case_id)
        if prompts:
            key = (request.prompt, request.subject)
            if key in seen_prompts:
                j, other = seen_prompts[key]
                msg = (
                    f"same prompt and subject ({request.filled_prompt()!r}) as record {j} "
                    f"(case_id {other!r}) in one batch"
                )
                fix = (
                    "edit each prompt+subject once per batch: drop one, or put them in "
                    "different batches"
                )
                problems.append(Problem(i, request.case_id, "prompt", msg, fix))
            else:
                seen_prompts[key] = (i, request.case_id)
    return problems


def validate_requests(
    requests: Sequence[EditRequest],
    tokenizer: Any = None,
    max_tokens: int | None = None,
    *,
    check_duplicates: bool = True,
    source: str | os.PathLike | None = None,
) -> None:
    """Checks a batch of requests and raises one error listing every problem.

    Checks each request (types, exactly one ``{}`` and no other brace, non-empty subject and
    targets, target_new != target_true), repeated case_ids, and with `check_duplicates` repeated
    prompt+subject pairs (two edits of one fact in one batch). Given a tokenizer, also checks that
    `filled_prompt() + " " + target_new` fits in `max_tokens` tokens (default: the tokenizer's
    `model_max_length` when that is a real limit, below 10**7) and logs a warning for subjects whose
    tokens are not a prefix of the filled prompt's tokens (`subject_token_mismatch`), where the
    subject-last-token index of reference §2.2 can point at the wrong token.

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
                    problems.append(
                        Problem(
                            i,
                            request.case_id,
                            "prompt",
                            f"the filled prompt plus target ({text!r:.80}) is {n} tokens, more "
                            f"than the model's {max_tokens}",
                            "shorten the prompt or target, or drop the record",
                        )
                    )
            issue = subject_token_mismatch(tokenizer, request.prompt, request.subject)
            if issue is not None:
                mismatched.append(f"record {i} (case_id {request.case_id!r}): {issue}")
        if mismatched:
            logger.warning(
                "%d request(s) whose subject tokens are not a prefix of the prompt's "
                "tokens (subject-last-token index may be off):\n%s",
                len(mismatched),
                "\n".join(mismatched[:10]),
            )
    if problems:
        problems.sort(key=lambda p: -1 if p.index is None else p.index)
        raise RequestError(problems, source)


# --------------------------------------------------------------------------------------------
# Files


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            [Problem(None, None, "<file>", f"not UTF-8 text ({e})", "write UTF-8 JSON or JSONL")],
            path,
        ) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return _read_jsonl(path, text)
        raise RequestError(
            [
                Problem(
                    None,
                    None,
                    "<file>",
                    f"not valid JSON: {e}",
                    "write a JSON list of objects, or JSON Lines",
                )
            ],
            path,
        ) from e
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1:
            return next(iter(lists.values()))
        for key in _LIST_KEYS:
            if key in lists:
                return lists[key]
        raise RequestError(
            [
                Problem(
                    None,
                    None,
                    "<file>",
                    f"a JSON object whose list of requests cannot be told apart (list-valued keys "
                    f"{sorted(lists)})",
                    f"put the requests in a top-level list, or under one of {list(_LIST_KEYS)}",
                )
            ],
            path,
        )
    raise RequestError(
        [
            Problem(
                None,
                None,
                "<file>",
                f"top-level JSON value is a {type(data).__name__}",
                "write a JSON list of request objects",
            )
        ],
        path,
    )


def _read_jsonl(path: Path, text: str) -> list[Any]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RequestError(
                [
                    Problem(
                        None,
                        None,
                        "<file>",
                        f"line {n} is not valid JSON: {e}",
                        "write one JSON object per line",
                    )
                ],
                path,
            ) from e
    return records


def load_requests(
    path: str | os.PathLike,
    start: int = 0,
    num: int | None = None,
    *,
    zsre_target: str = "alt",
    tokenizer: Any = None,
    max_tokens: int | None = None,
) -> list[EditRequest]:
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
      RequestError: naming the file and listing every problem found (also: no records at all).
      MissingFileError (a FileNotFoundError): the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"edit request file {path} "
            + ("is a directory" if path.is_dir() else "does not exist")
            + " (fix: pass a JSON/JSONL file of requests, e.g. counterfact-edit.json)"
        )
    if start < 0 or (num is not None and num < 0):
        raise InputError(f"start={start}, num={num}: both must be >= 0")
    records = _read_records(path)
    if not records:
        raise RequestError(
            [Problem(None, None, "<file>", "holds no records", "write at least one request")],
            path,
        )
    if start > len(records) or (start == len(records) and num != 0 and records):
        raise RequestError(
            [
                Problem(
                    None,
                    None,
                    "<file>",
                    f"start={start} but the file holds {len(records)} records",
                    f"use a start below {len(records)}",
                )
            ],
            path,
        )
    stop = len(records) if num is None else min(len(records), start + num)
    requests = parse_requests(
        records[start:stop], start, zsre_target=zsre_target, check_duplicates=False, source=path
    )
    if tokenizer is not None:
        validate_requests(requests, tokenizer, max_tokens, check_duplicates=False, source=path)
    return requests


# --------------------------------------------------------------------------------------------
