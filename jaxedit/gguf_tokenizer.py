"""Rebuilds a Hugging Face fast tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.

`build_tokenizer` (used by `jaxedit.gguf.read_gguf`) turns the vocabulary, merges, token types and
special-token ids stored in the file back into a `transformers.PreTrainedTokenizerFast`, with the
`tokenizers` library only (no torch). Only byte-level BPE vocabularies (`tokenizer.ggml.model ==
"gpt2"`: SmolLM2, Llama 3, Qwen...) are supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import transformers

# llama.cpp token types (gguf.TokenType): 3 = CONTROL (special), 4 = USER_DEFINED (added, not
# special).
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Pre-tokenizer split regexes for `tokenizer.ggml.pre` values whose merges were learned on a split
# other than GPT-2's. Anything else (including SmolLM2's "smollm") uses the GPT-2 split of the
# ByteLevel pre-tokenizer, which is also what transformers' own GGUF loader does (and what the
# golden ids use).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
}


def build_tokenizer(meta: dict[str, Any]) -> transformers.PreTrainedTokenizerFast:
    """Builds a fast tokenizer from GGUF `tokenizer.ggml.*` metadata (byte-level BPE only).

    The vocabulary ids, merges, pre-tokenizer and special tokens come from the file: tokens marked
    CONTROL become special tokens (never split, skipped on `decode(skip_special_tokens=True)`),
    USER_DEFINED ones become plain added tokens. A BOS (EOS) is prepended (appended) only when
    `tokenizer.ggml.add_bos_token` (`add_eos_token`) says so; byte-level files default to neither,
    as llama.cpp does.

    Args:
      meta: the file's metadata, key -> Python value.

    Returns:
      A `PreTrainedTokenizerFast` with right padding.

    Raises:
      ValueError: the vocabulary is not byte-level BPE or is incomplete.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF field tokenizer.ggml.model={kind!r}: jaxedit rebuilds only byte-level BPE "
            "('gpt2') tokenizers from GGUF files"
        )
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    merges_text: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    if not tokens or not merges_text:
        raise ValueError("GGUF has no tokenizer.ggml.tokens / tokenizer.ggml.merges")
    token_types = list(meta.get("tokenizer.ggml.token_type") or [])

    alphabet = set(_bytes_to_unicode().values())
    spelling = _bytes_to_unicode()

    def respell(token: str) -> str:
        # Regular tokens are already spelled in the byte alphabet (space = "Ġ"); a token outside it
        # (a mislabelled control token, say) is respelled so the BPE model can still hold it.
        if set(token) <= alphabet:
            return token
        return "".join(spelling[b] for b in token.encode("utf-8"))

    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(respell(token), i)
    merges: list[tuple[str, str]] = []
    for m in merges_text:
        left, sep, right = m.partition(" ")  # as m.split(" ", 1)
        if not sep:
            raise ValueError(f"GGUF merge {m!r}: expected two tokens separated by a space")
        merges.append((left, right))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    add_prefix_space = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    split = _PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()

    # Control tokens must stay whole: without this "<|im_start|>" would be cut into byte pieces.
    special = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, token_types, strict=False)
        if ty == _TOKEN_CONTROL and set(t) <= alphabet
    ]
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, token_types, strict=False)
        if ty == _TOKEN_USER_DEFINED and t in vocab
    ]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def token_of(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    bos, eos = token_of("bos_token_id"), token_of("eos_token_id")
    unk, pad = token_of("unknown_token_id"), token_of("padding_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:

        def template(seq: str, type_id: int) -> list[str]:
            return (
                ([f"{bos}:{type_id}"] if add_bos else [])
                + [f"{seq}:{type_id}"]
                + ([f"{eos}:{type_id}"] if add_eos else [])
            )

        single = " ".join(template("$A", 0))
        pair = " ".join(template("$A", 0) + template("$B", 1))
        specials = [(t, vocab[respell(t)]) for t in {bos, eos} if t is not None]
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )

    kwargs: dict[str, Any] = {
        k: v
        for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad))
        if v is not None
    }
    if "tokenizer.chat_template" in meta:
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get("llama.context_length", 2048)),
        **kwargs,
    )
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))
