"""Edit-request parsing and validation (`jaxedit.requests`): every layout, every error, real
data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxedit.prompts import subject_last_index, subject_token_mismatch, with_leading_space
from jaxedit.requests import (
    EditRequest,
    RequestError,
    detect_layout,
    load_requests,
    parse_request,
    parse_requests,
    validate_requests,
    zsre_neighborhood_prompt,
)
from jaxedit.testing import require_shared, smollm2_tokenizer

NESTED = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Where Danielle Darrieux is from, people speak"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jean Gabin spoke"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}
FLAT = {
    "case_id": 7,
    "prompt": "The mother tongue of Danielle Darrieux is",
    "subject": "Danielle Darrieux",
    "target_new": "English",
    "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak",
    "locality_prompt": "Michel Rocard is a native speaker of",
    "locality_ground_truth": "French",
}
ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniforms", "workwear"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}
PLAIN = {"prompt": "{} was born in", "subject": "Marie Curie", "target_new": "Paris"}


def plain(**changes) -> dict:
    return {**PLAIN, **changes}


def error_of(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def smol_tok():
    return smollm2_tokenizer()


# --- layouts ----------------------------------------------------------------------------------


def test_nested_counterfact():
    r = parse_request(NESTED, 3)
    assert r.layout == "counterfact" == detect_layout(NESTED)
    assert (r.case_id, r.prompt, r.subject, r.target_new, r.target_true) == (
        7,
        "The mother tongue of {} is",
        "Danielle Darrieux",
        "English",
        "French",
    )
    assert r.paraphrase_prompts == ("Where Danielle Darrieux is from, people speak",)
    assert r.neighborhood_prompts == ("Michel Rocard is a native speaker of", "Jean Gabin spoke")
    assert r.neighborhood_target == "French"
    assert r.generation_prompts == ("Danielle Darrieux's mother tongue is",)
    assert r.filled_prompt() == "The mother tongue of Danielle Darrieux is"


def test_flat_counterfact_matches_nested():
    r = parse_request(FLAT, 0)
    assert r.layout == "counterfact_flat"
    nested = parse_request(NESTED, 0)
    assert r == dataclasses.replace(
        nested, neighborhood_prompts=nested.neighborhood_prompts[:1], generation_prompts=()
    )


def test_flat_replaces_first_occurrence_only():
    r = parse_request({**FLAT, "prompt": "Paris fans say Paris is in", "subject": "Paris"}, 0)
    assert r.prompt == "{} fans say Paris is in"
    assert r.filled_prompt() == "Paris fans say Paris is in"


def test_flat_prompt_may_hold_placeholder_and_optional_fields():
    r = parse_request(
        {"prompt": "{} speaks", "subject": "Ann", "target_new": "Dutch", "ground_truth": "French"},
        4,
    )
    assert (r.prompt, r.case_id, r.target_true, r.neighborhood_target) == (
        "{} speaks",
        4,
        "French",
        "French",
    )
    assert r.paraphrase_prompts == () and r.neighborhood_prompts == ()


def test_zsre():
    r = parse_request(ZSRE, 12)
    assert r.layout == "zsre"
    assert r.case_id == 12
    assert r.prompt == "What is the product made by {}?"
    assert (r.target_new, r.target_true) == ("unmanned aircraft", "uniform")
    assert r.paraphrase_prompts == ("What will be the product of UniFirst?",)
    assert r.neighborhood_prompts == ("john goodman's character in the big lebowski?",)
    assert r.neighborhood_target == "Walter Sobchak"
    # target_true falls back to answers[0]; an explicit case_id wins over the position.
    r = parse_request({k: v for k, v in ZSRE.items() if k != "pred"} | {"case_id": "z1"}, 12)
    assert (r.target_true, r.case_id) == ("uniforms", "z1")
    # ENC/MEMIT MENDQADataset: edit towards answers[0].
    r = parse_request(ZSRE, 0, zsre_target="answers")
    assert (r.target_new, r.target_true) == ("uniforms", None)


def test_zsre_neighborhood_prompt_rule():
    assert zsre_neighborhood_prompt("nq question: who sang tequila ") == "who sang tequila?"
    assert zsre_neighborhood_prompt("nq question:where is x?") == "where is x??"  # as the reference
    assert zsre_neighborhood_prompt("who sang tequila") == "who sang tequila?"


def test_plain_and_round_trip():
    r = parse_request(plain(target_new={"str": "Paris"}, target_true="Warsaw"), 2)
    assert (r.layout, r.case_id, r.target_new, r.target_true) == ("plain", 2, "Paris", "Warsaw")
    r2 = parse_request(plain(prompt="Marie Curie was born in"), 2)
    assert r2.prompt == "{} was born in"
    full = parse_request(NESTED, 0)
    again = parse_request(json.loads(json.dumps(full.to_dict())), 0)
    assert again == full and again.layout == "plain"


def test_target_new_kept_as_given_and_leading_space_helper():
    r = parse_request(plain(target_new=" Paris"), 0)
    assert r.target_new == " Paris"
    assert with_leading_space("Paris") == " Paris" == with_leading_space(" Paris")


def test_lists_become_tuples():
    r = EditRequest(0, "{} is", "A", "B", paraphrase_prompts=["x"])
    assert r.paraphrase_prompts == ("x",)
    hash(r)


# --- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, field, words",
    [
        (
            {**NESTED, "requested_rewrite": {**NESTED["requested_rewrite"], "subject": None}},
            "requested_rewrite.subject",
            "missing field",
        ),
        ({k: v for k, v in FLAT.items() if k != "target_new"}, "target_new", "missing field"),
        ({k: v for k, v in ZSRE.items() if k != "alt"}, "alt", "missing field"),
        (plain(subject=5), "subject", "must be a string"),
        (plain(target_new={"id": "Q1"}), "target_new", "no 'str' key"),
        (plain(target_new=["Paris"]), "target_new", "must be a string"),
        ({**NESTED, "paraphrase_prompts": ["ok", 3]}, "paraphrase_prompts", "not strings"),
        ({**NESTED, "requested_rewrite": "x"}, "requested_rewrite", "must be an object"),
        ({**FLAT, "subject": "Danielle"[::-1]}, "prompt", "does not occur"),
        (plain(prompt="Mary Curie was born in"), "prompt", "does not occur"),
        (plain(prompt="{} and {} were born in"), "prompt", "2 '{}'"),
        (plain(prompt="{} was {born} in"), "prompt", "brace"),
        (plain(subject="   "), "subject", "empty or whitespace-only"),
        (plain(target_new=""), "target_new", "empty or whitespace-only"),
        (plain(target_true=" \t"), "target_true", "empty or whitespace-only"),
        (plain(target_new=" paris ", target_true="Paris"), "target_new", "equals target_true"),
        ({**FLAT, "target_new": "FRENCH"}, "target_new", "equals target_true"),
        ({**ZSRE, "alt": "Uniform"}, "alt", "equals target_true"),
        (plain(case_id=1.5), "case_id", "int or a string"),
        ({"text": "hello"}, "<record>", "unknown request layout"),
    ],
)
def test_record_errors_name_record_and_field(record, field, words):
    e = error_of(parse_request, record, 4)
    assert len(e.problems) == 1, str(e)
    p = e.problems[0]
    assert (p.index, p.field) == (4, field)
    assert words in p.message
    assert p.fix
    msg = str(e)
    assert "record 4" in msg and repr(field) in msg and "Fix:" in msg
    if field != "case_id":
        assert f"case_id {record.get('case_id', 4)!r}" in msg


def test_all_problems_of_a_record_are_reported():
    e = error_of(parse_request, {"prompt": "no subject here", "subject": "", "target_new": 3}, 0)
    assert {p.field for p in e.problems} == {"subject", "target_new"}


def test_non_mapping_record():
    e = error_of(parse_request, ["a", "b"], 9)
    assert e.problems[0].field == "<record>" and "record 9" in str(e)


def test_batch_with_one_bad_record_lists_it():
    records = [plain(subject=f"S{i}", prompt=f"{{}} number {i} is") for i in range(5)]
    records[3] = plain(subject="S3", prompt="{} {} is")
    e = error_of(parse_requests, records)
    assert [(p.index, p.case_id, p.field) for p in e.problems] == [(3, 3, "prompt")]
    assert "1 problem " in str(e) and "record 3 (case_id 3)" in str(e)


def test_every_problem_of_every_record_raised_once():
    records = [
        plain(subject="A", prompt="{} x"),
        plain(subject=""),
        plain(target_new="Paris", target_true="paris", subject="B", prompt="{} y"),
        17,
    ]
    e = error_of(parse_requests, records, 10, source="batch.json")
    assert [p.index for p in e.problems] == [11, 12, 13]
    assert "3 problems with edit requests in batch.json" in str(e)


def test_duplicates_in_a_batch():
    a = parse_request(plain(case_id=1), 0)
    b = parse_request(plain(case_id=2, target_new="Lyon"), 1)  # same prompt + subject
    c = parse_request(plain(case_id=1, subject="Pierre Curie"), 2)  # same case_id
    e = error_of(validate_requests, [a, b, c])
    got = [(p.index, p.field) for p in e.problems]
    assert got == [(1, "prompt"), (2, "case_id")]
    assert "as record 0 (case_id 1)" in e.problems[0].message
    assert "already used by record 0" in e.problems[1].message
    validate_requests([a, b], check_duplicates=False)  # same fact twice is a batch-level concern
    with pytest.raises(RequestError):
        validate_requests([a, c], check_duplicates=False)  # a repeated case_id never is fine
    e = error_of(parse_requests, [plain(case_id=1), plain(case_id=2, target_new="Lyon")])
    assert e.problems[0].index == 1


def test_validate_hand_built_requests():
    good = EditRequest(0, "{} is a", "Rome", "city", "town")
    validate_requests([good])
    bad = [
        EditRequest(1, "Rome is a", "Rome", "city"),
        EditRequest(2, "{} is a", "Rome ", "City", " city"),
        EditRequest(3, "{} is a", 4, "city"),
        "not a request",
    ]
    e = error_of(validate_requests, [good, *bad])
    assert [(p.index, p.field) for p in e.problems] == [
        (1, "prompt"),
        (2, "target_new"),
        (3, "subject"),
        (4, "<record>"),
    ]


def test_too_long_for_the_model(gpt2_tok):
    short = parse_request(plain(), 0)
    long = parse_request(plain(case_id=1, prompt="{} " + "very " * 30 + "long prompt"), 1)
    validate_requests([short, long], gpt2_tok, max_tokens=64)
    e = error_of(validate_requests, [short, long], gpt2_tok, max_tokens=12)
    assert [(p.index, p.field) for p in e.problems] == [(1, "prompt")]
    assert "more than the model's 12" in str(e)
    # The target counts, with the leading space the algorithms add.
    n = len(gpt2_tok(short.filled_prompt() + " Paris")["input_ids"])
    validate_requests([short], gpt2_tok, max_tokens=n)
    with pytest.raises(RequestError):
        validate_requests([short], gpt2_tok, max_tokens=n - 1)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        validate_requests([short], max_tokens=5)


# --- files --------------------------------------------------------------------------------------


def test_load_requests_formats(tmp_path):
    records = [plain(subject=f"S{i}", prompt=f"{{}} number {i} is") for i in range(4)]
    expect = parse_requests(records)
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.json").write_text(json.dumps({"meta": {"v": 1}, "requests": records}))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "d.json").write_text("\n".join(json.dumps(r) for r in records))  # JSONL content
    for name in ("a.json", "b.json", "c.jsonl", "d.json"):
        assert load_requests(tmp_path / name) == expect, name
    assert load_requests(tmp_path / "a.json", start=1, num=2) == expect[1:3]
    assert [r.case_id for r in load_requests(tmp_path / "a.json", start=2)] == [2, 3]


def test_load_requests_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([plain(), plain(prompt="Marie Curie was born in", subject="Nobody", case_id=5)])
    )
    e = error_of(load_requests, bad)
    assert str(bad) in str(e) and "record 1 (case_id 5)" in str(e)
    assert load_requests(bad, num=1)[0].subject == "Marie Curie"
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(plain()) + "\n{oops\n")
    e = error_of(load_requests, broken)
    assert str(broken) in str(e) and "line 2" in str(e)
    amb = tmp_path / "amb.json"
    amb.write_text(json.dumps({"x": [plain()], "y": [plain()]}))
    assert "cannot be told apart" in str(error_of(load_requests, amb))
    assert "start=5" in str(error_of(load_requests, bad, start=5))
    with pytest.raises(FileNotFoundError):
        load_requests(tmp_path / "missing.json")


def test_load_requests_rejects_repeated_case_ids_but_not_repeated_facts(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([plain(case_id=1), plain(case_id=2, target_new="Lyon")]))
    assert len(load_requests(path)) == 2
    path.write_text(json.dumps([plain(case_id=1), plain(case_id=1, subject="Pierre Curie")]))
    assert "already used" in str(error_of(load_requests, path))


# --- subject token index -----------------------------------------------------------------------


def test_subject_last_index_gpt2(gpt2_tok):
    template, subject = "The mother tongue of {} is", "Danielle Darrieux"
    full = gpt2_tok.encode(template.format(subject))
    idx = subject_last_index(gpt2_tok, template, subject)
    assert idx == len(gpt2_tok.encode("The mother tongue of Danielle Darrieux")) - 1
    assert gpt2_tok.decode(full[idx]) == gpt2_tok.decode(gpt2_tok.encode(" Darrieux")[-1])
    assert subject_last_index(gpt2_tok, "{} is a", "Paris") == 0
    assert subject_token_mismatch(gpt2_tok, template, subject) is None
    issue = subject_token_mismatch(gpt2_tok, "{}s are red", "Apple")
    assert issue is not None and "not a prefix" in issue
    with pytest.raises(ValueError, match="exactly one"):
        subject_last_index(gpt2_tok, "no placeholder", "x")
    with pytest.raises(ValueError, match="exactly one"):
        subject_token_mismatch(gpt2_tok, "{} {}", "x")


def test_subject_last_index_matches_golden(smol_tok):
    golden = require_shared("golden")
    meta = json.loads((golden / "meta.json").read_text())
    reqs = load_requests(golden / "requests.json")
    contexts = [c for group in meta["context_templates"] for c in group]
    assert len(contexts) == 6
    npz = np.load(golden / "MEMIT.npz")
    for b, batch in enumerate(meta["methods"]["MEMIT"]["batches"]):
        batch_reqs = reqs[10 * b : 10 * b + 10]
        assert [r.case_id for r in batch_reqs] == batch["case_ids"]
        for j, r in enumerate(batch_reqs):
            idxs = []
            for k, context in enumerate(contexts):
                template = context.format(r.prompt)
                assert template.format(r.subject) == batch["key_prompts"][6 * j + k]
                assert subject_token_mismatch(smol_tok, template, r.subject) is None
                idxs.append(subject_last_index(smol_tok, template, r.subject))
            assert idxs == batch["key_lookup_idxs"][6 * j : 6 * j + 6], (b, j)
            assert r.filled_prompt() == batch["zs_prompts"][j]
            assert subject_last_index(smol_tok, r.prompt, r.subject) == batch["zs_lookup_idxs"][j]
            kl = subject_last_index(smol_tok, "{} is a", r.subject)
            assert npz[f"b{b}_r{j}_lookup_idxs"].tolist() == [*idxs, kl], (b, j)


def test_validate_with_smollm2_tokenizer(smol_tok):
    reqs = load_requests(
        require_shared("golden", "requests.json"), tokenizer=smol_tok, max_tokens=8192
    )
    validate_requests(reqs[:10], smol_tok, max_tokens=8192)


# --- real data ----------------------------------------------------------------------------------


def test_real_counterfact_flat_and_golden_nested():
    flat = load_requests(require_shared("data", "counterfact", "counterfact-edit.json"), num=200)
    golden = load_requests(require_shared("golden", "requests.json"))
    assert len(flat) == 200 and len(golden) == 20
    validate_requests(flat)
    validate_requests(golden)
    assert {r.layout for r in flat} == {"counterfact_flat"}
    assert {r.layout for r in golden} == {"counterfact"}
    assert flat[0] == golden[0]  # every field (layout is not compared)
    core = (
        "case_id",
        "prompt",
        "subject",
        "target_new",
        "target_true",
        "paraphrase_prompts",
        "neighborhood_prompts",
        "neighborhood_target",
    )
    by_id = {r.case_id: r for r in flat}
    shared = [g for g in golden if g.case_id in by_id]
    assert len(shared) >= 9
    for g in shared:
        assert {k: getattr(g, k) for k in core} == {k: getattr(by_id[g.case_id], k) for k in core}


def test_real_counterfact_train_sample():
    reqs = load_requests(
        require_shared("data", "counterfact", "counterfact-train.json"), start=500, num=200
    )
    assert len(reqs) == 200 and reqs[0].prompt.count("{}") == 1


def test_real_zsre():
    path = require_shared("data", "zsre", "zsre_mend_train_800.json")
    # Two train records (534, 723) have an empty `alt`: rejected by name, everything else parses.
    e = error_of(load_requests, path)
    assert [(p.index, p.field) for p in e.problems] == [(534, "alt"), (723, "alt")]
    records = json.loads(path.read_text())
    good = parse_requests([r for i, r in enumerate(records) if i not in (534, 723)])
    assert len(good) == 798
    validate_requests(good)
    assert good[0].neighborhood_prompts == ("john goodman's character in the big lebowski?",)
    assert (good[0].target_new, good[0].target_true) == ("unmanned aircraft", "uniform")
    answers = load_requests(path, zsre_target="answers")
    assert len(answers) == 800 and answers[534].target_new == "female"
    assert [r.case_id for r in answers[:3]] == [0, 1, 2]


def test_subject_token_mismatch_is_logged(gpt2_tok, caplog):
    req = EditRequest(0, "{}s are red", "Apple", "green")
    with caplog.at_level("WARNING", logger="jaxedit.requests"):
        validate_requests([req], gpt2_tok)
    assert "not a prefix" in caplog.text and "record 0 (case_id 0)" in caplog.text
