"""Covariance text (`jaxedit.corpus`): readers, WikiText paragraphs against the golden samples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from jaxedit.corpus import (
    fixed_random_subset,
    is_wikitext_heading,
    read_documents,
    tokenize_documents,
    wikitext_detokenize,
    wikitext_paragraphs,
    wikitext_sample,
    write_text_corpus,
)
from jaxedit.testing import require_shared, smollm2_tokenizer

# --- readers ------------------------------------------------------------------------------------


def test_read_txt(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\n\n  first doc line 1\r\nline 2  \r\n\r\n\r\n   \nsecond\n \t\nthird\n")
    assert list(read_documents(path)) == ["first doc line 1\nline 2", "second", "third"]
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    assert list(read_documents(tmp_path / "empty.txt")) == []


def test_read_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": " a "}\n\n{"text": "b\\n\\nc", "id": 3}\n{"text": "  "}\n')
    assert list(read_documents(path)) == ["a", "b\n\nc"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_documents(bad))
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_documents(bad))


def test_read_folder_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "from b"}\n')
    (tmp_path / "a.txt").write_text("a1\n\na2\n")
    (tmp_path / "c.txt").write_text("c1\n")
    (tmp_path / "README.md").write_text("not a corpus file")
    (tmp_path / ".hidden.txt").write_text("hidden\n")
    assert list(read_documents(tmp_path)) == ["a1", "a2", "from b", "c1"]


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_documents(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        list(read_documents(tmp_path / "x.csv"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.txt or \.jsonl"):
        list(read_documents(empty))


def test_write_text_corpus_round_trip(tmp_path):
    docs = ["First paragraph.", "  Two lines\nin one document  ", "Third: (x) = 1 ."]
    path = tmp_path / "sub" / "corpus.txt"
    assert write_text_corpus(docs, path) == 3
    assert (
        path.read_text() == "First paragraph.\n\nTwo lines\nin one document\n\nThird: (x) = 1 .\n"
    )
    assert list(read_documents(path)) == [d.strip() for d in docs]


@pytest.mark.parametrize(
    "bad, words", [("a\n\nb", "blank line"), ("a\n  \nb", "blank line"), ("   ", "empty")]
)
def test_write_text_corpus_rejects_what_cannot_round_trip(tmp_path, bad, words):
    path = tmp_path / "c.txt"
    with pytest.raises(ValueError, match=f"document 1 .*{words}"):
        write_text_corpus(["ok", bad], path)
    assert not path.exists() and not list(tmp_path.iterdir())


# --- WikiText ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, text",
    [
        ("a guest @-@ starring role", "a guest-starring role"),
        ("1 @,@ 000 and 2 @.@ 5", "1,000 and 2.5"),
        ('as " Craig " in " Teddy \'s Story " .', 'as "Craig" in "Teddy\'s Story" .'),
        ("( born 1970 ) , he", "(born 1970), he"),
        ("[ 1 ] ; then : done", "[1]; then: done"),
        ("the players ' union", "the players' union"),
        ("= = Career = =", "== Career =="),
        ("= = = Early = = =", "=== Early ==="),
        ("at 30 ° C", "at 30°C"),
        ("a N b", "a 1 b"),
        ("Hello ! Why ? Yes .", "Hello! Why? Yes ."),
    ],
)
def test_wikitext_detokenize_rules(raw, text):
    assert wikitext_detokenize(raw) == text


def test_headings():
    assert is_wikitext_heading(" = Robert Boulter = \n")
    assert is_wikitext_heading(" = = = 2001 – present = = = ")
    assert not is_wikitext_heading(" He scored = 3 . ")
    assert not is_wikitext_heading(" Robert Boulter is an English actor . ")


def test_wikitext_paragraphs_small_file(tmp_path):
    raw = tmp_path / "w.raw"
    raw.write_bytes(
        b" \r\n = Title = \r\n \r\n Para one @-@ x . \r\n = = Sub = = \r\n"
        b" Para ( two ) , end . \r\n \r\n"
    )
    assert wikitext_paragraphs(raw) == ["Para one-x .", "Para (two), end ."]
    with pytest.raises(FileNotFoundError):
        wikitext_paragraphs(tmp_path / "nope.raw")


def test_fixed_random_subset():
    order = list(range(50))
    random.Random(1).shuffle(order)
    assert fixed_random_subset(50, 10) == order[:10]
    assert fixed_random_subset(50) == order
    assert fixed_random_subset(50, 80) == order
    assert fixed_random_subset(50, 10, seed=2) != order[:10]


def _golden_cov():
    golden = require_shared("golden")
    texts = json.loads((golden / "cov_sample_texts.json").read_text())
    with np.load(golden / "cov.npz") as cov:
        arrays = {k: cov[k] for k in ("sample_indices", "token_ids_concat", "token_offsets")}
    return texts, arrays


def test_wikitext_paragraphs_match_golden_samples():
    raw = require_shared("data", "text", "wikitext-2-raw.wiki.test.raw")
    texts, cov = _golden_cov()
    paragraphs = wikitext_paragraphs(raw)
    assert len(paragraphs) == 2185
    indices = texts["indices_into_paragraph_list"]
    assert len(indices) == 200
    for i, text in zip(indices, texts["texts"]):
        assert paragraphs[i] == text, i
    assert fixed_random_subset(len(paragraphs), 200) == cov["sample_indices"].tolist() == indices
    assert wikitext_sample(raw, 200) == texts["texts"]


def test_tokenize_documents_truncates():
    transformers = pytest.importorskip("transformers")
    tok = transformers.GPT2Tokenizer.from_pretrained(str(require_shared("data", "gpt2_tokenizer")))
    docs = ["Hello world, this is a longer document of several tokens.", "Short."]
    out = list(tokenize_documents(tok, docs, max_length=5))
    assert out == [tok.encode(docs[0])[:5], tok.encode(docs[1])]
    with pytest.raises(ValueError):
        list(tokenize_documents(tok, docs, max_length=0))


def test_tokenize_documents_match_golden_smollm2():
    texts, cov = _golden_cov()
    tok = smollm2_tokenizer()
    ids, off = cov["token_ids_concat"], cov["token_offsets"]
    got = list(tokenize_documents(tok, texts["texts"], max_length=8192))
    assert len(got) == 200 == len(off) - 1
    for i, seq in enumerate(got):
        assert seq == ids[off[i] : off[i + 1]].tolist(), i
    assert sum(map(len, got)) == len(ids) == 26517
