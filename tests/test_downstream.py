"""Downstream few-shot evaluation: prompt formats (both quirk modes), parse rules, label mappings,
sklearn-equivalent metrics on hand-computed cases, few-shot dropping, and end-to-end runs on a tiny
random model (shared-context fast path against generate + answer_nll) and on SmolLM2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxedit import downstream as ds
from jaxedit.testing import require_shared, tiny_model

# --------------------------------------------------------------------------------------------------
# metrics


def test_f1_weighted_hand_computed():
    # class 0: tp 2, fp 1, fn 0 -> 4/5; class 1: tp 1, fp 0, fn 1 -> 2/3; supports 2 and 2
    assert ds.f1_weighted([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx((2 * 0.8 + 2 * 2 / 3) / 4)
    assert ds.f1_weighted([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
    assert ds.f1_weighted([0, 1], [1, 0]) == 0.0


def test_f1_weighted_counts_invalid_as_errors():
    # -1 joins the label set with zero support: classes 0 and 1 each tp 1, fn 1 -> 2/3
    assert ds.f1_weighted([1, 1, 0, 0], [1, -1, 0, -1]) == pytest.approx(2 / 3)
    assert ds.f1_weighted([1, 1, 0, 0], [-1, -1, -1, -1]) == 0.0
    # 4-way: class 0 2/3 (support 2), class 1 1/2 (2), class 2 2/3 (1), class 3 0 (1)
    y, p = [0, 1, 2, 3, 0, 1], [0, 2, 2, -1, 1, 1]
    assert ds.f1_weighted(y, p) == pytest.approx((2 * 2 / 3 + 2 * 0.5 + 2 / 3) / 6)


def test_matthews_hand_computed():
    # tp 1, fn 1, tn 2, fp 0
    assert ds.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))
    assert ds.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert ds.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert ds.matthews_corrcoef([1, 0, 1, 0], [1, 1, 1, 1]) == 0.0  # constant prediction
    assert ds.matthews_corrcoef([1, 0], [-1, -1]) == 0.0
    # with invalid predictions, sklearn's multiclass form over labels {-1, 0, 1}:
    # t = [0, 2, 2], p = [2, 1, 1], c = 2, s = 4 -> (8 - 4) / sqrt((16 - 8)(16 - 6))
    assert ds.matthews_corrcoef([1, 1, 0, 0], [1, -1, 0, -1]) == pytest.approx(4 / math.sqrt(80))


def test_score_predictions_counts():
    r = ds.score_predictions([1, 1, 0, 0, 1], [1, -1, 0, 1, -1], [1, 0, 0, 0, 1])
    assert (r["correct"], r["incorrect"], r["invalid"], r["total"]) == (2, 1, 2, 5)
    assert r["correct_new"] == 4
    assert r["f1_new"] == pytest.approx(ds.f1_weighted([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]))


# --------------------------------------------------------------------------------------------------
# registry, prompts, labels

SST = {"sentence": "a fine film", "label": 1}
MRPC = {"sentence1": "A b.", "sentence2": "A c.", "label": 0}
COLA = {"sentence": "He left.", "label": 1}
RTE = {"sentence1": "P holds.", "sentence2": "Q holds.", "label": 1}  # GLUE 1 = not_entailment
NLI = {"sentence1": "P.", "sentence2": "Q.", "label": "entailment"}
MMLU = {"question": "2+2?", "choices": "['3', '4', \"5'\", '6']", "answer": 1}
SENT = {"sentence": "great .", "label": "1"}
DIAL = {"article": "m : hi .", "options": '["f : a", "f : b", "f : c", "f : d"]', "answers": "C"}

QUESTIONS = {  # (task, item): (clean question, reference question, few-shot string)
    "sst2": (
        SST,
        "Review : a fine film\nSentiment :",
        "Review :a fine film\nSentiment :",
        "Review : a fine film\nSentiment : positive\n",
    ),
    "mrpc": (
        MRPC,
        "Are the sentences paraphrases of each other.\nSentence 1: A b.\nSentence 2: A c.\nAnswer:",
        None,
        "Are the sentences paraphrases of each other.\nSentence 1: A b.\n"
        "Sentence 2: A c.\nAnswer: No\n",
    ),
    "cola": (
        COLA,
        "Is this sentence linguistically acceptable?\nSentence: He left.\nAnswer:",
        "Is this sentence linguistically acceptable?\nSentence: He left.\nAnswer: ",
        "Is this sentence linguistically acceptable?\nSentence: He left.\nAnswer: Yes\n",
    ),
    "rte": (
        RTE,
        "P holds.\nquestion: Q holds. True or False?\nanswer:",
        None,
        None,
    ),  # few-shot depends on the mode, see test_rte_label_semantics
    "nli": (
        NLI,
        "P. entails the Q. True or False? Answer:",
        None,
        "P. entails the Q. True or False? Answer: True\n",
    ),
    "mmlu": (
        MMLU,
        "Question: 2+2?\n(A) 3\n(B) 4\n(C) 5'\n(D) 6\nAnswer:",
        None,
        "Question: 2+2?\n(A) 3\n(B) 4\n(C) 5'\n(D) 6\nAnswer: B\n",
    ),
    "sentiment_analysis": (
        SENT,
        "For each snippet of text,label the sentiment of the text as positive or negative.The "
        "answer should be exact 'positive' or 'negative'. text: great . answer:",
        None,
        "For each snippet of text,label the sentiment of the text as positive or negative.The "
        "answer should be exact 'positive' or 'negative'. text: great . answer: positive\n",
    ),
    "dialogue": (
        DIAL,
        "Q: Given the following: m : hi .\nWhich choice is correct?\n(A)f : a\n"
        "(B)f : b\n(C)f : c\n(D)f : d\nAnswer:",
        None,
        "Q: Given the following: m : hi .\nWhich choice is correct?\n(A)f : a\n(B)f : b\n"
        "(C)f : c\n(D)f : d\nAnswer: C\n\n",
    ),
}


@pytest.mark.parametrize("name", list(QUESTIONS))
def test_prompt_formats_exact(name):
    item, clean, reference, shot = QUESTIONS[name]
    task = ds.TASKS[name]
    assert task.question(item, "clean") == clean
    assert task.question(item, "reference") == (reference or clean)
    if shot is not None:
        assert task.few_shot(item, "clean") == shot
        assert task.few_shot(item, "reference") == shot


def test_full_prompt_concatenates_few_shots_then_question():
    other = {"sentence": "dull", "label": 0}
    for quirks, sep in (("clean", " "), ("reference", "")):
        (p,) = ds.build_prompts(ds.TASKS["sst2"], [SST, other], [other], quirks=quirks)
        context = (
            "Review : a fine film\nSentiment : positive\nReview : dull\nSentiment : negative\n"
        )
        assert p.text == context + f"Review :{sep}dull\nSentiment :"
        assert p.context == context
        assert (p.label, p.num_shots) == (0, 2)


def test_rte_label_semantics():
    rte = ds.TASKS["rte"]
    not_entailed = RTE
    entailed = dict(RTE, label=0)
    # reference: True = GLUE label 1 (not_entailment); clean: True = entailment. Class 1 = "True".
    assert rte.label(not_entailed, "reference") == 1 and rte.label(entailed, "reference") == 0
    assert rte.label(not_entailed, "clean") == 0 and rte.label(entailed, "clean") == 1
    assert rte.few_shot(not_entailed, "reference").endswith("answer: True\n")
    assert rte.few_shot(not_entailed, "clean").endswith("answer: False\n")
    assert rte.few_shot(entailed, "clean").endswith("answer: True\n")


def test_label_mappings():
    assert ds.TASKS["nli"].label(NLI, "clean") == 1
    assert ds.TASKS["nli"].label(dict(NLI, label="not_entailment"), "clean") == 0
    assert ds.TASKS["sentiment_analysis"].label(SENT, "clean") == 1
    assert ds.TASKS["sentiment_analysis"].label(dict(SENT, label="0"), "clean") == 0
    assert ds.TASKS["sst2"].label(dict(SST, label="0"), "clean") == 0
    mmlu = ds.TASKS["mmlu"]
    for answer, want in ((2, 2), ("3", 3), ("A", 0), ("d", 3)):
        assert mmlu.label(dict(MMLU, answer=answer), "clean") == want
    assert ds.TASKS["dialogue"].label(DIAL, "reference") == 2
    with pytest.raises(ValueError):
        ds.TASKS["sst2"].label(dict(SST, label=2), "clean")
    assert ds.TASKS["rte"].words == ("False", "True") and ds.TASKS["mrpc"].words == ("No", "Yes")
    assert ds.TASKS["sst2"].words == ("negative", "positive")
    assert ds.TASKS["mmlu"].words == ds.TASKS["dialogue"].words == tuple("ABCD")


def test_resolve_tasks():
    assert ds.resolve_tasks("sst,mrpc") == ["sst2", "mrpc"]
    assert ds.resolve_tasks(["SST2", "mmmlu", "sentiment", "dia", "sst2"]) == [
        "sst2",
        "mmlu",
        "sentiment_analysis",
        "dialogue",
    ]
    assert ds.resolve_tasks("nli") == ["nli"]  # exact name wins
    with pytest.raises(ValueError, match="'glue9' is not a known task; valid names: sst2, mrpc"):
        ds.resolve_tasks("sst2,glue9")
    with pytest.raises(ValueError, match="ambiguous"):
        ds.resolve_tasks("a")
    with pytest.raises(ValueError, match="quirks"):
        ds.TASKS["sst2"].question(SST, "sloppy")


# --------------------------------------------------------------------------------------------------
# parsing


def test_binary_parse_rules():
    cola, rte, nli = ds.TASKS["cola"], ds.TASKS["rte"], ds.TASKS["nli"]
    prompt = cola.question(COLA, "reference")
    # reference: 'yes' is checked before 'no' whatever the order; 'no' matches inside "not"
    assert cola.parse(" No, yes", "reference", prompt) == 1
    assert cola.parse(" No, yes", "clean", prompt) == 0
    assert cola.parse(" not sure", "reference", prompt) == 0
    assert cola.parse(" not sure", "clean", prompt) == -1
    assert cola.parse(" YES\n", "clean", prompt) == 1
    # RTE checks false first, NLI true first
    assert rte.parse(" True or false", "reference", "x answer:") == 0
    assert rte.parse(" True or false", "clean") == 1
    assert nli.parse(" False. True", "reference", "x True or False? Answer:") == 1
    assert nli.parse(" False. True", "clean") == 0
    assert nli.parse(" maybe", "reference", "x True or False? Answer:") == -1


def test_reference_parse_reads_after_the_last_cue():
    sst = ds.TASKS["sst2"]
    prompt = "Review : a\nSentiment : positive\nReview :b\nSentiment :"
    assert sst.parse(" negative\n", "reference", prompt) == 0  # not the few-shot's "positive"
    assert sst.parse(" positively", "reference", prompt) == 1  # substring
    assert sst.parse(" positively", "clean", prompt) == -1  # whole words only


def test_letter_parse_rules():
    for task in (ds.TASKS["mmlu"], ds.TASKS["dialogue"]):
        assert task.parse(" B\n", "reference") == 1
        assert task.parse(" b\nQ", "reference") == 1
        assert task.parse(" data\n", "reference") == 0  # the 'a\n' substring
        assert task.parse(" B", "reference") == -1  # no newline inside gen_len tokens
        assert task.parse(" C\nB\n", "reference") == 1  # 'b\n' is checked before 'c\n'
        assert task.parse(" B", "clean") == 1
        assert task.parse(" (C) x", "clean") == 2
        assert task.parse(" D.\n", "clean") == 3
        assert task.parse(" data\n", "clean") == -1
        assert task.parse(" b\n", "clean") == -1
        assert task.parse(" Because", "clean") == -1


def test_likelihood_choice():
    sst, mmlu = ds.TASKS["sst2"], ds.TASKS["mmlu"]
    assert sst.likelihood_choice([2.0, 1.0]) == 1
    assert sst.likelihood_choice([1.0, 2.0]) == 0
    assert sst.likelihood_choice([1.0, 1.0]) == 0  # the reference: 1 only if strictly more likely
    assert mmlu.likelihood_choice([3.0, 0.5, 2.0, 1.0]) == 1
    assert mmlu.likelihood_choice([3.0, 0.5, 0.5, 1.0]) == -1  # no strict winner


# --------------------------------------------------------------------------------------------------
# few-shot dropping


class CharTok:
    """One token per character, plus a BOS id 1 at the start of every encoding."""

    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, text):
        if isinstance(text, (list, tuple)):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [1] + [3 + (ord(c) % 200) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3) for i in ids if i >= 3)


def test_few_shot_dropping_clean_vs_reference():
    sst = ds.TASKS["sst2"]
    shots = [{"sentence": "x" * 20, "label": i % 2} for i in range(4)]
    test = {"sentence": "y" * 10, "label": 1}
    shot_len = [len(sst.few_shot(s)) for s in shots]
    q_clean = len(sst.question(test, "clean"))
    gen = 3
    # clean: the whole prompt (one BOS) + gen_len must fit; three shots fit exactly
    ctx = 1 + sum(shot_len[:3]) + q_clean + gen
    (p,) = ds.build_prompts(sst, shots, [test], tokenizer=CharTok(), max_context=ctx, gen_len=gen)
    assert p.num_shots == 3 and len(p.ids) + gen == ctx
    (p,) = ds.build_prompts(
        sst, shots, [test], tokenizer=CharTok(), max_context=ctx - 1, gen_len=gen
    )
    assert p.num_shots == 2
    # reference: the question and each shot tokenized separately (one BOS each): 3 shots need 3 more
    q_ref = len(sst.question(test, "reference"))
    ctx_ref = (1 + q_ref) + sum(1 + n for n in shot_len[:3]) + gen
    (p,) = ds.build_prompts(
        sst,
        shots,
        [test],
        quirks="reference",
        tokenizer=CharTok(),
        max_context=ctx_ref,
        gen_len=gen,
    )
    assert p.num_shots == 3
    (p,) = ds.build_prompts(
        sst,
        shots,
        [test],
        quirks="reference",
        tokenizer=CharTok(),
        max_context=ctx_ref - 1,
        gen_len=gen,
    )
    assert p.num_shots == 2
    # nothing fits: no few-shots at all
    (p,) = ds.build_prompts(sst, shots, [test], tokenizer=CharTok(), max_context=q_clean + 4)
    assert p.num_shots == 0 and p.text == sst.question(test)


def test_dialogue_reference_keeps_a_margin_of_five():
    dia = ds.TASKS["dialogue"]
    shots = [DIAL, DIAL]
    q = len(dia.question(DIAL, "reference")) + 1
    s = len(dia.few_shot(DIAL)) + 1
    exact = q + 2 * s + 3
    kw = dict(quirks="reference", tokenizer=CharTok(), gen_len=3)
    assert ds.build_prompts(dia, shots, [DIAL], max_context=exact + 5, **kw)[0].num_shots == 2
    assert ds.build_prompts(dia, shots, [DIAL], max_context=exact + 4, **kw)[0].num_shots == 1
    # the other tasks stop only below zero
    sst = ds.TASKS["sst2"]
    q = len(sst.question(SST, "reference")) + 1
    exact = q + 2 * (len(sst.few_shot(SST)) + 1) + 3
    assert ds.build_prompts(sst, [SST, SST], [SST], max_context=exact, **kw)[0].num_shots == 2


# --------------------------------------------------------------------------------------------------
# data


def test_split_and_full_mmlu(tmp_path):
    items = [{"i": i} for i in range(15)]
    shots, tests = ds.split_items(items, 3, 4)
    assert [s["i"] for s in shots] == [0, 1, 2] and [t["i"] for t in tests] == [10, 11, 12, 13]
    assert len(ds.split_items(items, 0, None)[1]) == 5
    with pytest.raises(ValueError, match="5 test items"):
        ds.split_items(items, 4, 6)
    # an upper bound (the likelihood protocol's --downstream_tests): a smaller task uses all
    assert [t["i"] for t in ds.split_items(items, 4, 6, at_most=True)[1]] == list(range(10, 15))
    assert len(ds.split_items(items, 4, 2, at_most=True)[1]) == 2
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
    for subj, n in (("astro", 3), ("bio", 1)):
        dev = "\n".join(f'"{subj} dev {i}, with comma",a,b,c,d,{"ABCD"[i % 4]}' for i in range(5))
        (tmp_path / "dev" / f"{subj}_dev.csv").write_text(dev + "\n")
        test = "\n".join(f"{subj} q{i},a,b,c,d,C" for i in range(n))
        (tmp_path / "test" / f"{subj}_test.csv").write_text(test + "\n")
    shots, tests = ds.load_full_mmlu(tmp_path, 2, 3)
    assert [t["question"] for t in tests] == ["astro q0", "bio q0", "astro q1"]  # round-robin
    assert [s["question"] for s in shots[1]] == ["bio dev 0, with comma", "bio dev 1, with comma"]
    assert shots[0] is shots[2]
    assert len(ds.load_full_mmlu(tmp_path, 0, None)[1]) == 4
    prompts = ds.build_prompts(ds.TASKS["mmlu"], shots, tests)
    choices = "(A) a\n(B) b\n(C) c\n(D) d\n"
    assert prompts[1].text == (
        f"Question: bio dev 0, with comma\n{choices}Answer: A\n"
        f"Question: bio dev 1, with comma\n{choices}Answer: B\n"
        f"Question: bio q0\n{choices}Answer:"
    )
    assert [p.label for p in prompts] == [2, 2, 2]


# --------------------------------------------------------------------------------------------------
# end to end on a tiny random model


def _gpt2_tokenizer():
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(str(require_shared("data", "gpt2_tokenizer")))


def _tiny_lm(family, tokenizer, max_pos=160):
    """3 blocks, unsharpened, seed 3; vocabulary and BOS/EOS (50256) from the GPT-2 tokenizer."""
    return tiny_model(
        family, tokenizer, seed=3, num_layers=3, sharpened=False, max_position_embeddings=max_pos
    )


def _write_data(path):
    rng = np.random.default_rng(0)
    words = "the a film plot dull bright cat sat on mat quick brown fox".split()

    def sent(n):
        return " ".join(rng.choice(words, n))

    data = {
        "sst2": [{"sentence": sent(rng.integers(3, 9)), "label": i % 2} for i in range(22)],
        "dialogue": [
            {
                "article": sent(rng.integers(4, 10)),
                "options": [sent(3) for _ in range(4)],
                "answers": "ABCD"[i % 4],
            }
            for i in range(22)
        ],
        "mmlu": [
            {"question": sent(5), "choices": str([sent(2) for _ in range(4)]), "answer": i % 4}
            for i in range(22)
        ],
    }
    for name, items in data.items():
        (path / f"{name}.json").write_text(json.dumps(items))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("downstream"))


@pytest.mark.parametrize(
    "family,quirks,batch_size",
    [("llama", "clean", 5), pytest.param("gpt2", "reference", 12, marks=pytest.mark.slow)],
)  # suite time
def test_fast_path_equals_generate_and_answer_nll(family, quirks, batch_size, tiny_data):
    """The shared-context KV path gives the continuations of `generate` and the NLLs of `answer_nll`
    (dialogue's context ends in "\\n\\n", which tokenizes differently before "Q:", so the cached
    context is only partly reused there)."""
    lm = _tiny_lm(family, _gpt2_tokenizer())
    kw = dict(
        num_tests=12, num_few_shots=2, gen_len=3, quirks=quirks, batch_size=batch_size, details=True
    )
    fast = ds.evaluate_downstream(lm, "sst2,dialogue", tiny_data, fast=True, **kw)
    slow = ds.evaluate_downstream(lm, "sst2,dialogue", tiny_data, fast=False, **kw)
    for name in ("sst2", "dialogue"):
        f, s = fast[name], slow[name]
        got = {key: [r[key] for r in f["records"]] for key in ("continuation", "nll", "pred_new")}
        want = {key: [r[key] for r in s["records"]] for key in ("continuation", "nll", "pred_new")}
        assert got["continuation"] == want["continuation"]
        np.testing.assert_allclose(got["nll"], want["nll"], rtol=1e-4, atol=1e-4)
        assert got["pred_new"] == want["pred_new"]
        for key in ds.RESULT_KEYS:
            assert f[key] == pytest.approx(s[key]), key
        assert f["quirks"] == quirks and f["total"] == 12 and f["num_few_shots"] == 2
        assert f["correct"] + f["incorrect"] + f["invalid"] == 12
        assert 0.0 <= f["f1"] <= 1.0 and 0.0 <= f["f1_new"] <= 1.0 and -1.0 <= f["mcc"] <= 1.0


def test_dropping_unshared_contexts_and_multi_token_words(tiny_data):
    """A context too small for all shots, per-test few-shot lists (some contexts unshared), and
    answer words of several tokens (scored by answer_nll) give the same results on both paths."""
    lm = _tiny_lm("llama", _gpt2_tokenizer(), max_pos=96)
    res = ds.evaluate_task(
        lm, "mmlu", tiny_data, num_tests=6, num_few_shots=3, batch_size=4, details=True
    )
    assert res["few_shots_dropped"] > 0
    task = ds.Task(
        name="custom",
        words=("not at all", "absolutely yes"),
        stem=lambda it: f"Claim: {it['sentence']}\nVerdict:",
        label=lambda it, q: it["label"],
        cue="Verdict:",
        reference_order=(("absolutely", 1), ("not", 0)),
    )
    items = json.loads((tiny_data / "sst2.json").read_text())
    shots = [[items[j % 5]] for j in range(7)]  # two contexts shared by 2 tests, three by one
    prompts = ds.build_prompts(task, shots, items[10:17], tokenizer=lm.tokenizer, max_context=96)
    out = [ds.predict(lm, task, prompts, batch_size=3, fast=fast) for fast in (True, False)]
    assert out[0]["continuations"] == out[1]["continuations"]
    np.testing.assert_allclose(out[0]["nll"], out[1]["nll"], rtol=1e-4, atol=1e-4)
    assert np.isfinite(out[0]["nll"]).all()
    one = ds.predict(lm, task, prompts, batch_size=3, gen_len=1)  # prefill only, no decode loop
    assert all(a.startswith(b) for a, b in zip(out[0]["continuations"], one["continuations"]))
    np.testing.assert_allclose(one["nll"], out[0]["nll"], rtol=1e-6)


def test_shared_data_files_parse():
    root = require_shared("data", "downstream")
    for name, task in ds.TASKS.items():
        items = ds.load_items(name, root)
        shots, tests = ds.split_items(items, 4, 100)
        labels = [task.label(it, "clean") for it in tests]
        assert set(labels) == set(range(len(task.words))), name
        if len(task.words) == 2:
            assert sum(labels) == 50, name  # balanced
        assert all(task.few_shot(s) and task.question(t) for s in shots for t in tests[:3])


# --------------------------------------------------------------------------------------------------
# the real model


# ~35 s on a loaded 2-core CPU: loading SmolLM2 (20 s) and compiling its 30 layers
@pytest.mark.slow
def test_smollm2_two_tasks(smollm2):
    root = require_shared("data", "downstream")
    res = ds.evaluate_downstream(smollm2, "sst2,mmlu", root, num_tests=8, batch_size=8)
    assert set(res) == {"sst2", "mmlu"}
    for r in res.values():
        assert set(ds.RESULT_KEYS) <= set(r)
        assert r["total"] == 8 and r["correct"] + r["incorrect"] + r["invalid"] == 8
        assert 0.0 <= r["f1"] <= 1.0 and 0.0 <= r["f1_new"] <= 1.0 and -1.0 <= r["mcc"] <= 1.0
        assert r["few_shots_dropped"] == 0 and r["quirks"] == "clean"
    assert res["sst2"]["invalid"] == 0  # the 4 shots make it answer positive/negative
