"""The real CLIP BPE tokenizer (49,408 tokens, the ids SD1.5/SDXL use), rebuilt offline from open_clip's vocabulary.

open_clip ships OpenAI's ``bpe_simple_vocab_16e6.txt.gz``; the HF ``CLIPTokenizer`` files (``vocab.json`` +
``merges.txt``) are a re-encoding of the same list, so ids match the hub's SD1.5 tokenizer exactly.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# OpenAI CLIP uses the first 49,152 - 256 - 2 merges of the file (the same slice open_clip and transformers take).
_N_MERGES = 49152 - 256 - 2


def bpe_vocab_file() -> Path:
    """open_clip's copy of the OpenAI BPE file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip is not installed: it ships the CLIP BPE vocabulary the tiny tokenizer needs")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable-character table (same as open_clip.tokenizer.bytes_to_unicode).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token -> id) and merge list in HF ``CLIPTokenizer`` order."""
    with gzip.open(bpe_vocab_file()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def make_clip_tokenizer(pad_token: str = EOS, max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` over the real vocabulary. SD1.5 pads with ``<|endoftext|>``; SDXL's second one with ``!``."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token=pad_token, model_max_length=max_length
    )


def write_slow_tokenizer_files(folder: Path) -> None:
    """Add the hub's ``vocab.json`` + ``merges.txt`` beside ``tokenizer.json`` (transformers 5 saves only the latter),
    so older transformers and other tools read the folder too."""
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
