"""Raw edit-request records: the dataset layouts, read field by field into `EditRequest` fields.

An edit request asks the model to complete `prompt.format(subject)` with `target_new` instead of
`target_true`. Requests come in several layouts, all read by `jaxedit.requests.parse_request`
(auto-detected):

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

`parse_record` reads one record and lists every problem it has (`Problem`); `jaxedit.requests`
builds the `EditRequest`, raises `RequestError` and adds the batch- and file-level checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

LAYOUTS = ("counterfact", "counterfact_flat", "zsre", "plain")
ZSRE_TARGETS = ("alt", "answers")

_FLAT_MARKERS = ("ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")
MISSING = object()  # a field that is absent or unusable (its problem is already recorded)


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


# --------------------------------------------------------------------------------------------
# Field readers


class _Fields:
    """Reads typed fields from one mapping, recording a Problem for each missing/ill-typed one."""

    def __init__(
        self,
        record: Mapping,
        index: int | None,
        case_id: Any,
        problems: list[Problem],
        prefix: str = "",
    ):
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
        """A string field; `MISSING` when absent or wrong (already reported if required)."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(key, "missing field", f"add {self.name(key)!r} (a string)")
            return MISSING
        value = self.record[key]
        if not isinstance(value, str):
            self.add(
                key,
                f"must be a string, got {type(value).__name__} {value!r:.60}",
                "write it as a JSON string",
            )
            return MISSING
        return value

    def target(self, key: str, required: bool = True) -> Any:
        """A target: a string or a ``{"str": ...}`` dict."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(
                    key, "missing field", f'add {self.name(key)!r} (a string or {{"str": ...}})'
                )
            return MISSING
        value = self.record[key]
        if isinstance(value, Mapping):
            if "str" not in value:
                self.add(
                    key,
                    f"target object has no 'str' key (keys {sorted(value)})",
                    'write the target as a string or {"str": "..."}',
                )
                return MISSING
            value = value["str"]
        if not isinstance(value, str):
            self.add(
                key,
                f"target must be a string, got {type(value).__name__} {value!r:.60}",
                'write the target as a string or {"str": "..."}',
            )
            return MISSING
        return value

    def texts(self, key: str) -> Any:
        """An optional list of strings (a single string counts as a one-element list)."""
        if key not in self.record or self.record[key] is None:
            return ()
        value = self.record[key]
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            self.add(
                key,
                f"must be a list of strings, got {type(value).__name__}",
                "write it as a JSON list of strings",
            )
            return MISSING
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            self.add(key, f"items {bad[:5]} are not strings", "make every item a JSON string")
            return MISSING
        return tuple(value)

    def answers(self, key: str, required: bool) -> Any:
        """A non-empty list of answer strings (zsRE `answers`); `MISSING` when absent/bad."""
        if key not in self.record or self.record[key] is None:
            if required:
                self.add(key, "missing field", f"add {self.name(key)!r} (a list of strings)")
            return MISSING
        value = self.texts(key)
        if value is MISSING:
            return MISSING
        if not value:
            self.add(key, "empty answer list", "give at least one answer")
            return MISSING
        return value


def _case_id(record: Mapping, index: int | None, problems: list[Problem]) -> Any:
    if "case_id" not in record or record["case_id"] is None:
        return index
    value = record["case_id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        problems.append(
            Problem(
                index,
                None,
                "case_id",
                f"must be an int or a string, got {type(value).__name__} {value!r:.60}",
                "use an integer or string id, or drop the field to use the position",
            )
        )
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


def prompt_template(
    prompt: Any, subject: Any, field: str, index: int | None, case_id: Any, problems: list[Problem]
) -> Any:
    """A ``{}`` template from a prompt that holds ``{}`` or the subject written out."""
    if prompt is MISSING:
        return MISSING
    n = prompt.count("{}")
    if n == 0:
        if subject is MISSING:
            return MISSING
        if not subject.strip() or subject not in prompt:
            if subject.strip():
                problems.append(
                    Problem(
                        index,
                        case_id,
                        field,
                        f"subject {subject!r} does not occur in prompt {prompt!r} and the prompt "
                        "has no '{}'",
                        "write the subject exactly as it appears in the prompt, or put '{}' where "
                        "it goes",
                    )
                )
            return MISSING
        template = prompt.replace(subject, "{}", 1)
    elif n > 1:
        problems.append(
            Problem(
                index,
                case_id,
                field,
                f"prompt {prompt!r} has {n} '{{}}' placeholders",
                "keep exactly one '{}', where the subject goes",
            )
        )
        return MISSING
    else:
        template = prompt
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        problems.append(
            Problem(
                index,
                case_id,
                field,
                f"prompt {prompt!r} has a brace other than the one '{{}}' "
                "(str.format would fail on it)",
                "remove the other '{' and '}' characters from the prompt",
            )
        )
        return MISSING
    return template


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def content_problems(
    values: Mapping[str, Any],
    names: Mapping[str, str],
    index: int | None,
    case_id: Any,
    problems: list[Problem],
) -> None:
    """Empty subject/targets and target_new == target_true; `MISSING` values are skipped."""

    def add(key: str, message: str, fix: str) -> None:
        problems.append(Problem(index, case_id, names.get(key, key), message, fix))

    for key, what in (
        ("subject", "subject"),
        ("target_new", "new target"),
        ("target_true", "true target"),
    ):
        value = values.get(key, MISSING)
        if isinstance(value, str) and not value.strip():
            add(
                key,
                f"the {what} is empty or whitespace-only ({value!r})",
                f"give a non-empty {what}" + (" or leave it out" if key == "target_true" else ""),
            )
    new, true = values.get("target_new", MISSING), values.get("target_true", MISSING)
    if isinstance(new, str) and isinstance(true, str) and new.strip() and _norm(new) == _norm(true):
        add(
            "target_new",
            f"target_new {new!r} equals target_true {true!r} (ignoring case and "
            "whitespace), so there is nothing to edit",
            "choose a different new target or drop the record",
        )


# --------------------------------------------------------------------------------------------
# Parsing


def parse_record(
    record: Any, index: int | None, zsre_target: str
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Reads one raw record of any layout (auto-detected) into `EditRequest` keyword arguments.

    Args:
      record: the raw JSON object.
      index: the record's position (messages; the case_id of records that have none).
      zsre_target: "alt" or "answers" (see `jaxedit.requests.parse_request`).

    Returns:
      `(fields, problems)`: the `EditRequest` fields (None when any problem was found) and every
      problem of the record.

    Raises:
      ValueError: a zsRE record and `zsre_target` not in `ZSRE_TARGETS`.
    """
    problems: list[Problem] = []
    if not isinstance(record, Mapping):
        problems.append(
            Problem(
                index,
                None,
                "<record>",
                f"expected a JSON object, got {type(record).__name__}",
                "write each request as a JSON object",
            )
        )
        return None, problems
    case_id = _case_id(record, index, problems)
    layout = detect_layout(record)
    if layout is None:
        problems.append(
            Problem(
                index,
                case_id,
                "<record>",
                f"unknown request layout (keys {sorted(record)})",
                "use a CounterFact record ('requested_rewrite'), a flattened CounterFact record "
                "('prompt', 'subject', 'target_new', 'ground_truth', ...), a zsRE record "
                "('subject', 'src', 'alt', ...) or {'prompt', 'subject', 'target_new'}",
            )
        )
        return None, problems

    top = _Fields(record, index, case_id, problems)
    names: dict[str, str] = {}
    neighborhood_target: Any = None
    if layout == "counterfact":
        rr = record["requested_rewrite"]
        if not isinstance(rr, Mapping):
            problems.append(
                Problem(
                    index,
                    case_id,
                    "requested_rewrite",
                    f"must be an object, got {type(rr).__name__}",
                    "write requested_rewrite as {'prompt', 'subject', 'target_new', 'target_true'}",
                )
            )
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
        if neighborhood_target is MISSING and "locality_ground_truth" not in record:
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
            target_true = (
                pred if pred is not MISSING else (answers[0] if answers is not MISSING else MISSING)
            )
            names = {
                "target_new": "alt",
                "target_true": "pred" if pred is not MISSING else "answers",
            }
        else:
            target_new = answers[0] if answers is not MISSING else MISSING
            target_true = MISSING
            names = {"target_new": "answers"}
        paraphrase = top.texts("rephrase")
        loc = top.text("loc", required=False)
        neighborhood = () if loc is MISSING else (zsre_neighborhood_prompt(loc),)
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
    template = prompt_template(prompt, subject, names["prompt"], index, case_id, problems)
    content_problems(
        {"subject": subject, "target_new": target_new, "target_true": target_true},
        names,
        index,
        case_id,
        problems,
    )
    if problems:
        return None, problems
    fields = {
        "case_id": case_id,
        "prompt": template,
        "subject": subject,
        "target_new": target_new,
        "target_true": None if target_true is MISSING else target_true,
        "paraphrase_prompts": paraphrase,
        "neighborhood_prompts": neighborhood,
        "neighborhood_target": None if neighborhood_target is MISSING else neighborhood_target,
        "generation_prompts": generation,
        "layout": layout,
    }
    return fields, problems


def zsre_neighborhood_prompt(loc: str) -> str:
    """The neighbourhood prompt of a zsRE record (reference §6.1, ENC `MENDQADataset`).

    Args:
      loc: the record's `loc`, e.g. ``"nq question: who sang tequila"``.

    Returns:
      `loc` without its leading ``"nq question:"``, stripped, plus ``"?"``.
    """
    text = loc.strip()
    if text.startswith("nq question:"):
        text = text[len("nq question:") :]
    return text.strip() + "?"
