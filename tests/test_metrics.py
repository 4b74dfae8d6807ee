"""Editing metrics on hand-built cases whose answers are known, and scoring against a direct
pass."""

from __future__ import annotations

import numpy as np
import pytest

from jaxedit import entropy, metrics, testing, wordtok


def _p(new, true, new_acc=0.0, true_acc=0.0):
    return {"target_new": new, "target_true": true, "new_acc": new_acc, "true_acc": true_acc}


def test_summary_on_known_records():
    records = [
        {
            "rewrite": [_p(1.0, 2.0, 1.0)],
            "paraphrase": [_p(1.0, 2.0), _p(3.0, 2.0)],
            "neighborhood": [_p(2.0, 1.0, 0.0, 1.0), _p(1.0, 2.0)],
        },
        {
            "rewrite": [_p(3.0, 2.0)],
            "paraphrase": [_p(3.0, 2.0), _p(3.0, 2.0)],
            "neighborhood": [_p(2.0, 1.0, 0.0, 1.0), _p(2.0, 1.0)],
        },
    ]
    s = metrics.summarize_counterfact(records)
    assert s["ES"] == 50.0  # record 1 wins, record 2 loses
    assert s["PS"] == 25.0  # (1/2 + 0/2) / 2
    assert s["NS"] == 75.0  # (1/2 + 2/2) / 2
    assert s["ES_acc"] == 50.0 and s["NS_acc"] == 50.0 and s["PS_acc"] == 0.0
    e = np.exp
    es_diff = ((e(-1) - e(-2)) + (e(-3) - e(-2))) / 2
    assert s["ES_diff"] == pytest.approx(100 * es_diff)
    ns_diff = (((e(-1) - e(-2)) + (e(-2) - e(-1))) / 2 + (e(-1) - e(-2))) / 2
    assert s["NS_diff"] == pytest.approx(100 * ns_diff)
    assert s["S"] == pytest.approx(3 / (1 / 50 + 1 / 25 + 1 / 75))


def test_hmean_edge_cases():
    assert metrics.hmean([50.0, 50.0, 50.0]) == pytest.approx(50.0)
    assert metrics.hmean([0.0, 90.0, 90.0]) == 0.0


def test_answer_nll_matches_direct_teacher_forcing():
    """answer_nll on a tiny model equals log-softmax read off a plain forward pass."""

    class Tok:
        def __call__(self, text):
            return {"input_ids": [ord(c) % 61 for c in text]}

    # 3 blocks, 61 token ids, not sharpened; Tok has no vocabulary size: it is attached afterwards
    lm = testing.tiny_model("gpt2", num_layers=3, sharpened=False).replace(tokenizer=Tok())
    pairs = [("abc", "de"), ("hello there", "x"), ("q", "long answer")]
    nll, n, acc = metrics.answer_nll(lm, pairs, return_lengths=True, return_accuracy=True)
    for (prompt, answer), got, k, a in zip(pairs, nll, n, acc):
        ids = Tok()(f"{prompt} {answer}")["input_ids"]
        logits = np.asarray(lm.module(np.asarray([ids], np.int32)).logits[0], np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        start = len(prompt)
        toks = ids[start:]
        assert k == len(toks)
        want = -np.mean([logp[start - 1 + m, t] for m, t in enumerate(toks)])
        assert got == pytest.approx(want, abs=1e-4)
        top = np.mean([np.argmax(logits[start - 1 + m]) == t for m, t in enumerate(toks)])
        assert a == pytest.approx(top)


# --------------------------------------------------------------------------------------------------
# Generation Entropy

from math import log2  # noqa: E402

from jaxedit.requests import EditRequest  # noqa: E402

H_ABAB = -(2 / 3 * log2(2 / 3) + 1 / 3 * log2(1 / 3))  # bigrams ab, ba, ab


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("a b a b", ["a", "b", "a", "b"]),
        # a period is split off only at the end of a sentence; sentences end at . ? ! + space
        ("He went home. She left.", ["He", "went", "home", ".", "She", "left", "."]),
        ("Is it? yes!", ["Is", "it", "?", "yes", "!"]),
        (
            "Good muffins cost $3.88 in New York.",
            ["Good", "muffins", "cost", "$", "3.88", "in", "New", "York", "."],
        ),
        # abbreviations, initials and numbers followed by a lower-case word do not end a sentence
        (
            "Mr. Smith met J. Doe in the U.S. on May 3. they talked.",
            [
                "Mr.",
                "Smith",
                "met",
                "J.",
                "Doe",
                "in",
                "the",
                "U.S.",
                "on",
                "May",
                "3.",
                "they",
                "talked",
                ".",
            ],
        ),
        (
            "It was founded in 1990. The company grew.",
            ["It", "was", "founded", "in", "1990", ".", "The", "company", "grew", "."],
        ),
        # quotes, contractions, brackets, dashes, commas and colons
        (
            'He said "I can\'t go." Then (at 5:30) he left -- fast, too',
            [
                "He",
                "said",
                "``",
                "I",
                "ca",
                "n't",
                "go",
                ".",
                "''",
                "Then",
                "(",
                "at",
                "5:30",
                ")",
                "he",
                "left",
                "--",
                "fast",
                ",",
                "too",
            ],
        ),
        (
            "They're gonna win 1,000 games...",
            ["They", "'re", "gon", "na", "win", "1,000", "games", "..."],
        ),
        ("", []),
    ],
)
def test_word_tokenize_known_tokens(text, tokens):
    assert wordtok.word_tokenize(text) == tokens


def test_split_sentences():
    assert wordtok.split_sentences("One. Two? Three! four.  ") == [
        "One.",
        "Two?",
        "Three!",
        "four.",
    ]
    assert wordtok.split_sentences('He said "no." Then he left.') == [
        'He said "no."',
        "Then he left.",
    ]
    assert wordtok.split_sentences("Dr. Smith and e.g. this. The end") == [
        "Dr. Smith and e.g. this.",
        "The end",
    ]
    assert wordtok.split_sentences("Wait... The end... and more") == [
        "Wait...",
        "The end... and more",
    ]


def test_treebank_rules_match_nltk_when_installed():
    """Token for token against nltk's own Treebank tokenizer (which needs no data) when nltk is
    there."""
    nltk_tok = pytest.importorskip("nltk.tokenize")
    ref = nltk_tok.NLTKWordTokenizer()
    cases = [
        'He said, "Don\'t!" -- and left (quickly) [twice] {ok} <x>.',
        "'Tis 'twas cannot gimme lemme",
        "Whaddya wanna do? I'd've gone; you'll see: 3,000 at 5:30...",
        "“Curly” ‘quotes’ «guill» 1–2—3",
        "a*b @home #tag 50% & $5 'quoted' ''double'' `back`",
        "She's here. They're there.",
    ]
    for s in cases:
        assert wordtok._treebank_tokenize(s) == ref.tokenize(s), s


@pytest.mark.parametrize(
    "text, h2, h3",
    [
        ("a b a b", H_ABAB, 1.0),  # trigrams aba, bab
        ("a a a a", 0.0, 0.0),
        ("x y", 0.0, 0.0),  # one bigram, no trigram
        ("x", 0.0, 0.0),
        ("", 0.0, 0.0),
        ("a b c d", log2(3), 1.0),
        ("Hello, world.", log2(3), 1.0),  # Hello , world .
        ("a b a b a", 1.0, H_ABAB),  # ab ba ab ba; aba bab aba
    ],
)
def test_text_ngram_entropy_known_values(text, h2, h3):
    want = (2 / 3 * h2 + 4 / 3 * h3) / 2
    assert entropy.text_ngram_entropy(text) == pytest.approx(want, abs=1e-12)
    assert entropy.text_ngram_entropy(wordtok.word_tokenize(text)) == pytest.approx(want, abs=1e-12)


def test_record_and_summary_entropy():
    e1 = entropy.text_ngram_entropy("a b a b")
    e2 = entropy.text_ngram_entropy("a b c d")
    assert entropy.ngram_entropy(["a b a b", "a b c d"]) == pytest.approx((e1 + e2) / 2)
    assert entropy.ngram_entropy("a b a b") == pytest.approx(e1)
    assert np.isnan(entropy.ngram_entropy([]))
    g = entropy.generation_entropy([["a b a b", "a b c d"], [], ["a b c d"]])
    assert g["num_records"] == 2 and g["per_record"][1] is None
    assert g["GE"] == pytest.approx(100 * ((e1 + e2) / 2 + e2) / 2)
    assert np.isnan(entropy.generation_entropy([[], []])["GE"])


def test_summary_with_generation_entropy():
    base = {"rewrite": [_p(1.0, 2.0)], "paraphrase": [_p(1.0, 2.0)], "neighborhood": [_p(2.0, 1.0)]}
    s = metrics.summarize_counterfact([base, base])
    assert "GE" not in s
    s = metrics.summarize_counterfact(
        [{**base, "ge": 6.0}, {**base, "ge": None}, {**base, "ge": 5.0}]
    )
    assert s["GE"] == pytest.approx(550.0) and s["GE_records"] == 2
    assert s["S"] == pytest.approx(100.0)  # S stays hmean(ES, PS, NS)


def _req(case_id, subject, generation=()):
    return EditRequest(
        case_id=case_id,
        prompt="{} is in",
        subject=subject,
        target_new="Paris",
        target_true="Rome",
        generation_prompts=generation,
    )


def test_generation_prompts_from_pool(tmp_path):
    import json

    pool = [
        "Sue Lyons is known for",
        "Lyon's twin city is",
        "The Lyon museum",
        "Lyon's twin city is",
        "lyon in lower case",
        "Olympique Lyon plays",
        "Danielle Darrieux speaks",
        "Lyonnais food",
        "Where is Lyon?",
        "Danielle Darrieuxs",
        "Darrieux, Danielle",
    ]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(pool))
    qna = [
        {"case_index": 0, "subject": "Lyon", "qna_question": "Where is Lyon?!"},
        {"case_index": 1, "subject": "someone else", "qna_question": "never"},
    ]
    (tmp_path / "counterfact_qna.json").write_text(json.dumps(qna))
    reqs = [
        _req(0, "Lyon"),
        _req(1, "Danielle Darrieux"),
        _req(2, "Nobody"),
        _req(3, "Lyon", generation=("own prompt about Lyon",)),
    ]
    got = entropy.generation_prompts_for(reqs, path)
    assert got[0] == [
        "Lyon's twin city is",
        "The Lyon museum",
        "Olympique Lyon plays",
        "Where is Lyon?",
    ]
    assert got[1] == ["Danielle Darrieux speaks"]
    assert got[2] == []
    assert got[3] == ["own prompt about Lyon"]  # the record's own prompts come first, alone
    assert entropy.generation_prompts_for(reqs[:1], path, max_per_record=2)[0] == [
        "Lyon's twin city is",
        "The Lyon museum",
    ]
    with_qna = entropy.generation_prompts_for(reqs, path, max_per_record=1, append_qna=True)
    assert with_qna[0] == ["Lyon's twin city is", "Where is Lyon?!"]
    assert with_qna[1] == ["Danielle Darrieux speaks"]  # case 1's entry is about another subject
    assert entropy.generation_prompts_for(reqs, None) == [[], [], [], ["own prompt about Lyon"]]


class _CharTok:
    """58 characters on ids 3..60 (0 pad, 1 bos, 2 eos): a tokenizer for the 61-token tiny
    models."""

    chars = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,'!?"
    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + self.chars.index(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(
            self.chars[i - 3] if i >= 3 else ("" if skip_special_tokens else "<s>") for i in ids
        )


def _tiny_lm(tokenizer=None, **overrides):
    """A 3-block unsharpened tiny Llama; without a tokenizer, 61 token ids read by `_CharTok`."""
    lm = testing.tiny_model("llama", tokenizer, num_layers=3, sharpened=False, **overrides)
    return lm if tokenizer is not None else lm.replace(tokenizer=_CharTok())


def test_generation_is_seeded_and_bounded():
    lm = _tiny_lm()
    # one compiled shape throughout: the shortest prompt sets max_new_tokens = 38, chunks of 2 whose
    # longest prompt has 11..25 tokens (one character per token) fill a 64-token buffer
    prompts = [
        "The Lyon museum is",
        "Paris is a city",
        "Where is the city of Rome",
        "Hi",
        "Big cats eat",
    ]
    a = entropy.generate_texts(lm, prompts, seed=3, max_out_len=40, batch_size=2)
    b = entropy.generate_texts(lm, prompts, seed=3, max_out_len=40, batch_size=2)
    c = entropy.generate_texts(lm, prompts, seed=4, max_out_len=40, batch_size=2)
    assert a == b
    assert a != c
    for p, t in zip(prompts, a):
        assert t.startswith(p) and len(t) <= 40  # one character per token: 40 tokens in all
    assert max(len(t) for t in a) > max(len(p) for p in prompts)  # it did generate
    reqs = [
        _req(0, "Lyon", ("The Lyon museum is", "Hi")),
        _req(1, "Nobody"),
        _req(2, "Rome", ("Rome is a big city",)),
    ]
    kw = dict(seed=0, max_out_len=40, batch_size=2)
    g1 = entropy.counterfact_generation_entropy(lm, reqs, **kw, return_texts=True)
    g2 = entropy.counterfact_generation_entropy(lm, reqs, **kw)
    assert g1["GE"] == g2["GE"] and g1["num_records"] == 2 and g1["per_record"][1] is None
    assert g1["texts"][1] == [] and len(g1["texts"][0]) == 2
    want = 100 * np.mean(
        [entropy.ngram_entropy(g1["texts"][0]), entropy.ngram_entropy(g1["texts"][2])]
    )
    assert g1["GE"] == pytest.approx(want)


def test_counterfact_scores_with_generation():
    lm = _tiny_lm()
    reqs = [_req(0, "Lyon", ("The Lyon museum is",)), _req(1, "Nobody")]
    plain = metrics.counterfact_scores(lm, reqs)
    assert "GE" not in plain["scores"] and "generation" not in plain["records"]
    res = metrics.counterfact_scores(lm, reqs, generation=True, seed=1, max_out_len=40)
    assert res["scores"]["GE_records"] == 1
    assert res["scores"]["GE"] == pytest.approx(100 * res["records"]["generation"][0]["entropy"])
    assert res["records"]["generation"][1] == {"entropy": None, "prompts": [], "texts": []}
    for k in ("ES", "PS", "NS", "S"):
        np.testing.assert_equal(res["scores"][k], plain["scores"][k])


def test_generation_with_gpt2_tokenizer_cuts_to_total_length():
    """The real GPT-2 BPE: the prompt is kept verbatim and the text has at most max_out_len
    tokens."""
    tok = testing.gpt2_tokenizer(testing.require_shared("data", "gpt2_tokenizer"))
    lm = _tiny_lm(
        tok, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    prompts = ["Danielle Darrieux's mother tongue is", "Lyon is a"]
    texts = entropy.generate_texts(lm, prompts, seed=0, max_out_len=24)
    for p, t in zip(prompts, texts):
        assert t.startswith(p)
        assert len(tok(t)["input_ids"]) <= 24


def test_summarize_zsre_means_of_record_means():
    per = {
        "rewrite": [[1.0], [0.5]],
        "paraphrase": [[0.0], [1.0]],
        "neighborhood": [[1.0, 0.0], []],
    }
    scores = metrics.summarize_zsre(per)
    assert scores == {"efficacy": 75.0, "generalization": 50.0, "specificity": 50.0}
