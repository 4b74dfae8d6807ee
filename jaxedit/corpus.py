"""Text for the key statistics C0 (reference §4.1): document readers, WikiText paragraphs, sampling.

The reference measures C0 on `mom2_n_samples` Wikipedia articles picked by
`FixedRandomSubsetSampler(seed=1)` and tokenized one by one with
`tokenizer.encode(text, truncation=True, max_length=maxlen)`. This module supplies the text side:

* `read_documents` streams documents from a user's own corpus (`.txt` with blank-line separated
  documents, `.jsonl` with ``{"text": ...}`` lines, or a folder of those); `write_text_corpus`
  writes the `.txt` form.
* `wikitext_paragraphs` rebuilds the paragraph list the golden fixtures were measured on from the
  raw WikiText-2 test file: the non-empty lines that are not ``= heading =`` lines, in file order,
  each stripped and then passed through the lm-evaluation-harness WikiText detokenizer
  (`wikitext_detokenize`). The raw file has 2,185 such paragraphs.
* `fixed_random_subset` is the reference sampler's order; `tokenize_documents` its tokenization.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jaxedit.errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)

_HEADING = re.compile(r"^=+ .* =+$")


def _blank(line: str) -> bool:
    return not line.strip()


def _read_txt(path: Path) -> Iterator[str]:
    lines: list[str] = []
    separated = False  # a blank line was seen
    with open(path, encoding="utf-8") as f:
        for line in f:
            if _blank(line):
                separated = True
                if lines:
                    doc = "\n".join(lines).strip()
                    if doc:
                        yield doc
                    lines = []
            else:
                lines.append(line.rstrip("\r\n"))
    if lines:
        if not separated and len(lines) > 1:
            # e.g. a raw WikiText file renamed .txt: one document of the whole file, which the
            # statistics cut at the model's context
            logger.warning(
                "corpus %s has no blank line: its %d lines are read as one document; separate "
                "documents by blank lines, write JSONL, or keep a raw WikiText file's .raw name",
                path,
                len(lines),
            )
        doc = "\n".join(lines).strip()
        if doc:
            yield doc


def _read_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if _blank(line):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path}:{n}: not valid JSON ({e}); expected one "
                    '{"text": "..."} object per line'
                ) from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(
                    f'{path}:{n}: expected a JSON object with a string "text" field, '
                    f"got {str(obj)[:80]!r}"
                )
            text = obj["text"].strip()
            if text:
                yield text


def _reader(path: Path):
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_txt
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl
    return None


def read_documents(path: str | os.PathLike) -> Iterator[str]:
    """Streams the documents of a text corpus, in file order.

    Formats:
      * ``.txt``: documents separated by one or more blank (empty or whitespace-only) lines; each
        document's lines are joined with "\\n" and the document is stripped.
      * ``.jsonl``: one ``{"text": ...}`` object per line (blank lines skipped); text stripped.
      * a folder: its ``.txt`` and ``.jsonl`` files (not recursive), in sorted name order; other
        files are skipped.
    Empty documents are skipped.

    Args:
      path: a file or folder.

    Yields:
      Document texts.

    Raises:
      MissingFileError (a FileNotFoundError): `path` does not exist.
      InputError (a ValueError): an unsupported file type, a folder with no readable file, or a
        bad JSONL line.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and _reader(p) is not None
        )
        if not files:
            raise InputError(f"corpus folder {path} holds no .txt or .jsonl file")
        for file in files:
            yield from _reader(file)(file)
        return
    if not path.exists():
        raise MissingFileError(
            f"corpus {path} does not exist (fix: pass an existing .txt/.jsonl file or folder)"
        )
    reader = _reader(path)
    if reader is None:
        raise InputError(
            f"corpus {path}: unsupported file type {path.suffix!r}; use a .txt file (documents "
            'separated by blank lines), a .jsonl file ({"text": ...} per line) or a folder of '
            "those (for the raw WikiText file use wikitext_paragraphs)"
        )
    yield from reader(path)


def write_text_corpus(docs: Iterable[str], path: str | os.PathLike) -> int:
    """Writes documents as a ``.txt`` corpus that `read_documents` reads back unchanged.

    Documents are stripped and joined by one blank line. A document therefore must not be empty
    and must not contain a blank (empty or whitespace-only) line itself; WikiText paragraphs never
    do. Line ends are written as "\\n".

    Args:
      docs: document texts.
      path: the output file (parent folders are created).

    Returns:
      The number of documents written.

    Raises:
      ValueError: a document is empty or contains a blank line (nothing is left at `path`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for i, doc in enumerate(docs):
                text = doc.strip()
                if not text:
                    raise ValueError(
                        f"document {i} is empty; the .txt corpus format cannot hold it"
                    )
                if any(_blank(line) for line in text.splitlines()):
                    raise ValueError(
                        f"document {i} contains a blank line, which the .txt corpus "
                        "format reads as a document separator; remove it or write "
                        "JSONL"
                    )
                if n:
                    f.write("\n")
                f.write(text + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def wikitext_detokenize(text: str) -> str:
    """The lm-evaluation-harness WikiText detokenizer (originally Megatron-LM's), rule for rule.

    Rules, in this order: "s '" -> "s'"; the (no-op, literal) pattern ``/' [0-9]/``; number
    separators " @-@ " -> "-", " @,@ " -> ",", " @.@ " -> "."; " X " -> "X " for X in : ; . ! ? ,;
    spaces just inside (), [], {}, "" and '' pairs removed (each pair runs from an opening
    character to the next closing one, as the reference's non-greedy regexes match); heading
    markers "= = = =" -> "====", "= = =" -> "===", "= =" -> "==";
    " ° " -> "°"; spaces next to newlines dropped; " N " -> " 1 "; " 's" -> "'s".

    Args:
      text: tokenized WikiText.

    Returns:
      The detokenized text.
    """
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in ":;.!?,":
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def is_wikitext_heading(line: str) -> bool:
    """True for a WikiText section heading line such as " = = Career = = " (any level)."""
    return bool(_HEADING.match(line.strip()))


def wikitext_paragraphs(raw_path: str | os.PathLike) -> list[str]:
    """The paragraph list of a raw WikiText file, as the golden covariance samples index it.

    Each line of the file (CRLF or LF) is stripped; empty lines and ``= heading =`` lines (any
    level) are dropped; each remaining line is detokenized with `wikitext_detokenize` after
    stripping (detokenizing first and stripping after leaves " ." at line ends and does not match
    the golden texts). `wikitext-2-raw.wiki.test.raw` gives 2,185 paragraphs.

    Args:
      raw_path: e.g. `wikitext-2-raw.wiki.test.raw`.

    Returns:
      The paragraphs, in file order.

    Raises:
      MissingFileError (a FileNotFoundError): the file does not exist.
    """
    raw_path = Path(raw_path)
    if not raw_path.is_file():
        raise MissingFileError(
            f"WikiText file {raw_path} does not exist (fix: pass wikitext-2-raw.wiki.test.raw, or "
            "a .txt/.jsonl corpus)"
        )
    paragraphs = []
    with open(raw_path, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if text and not is_wikitext_heading(text):
                paragraphs.append(wikitext_detokenize(text))
    return paragraphs


def fixed_random_subset(n_total: int, n: int | None = None, seed: int = 1) -> list[int]:
    """The reference's `FixedRandomSubsetSampler` order: the first `n` of a seeded shuffle.

    ``order = list(range(n_total)); random.Random(seed).shuffle(order); order[:n]``. Like the
    reference, `n` larger than `n_total` (or None) gives all `n_total` indices.

    Args:
      n_total: the number of documents.
      n: how many to take.
      seed: the Python `random.Random` seed (the reference uses 1).

    Returns:
      The sampled indices, in sampler order.
    """
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    if n is None:
        return order
    if n > n_total:
        logger.warning("asked for %d samples of %d documents; using all %d", n, n_total, n_total)
    return order[:n]


def wikitext_sample(raw_path: str | os.PathLike, n: int, seed: int = 1) -> list[str]:
    """The `n` WikiText paragraphs the reference sampler picks (the golden C0 uses n=200)."""
    paragraphs = wikitext_paragraphs(raw_path)
    return [paragraphs[i] for i in fixed_random_subset(len(paragraphs), n, seed)]


def tokenize_documents(tokenizer: Any, docs: Iterable[str], max_length: int) -> Iterator[list[int]]:
    """Tokenizes documents one by one as the reference's layer statistics do.

    ``tokenizer.encode(text, truncation=True, max_length=max_length)``: special tokens as the
    tokenizer adds them (BOS for Llama-2/3; none for GPT-2 or SmolLM2), long documents cut at
    `max_length` tokens (the model's n_positions / max_position_embeddings in the reference).

    Args:
      tokenizer: a Hugging Face tokenizer.
      docs: document texts.
      max_length: the truncation length.

    Yields:
      One list of token ids per document, in order.
    """
    if max_length <= 0:
        raise ValueError(f"max_length={max_length} must be positive")
    for text in docs:
        yield list(tokenizer.encode(text, truncation=True, max_length=max_length))
