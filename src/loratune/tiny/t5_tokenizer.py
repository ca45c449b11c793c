"""A T5 tokenizer built offline: transformers' own ``T5Tokenizer`` (a Unigram model, T5's ``<pad>``/``</s>``/``<unk>``
ids 0/1/2, ``▁`` word starts, ``</s>`` appended) over a vocabulary taken from CLIP's BPE word list.

The real T5 vocabulary (32,128 SentencePiece pieces) cannot be downloaded here. Its ids would mean nothing to a
randomly initialised encoder anyway; what the stand-in needs is T5's tokenizer class, special tokens and padding,
and a vocabulary in which English captions become words rather than ``<unk>``: the most frequent whole words of
CLIP's list (``word</w>`` entries, in merge order), plus every printable ASCII character so nothing is unknown.
"""

from __future__ import annotations

import string
from typing import Any

from loratune.tiny.clip_tokenizer import clip_vocab_and_merges

SPECIALS = ("<pad>", "</s>", "<unk>")


def t5_vocabulary(n_words: int) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs: specials, ``▁``, the ``n_words`` most frequent CLIP words, then characters."""
    vocab, _ = clip_vocab_and_merges()
    words: list[str] = []
    for token in vocab:  # dicts keep CLIP's order: bytes, byte</w>s, then merges from the most frequent
        if token.endswith("</w>") and token[:-4].isascii() and token[:-4].isalnum() and len(token) > 5:
            words.append(token[:-4])
            if len(words) == n_words:
                break
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in SPECIALS] + [("▁", -2.0)]
    # Whole words score above any spelling of them out, so a known word is one piece.
    pieces += [("▁" + w, -3.0 - i / n_words) for i, w in enumerate(words)]
    characters = [c for c in string.printable if not c.isspace()]
    pieces += [("▁" + c, -9.0) for c in characters] + [(c, -10.0) for c in characters]
    return pieces


def make_t5_tokenizer(n_words: int = 4000, max_length: int = 64) -> Any:
    """transformers' ``T5Tokenizer`` over ``t5_vocabulary(n_words)``; ``model_max_length`` is the padded length."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocabulary(n_words), extra_ids=0, model_max_length=max_length)
