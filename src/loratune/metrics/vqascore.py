"""VQAScore prompt alignment and VLM character-trait checks (see ``vlm_models`` for how P("Yes") is read).

``vqascore`` (alignment axis) asks ``Does this figure show "{prompt}"? Please answer yes or no.`` per image; the axis
value is the mean P(yes) in [0, 1]. When the evaluation has character traits (``dataset.characters.<name>.traits``)
and ``traits`` is on, it also asks ``Does this figure show {trait}? Please answer yes or no.`` for each trait of the
image's character and reports per-trait pass rates (P(yes) > 0.5) and mean probabilities in ``details["traits"]`` —
they do not change the alignment value.

``traits`` (consistency axis) is the same trait check as a score of its own: the mean P(yes) over every
(image, trait) pair. Choose it as the consistency backend to make "looks like the character's description" count in
the composite; both backends share one loaded model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from pydantic import Field

from loratune.metrics.base import AxisResult, Backend, EvalImage, References
from loratune.metrics.cache import cached_model
from loratune.metrics.vlm_models import YesNoVlm, load_vlm, resolve_loader
from loratune.modelref import check_model_ref, is_stand_in

PASS_THRESHOLD = 0.5


class VlmOptions(Backend.Options):
    normalise: Literal["pair", "softmax"] = Field(
        "pair", description="'pair': P(yes)/(P(yes)+P(no)); 'softmax': P(yes) over the whole vocabulary"
    )
    loader: Literal["auto", "native", "internvl2"] = Field(
        "auto", description="'native': transformers image-text-to-text; 'internvl2': original remote-code InternVL2"
    )
    max_tiles: int | None = Field(
        None, ge=1, le=40, description="InternVL2 dynamic tiling: most 448-px tiles per image"
    )
    trait_question: str = "Does this figure show {trait}? Please answer yes or no."
    reuse_vision: bool = Field(
        True,
        description="encode each image once for all its questions (native models that take precomputed features); "
        "false: one vision pass per question, the reference path",
    )


class TraitTally:
    """P(yes) per (character, trait) over the images seen; summarised as pass rate and mean probability."""

    def __init__(self) -> None:
        self.probs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, character: str, trait: str, prob: float) -> None:
        self.probs[character][trait].append(prob)

    def all_probs(self) -> list[float]:
        return [p for traits in self.probs.values() for ps in traits.values() for p in ps]

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        return {
            character: {
                trait: {
                    "pass_rate": sum(p > PASS_THRESHOLD for p in ps) / len(ps),
                    "mean_probability": sum(ps) / len(ps),
                    "images": len(ps),
                }
                for trait, ps in traits.items()
            }
            for character, traits in self.probs.items()
        }


class _VlmBackend(Backend):
    Options = VlmOptions
    options: VlmOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_id = check_model_ref(self.model_id or "", f"{self.field_path}.model")

    def load(self) -> None:
        ref = self.model_id or ""
        opts = self.options
        field = f"{self.field_path}.model"
        # Decided (and remote code refused) before the cache: a model loaded by a trusting config is not handed on.
        kind = resolve_loader(ref, opts.loader, self.runtime.trust_remote_code, field)
        key = ("vlm", ref, kind, str(self.runtime.device), str(self.runtime.dtype), opts.max_tiles)
        self.vlm: YesNoVlm = cached_model(
            key,
            lambda: load_vlm(
                ref,
                kind,
                self.runtime.device,
                self.runtime.dtype,
                self.runtime.trust_remote_code,
                field,
                opts.max_tiles,
            ),
        )
        self.stand_in = is_stand_in(ref)

    def setup(self, references: References) -> None:
        self.traits = {c: list(t) for c, t in references.traits.items() if t}

    def reset(self) -> None:
        self.tally = TraitTally()

    def ask(self, pairs: list[tuple[EvalImage, str]]) -> list[float]:
        """P(yes) for each (image, question), in batches of the runtime's batch size; the questions about one image
        share its vision pass where the model allows."""
        return self.vlm.ask(
            [e.image for e, _ in pairs],
            [q for _, q in pairs],
            self.options.normalise,
            self.runtime.batch_size,
            self.options.reuse_vision,
        )

    def trait_pairs(self, batch: list[EvalImage]) -> tuple[list[tuple[EvalImage, str]], list[tuple[int, str, str]]]:
        """Every (image, trait question) of the batch and its (index in batch, character, trait)."""
        pairs, keys = [], []
        for index, item in enumerate(batch):
            for trait in self.traits.get(item.character or "", []):
                pairs.append((item, self.options.trait_question.format(trait=trait)))
                keys.append((index, item.character or "", trait))
        return pairs, keys

    def tally_traits(
        self, batch: list[EvalImage], keys: list[tuple[int, str, str]], probs: list[float]
    ) -> list[list[float]]:
        """Record the trait answers; returns the P(yes) list per image."""
        per_item: list[list[float]] = [[] for _ in batch]
        for (index, character, trait), prob in zip(keys, probs):
            self.tally.add(character, trait, prob)
            per_item[index].append(prob)
        return per_item


class VqaScore(_VlmBackend):
    """VQAScore: mean P("Yes") to ``Does this figure show "{prompt}"?`` over the images that have a prompt."""

    class Options(VlmOptions):
        question: str = 'Does this figure show "{prompt}"? Please answer yes or no.'
        traits: bool = Field(True, description="also check each character trait (reported in details, not scored)")

    options: Options

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.traits: dict[str, list[str]] = {}
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.per_image: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        asked = [(item, self.options.question.format(prompt=item.prompt)) for item in batch if item.prompt]
        traits, keys = self.trait_pairs(batch) if self.options.traits else ([], [])
        # One call for the prompt and the trait questions: each image's vision pass serves all of them.
        probs = self.ask(asked + traits)
        prompt_probs = iter(probs[: len(asked)])
        self.per_image += [next(prompt_probs) if item.prompt else None for item in batch]
        self.tally_traits(batch, keys, probs[len(asked) :])

    def compute(self) -> AxisResult:
        scored = [p for p in self.per_image if p is not None]
        details: dict = {"normalise": self.options.normalise, "question": self.options.question}
        if self.tally.probs:
            details["traits"] = self.tally.summary()
        if not scored:
            return self.missing("no image has a prompt", per_image=self.per_image, details=details)
        return self.result(sum(scored) / len(scored), per_image=self.per_image, details=details)


class VlmTraits(_VlmBackend):
    """Character traits as a consistency score: mean P("Yes") over every (image, trait of its character) pair."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.traits = {}
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.per_image: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        pairs, keys = self.trait_pairs(batch)
        per_item = self.tally_traits(batch, keys, self.ask(pairs))
        self.per_image += [sum(ps) / len(ps) if ps else None for ps in per_item]

    def compute(self) -> AxisResult:
        probs = self.tally.all_probs()
        details = {"traits": self.tally.summary(), "normalise": self.options.normalise}
        if not probs:
            return self.missing("no character traits configured for the scored images", per_image=self.per_image)
        return self.result(sum(probs) / len(probs), per_image=self.per_image, details=details)
