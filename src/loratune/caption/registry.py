"""The declarative table of captioner backends (the metric registry's style): what each one is, and
``create_captioner`` to build it.

Adding a captioner = one ``CaptionerSpec`` entry here + one ``Captioner`` subclass in its own module. Classes are
imported lazily by dotted path so reading the table never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from loratune.errors import LoratuneError

if TYPE_CHECKING:
    from loratune.caption.base import Captioner
    from loratune.config import Config


@dataclass(frozen=True)
class CaptionerSpec:
    name: str
    target: str  # "module:Class", imported on use
    kind: Literal["prose", "tags"]  # what it returns: sentences to strip of identity, or tags to filter
    licence: str
    default_model: str | None  # None: the model comes from elsewhere in the config (the VLM: VQAScore's)
    description: str


_SPECS = [
    CaptionerSpec(
        "vlm", "loratune.caption.vlm:VlmCaptioner", "prose",
        "the configured VLM's own (InternVL3: MIT; its Qwen2.5 LLM: Apache-2.0)", None,
        "the vision-language model VQAScore uses (evaluation.backends.alignment.model), asked to describe pose, "
        "framing, background and clothing",
    ),
    CaptionerSpec(
        "florence2", "loratune.caption.florence:Florence2Captioner", "prose", "MIT (Florence-2 weights)",
        "florence-community/Florence-2-large",
        "Florence-2 prose caption (transformers-native checkpoints), task <DETAILED_CAPTION> by default",
    ),
    CaptionerSpec(
        "wd14", "loratune.caption.tagger:Wd14Tagger", "tags", "Apache-2.0 (SmilingWolf's WD taggers)",
        "SmilingWolf/wd-eva02-large-tagger-v3",
        "booru-style tags from a WD14 / wd-v3 tagger (model.onnx + selected_tags.csv) through onnxruntime",
    ),
]

CAPTIONERS: dict[str, CaptionerSpec] = {spec.name: spec for spec in _SPECS}


def get_captioner_spec(name: str) -> CaptionerSpec:
    try:
        return CAPTIONERS[name]
    except KeyError:
        raise LoratuneError(f"caption.backend: unknown captioner {name!r} (known: {', '.join(CAPTIONERS)})") from None


def create_captioner(config: Config) -> Captioner:
    """Build (but do not load) the captioner ``config.caption`` names; options and model reference are checked."""
    section = config.caption
    spec = get_captioner_spec(section.backend)
    module, _, cls = spec.target.partition(":")
    klass: type[Captioner] = getattr(importlib.import_module(module), cls)
    klass.spec = spec
    return klass(config)
