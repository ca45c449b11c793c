"""From what a captioner saw to a training caption: the trigger first, then only what is not the character's identity.

A character LoRA learns whatever the captions leave unsaid: a trait that is written in every caption binds to those
words instead of to the trigger, and the LoRA then needs the words to draw the trait. So the character's traits
(``dataset.characters.<name>.traits``) and, for taggers, the tags that describe a body rather than a scene (hair,
eyes, skin, the character's name) are removed; pose, framing, background and clothing that is not a trait stay.
Plain functions over strings, tested exactly.

>>> prose_caption("lucaboy", "A boy with curly brown hair and a teal shirt standing on a beach.",
...               ["curly brown hair", "a teal shirt"])
'lucaboy, a boy standing on a beach'
>>> tag_caption("lucaboy", ["1boy", "brown_hair", "beach", "smile"], ["curly brown hair"])
'lucaboy, 1boy, beach, smile'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

# Tags that describe the character's body rather than the picture (Danbooru's hair/eyes/skin/body groups): they would
# bind the look to the tag instead of to the trigger. Clothing, pose, framing and background are kept.
IDENTITY_TAG_PATTERNS = (
    r".*_hair$", r"^hair_.*", r".*_eyes$", r"^heterochromia$", r".*_skin$", r"^dark-skinned_.*", r".*_pupils$",
    r"^freckles$", r"^ahoge$", r"^sidelocks$", r"^bangs$", r".*_bangs$", r"^eyelashes$", r".*_eyebrows$",
    r"^mole.*", r".*_ears$", r"^fang$", r"^facial_hair$", r"^beard$", r"^mustache$",
)
_IDENTITY_TAGS = re.compile("|".join(f"(?:{p})" for p in IDENTITY_TAG_PATTERNS))
# Words that glue a removed phrase to the rest of a sentence ("a boy with curly hair and a teal shirt, standing").
_CONNECTOR = r"(?:\s*,)?\s*(?:\b(?:with|and|wearing|has|having|who has)\b\s*)?"
_MAX_TOKENS = 77
# Tags that are faces drawn with underscores: the WD taggers' reference app keeps them as they are.
KAOMOJIS = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
                      "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


def normalise_tag(tag: str) -> str:
    """A tag as captions write it: underscores as spaces (kohya and the WD taggers' own UIs do the same), except in
    kaomojis."""
    tag = tag.strip()
    return tag if tag in KAOMOJIS else tag.replace("_", " ")


def is_identity_tag(tag: str, traits: Sequence[str] = ()) -> bool:
    """True for a tag that describes the character rather than the picture: body features, or any tag that a trait
    names ("curly brown hair" names ``curly_hair`` and ``brown_hair``) or that names a trait."""
    raw = tag.strip().lower().replace(" ", "_")
    if _IDENTITY_TAGS.fullmatch(raw):
        return True
    words = set(raw.split("_"))
    for trait in traits:
        trait_words = {w for w in re.findall(r"[a-z0-9]+", trait.lower()) if w not in ("a", "an", "the", "with")}
        if trait_words and (words <= trait_words or trait_words <= words):
            return True
    return False


def strip_identity(text: str, traits: Sequence[str]) -> str:
    """``text`` without each trait phrase (case-insensitive) and the connector word before it."""
    out = text
    for trait in sorted((t for t in traits if t.strip()), key=len, reverse=True):
        phrase = r"\b" + r"\s+".join(re.escape(w) for w in trait.split()) + r"\b"
        # "wearing a teal shirt and red shorts": the phrase goes with the "and" after it, "wearing" stays.
        out = re.sub(phrase + r"\s+and\s+", "", out, flags=re.IGNORECASE)
        out = re.sub(_CONNECTOR + phrase, "", out, flags=re.IGNORECASE)
    return out


def clean_prose(text: str) -> str:
    """One caption line: whitespace collapsed, dangling connectors and punctuation removed, first letter lower-case
    (the caption continues after the trigger and a comma), no final full stop. Control characters and the decoder's
    replacement character (a token cut inside a UTF-8 sequence) are dropped."""
    text = "".join(c for c in text if c != "\ufffd" and (c.isspace() or unicodedata.category(c)[0] != "C"))
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)
    text = re.sub(r"\b(?:with|and|wearing|has|having)\s*([,.;]|$)", r"\1", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+([,.;:])", r"\1", text).strip(" ,;:.")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def fit(parts: Sequence[str], max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``parts`` joined with ", " whose token count (``count``, BOS/EOS included) is at most
    ``max_tokens``; the first part (the trigger) is always kept."""
    kept: list[str] = []
    for part in parts:
        if not part:
            continue
        trial = ", ".join([*kept, part])
        if kept and count(trial) > max_tokens:
            break
        kept.append(part)
    return ", ".join(kept)


def _clip_tokens(text: str) -> int:
    from loratune.audit.checks import clip_token_count

    return clip_token_count(text)


def prose_caption(
    trigger: str,
    text: str,
    traits: Sequence[str],
    max_tokens: int = _MAX_TOKENS,
    count: Callable[[str], int] | None = None,
) -> str:
    """The trigger, then the prose without identity, cut at a clause boundary to fit ``max_tokens``."""
    body = clean_prose(strip_identity(text, traits))
    # A clause left with one word ("He." from "He has curly brown hair.") said only what was removed.
    clauses = [c for c in (clean_prose(c) for c in re.split(r"(?<=[.;,])\s+", body)) if len(c.split()) > 1]
    return fit([trigger, *clauses], max_tokens, count or _clip_tokens)


def tag_caption(
    trigger: str,
    tags: Sequence[str],
    traits: Sequence[str],
    max_tokens: int = _MAX_TOKENS,
    count: Callable[[str], int] | None = None,
) -> str:
    """The trigger, then the tags (most confident first, as given) that are not identity, to fit ``max_tokens``."""
    kept = [normalise_tag(t) for t in tags if not is_identity_tag(t, traits)]
    seen: set[str] = set()
    unique = [t for t in kept if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]
    return fit([trigger, *unique], max_tokens, count or _clip_tokens)
