"""Model families: one module per family behind one interface (``base.Family``), and the registry of them.

Train, sampling, export, metadata, the tiny models, one-file bases (``loratune.singlefile``) and the memory estimate
(``loratune.residency``) ask ``get_family(config.model.family)``; nothing else branches on the family. A new family is
a module here that subclasses ``Family`` (its parts as ``Component`` rows, its text conditioning, training objective,
pipeline call arguments, kohya names, modelspec values, the settings it refuses, its reference repository and its
published configs, its one-file layout, its activation constants, a tiny stand-in), one entry in ``FAMILIES`` and its
tests; the README's "Adding a model family" lists each attribute and method.

>>> sorted(FAMILIES)
['flux', 'sd15', 'sdxl']
>>> get_family("sd15").label
'Stable Diffusion 1.5'
"""

from __future__ import annotations

from loratune.errors import LoratuneError
from loratune.families.base import Component, Family
from loratune.families.flux import Flux
from loratune.families.sd15 import SD15
from loratune.families.sdxl import SDXL

FAMILIES: dict[str, Family] = {family.name: family for family in (SD15(), SDXL(), Flux())}
DEFAULT_FAMILY = "sd15"


def get_family(name: str) -> Family:
    """The family registered as ``name``; an unknown name is a user error naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise LoratuneError(f"model.family: unknown family {name!r} (known: {', '.join(FAMILIES)})") from None


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Component", "Family", "get_family"]
