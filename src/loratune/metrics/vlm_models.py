"""Vision-language models that answer yes/no questions about an image, scored as P("Yes") from next-token logits.

Two loaders share one interface (``YesNoVlm.yes_probabilities``):

* ``NativeVlm`` — transformers-native image-text-to-text models (InternVL ``-hf`` checkpoints, Qwen2/2.5-VL, LLaVA):
  ``AutoProcessor`` + the model's chat template + ``AutoModelForImageTextToText``, one batched forward with
  ``logits_to_keep=1``. Several questions about one image (a prompt and each character trait) share one vision pass:
  ``model.get_image_features`` runs once per image and the language model receives the features through the
  forward's ``mm_encoder_outputs`` (transformers' own path for precomputed features). Models whose processor adds
  per-image inputs besides ``pixel_values`` (Qwen2-VL's ``image_grid_thw``, LLaVA-NeXT's ``image_sizes``) or whose
  features are not one tensor of tiles keep one vision pass per question.
* ``InternVL2RemoteVlm`` (``loratune.metrics.internvl2_remote``) — the original InternVL2 checkpoints (OpenGVLab/InternVL2-1B/2B/8B) whose code ships with
  the checkpoint. Only loaded when the config sets ``evaluation.trust_remote_code``. Images go through upstream's
  448-px dynamic tiling (``build_transform`` + ``dynamic_preprocess``, as in the model card) and the logits are read
  from ``forward()`` — upstream's ``chat()`` calls ``.cuda()`` and its language models lose ``generate`` on
  transformers >= 4.50, so neither would run on a CPU or on transformers 5. Each question runs its own vision pass:
  the checkpoint's code has no supported entry point for precomputed features.

Scoring (VQAScore, Lin et al. 2024): the model is prompted to answer, and the logits of the first answer token are
read. ``normalise="pair"`` (the default) is softmax over the Yes/No pair only, P(yes) / (P(yes) + P(no)), so the score
does not depend on how much mass the model puts on other tokens (e.g. "The"); ``normalise="softmax"`` is P(yes) under
the full-vocabulary softmax, as in the original VQAScore code. "Yes" may be tokenised differently with and without a
leading space (and in lower case), so every one of "Yes", " Yes", "yes", " yes" that is a single token counts as yes
(their probabilities are summed), likewise for no.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loratune.errors import LoratuneError
from loratune.metrics.openclip_models import first_line
from loratune.metrics.vlm_pixels import batched_pixels

if TYPE_CHECKING:
    import torch
    from PIL import Image

Normalise = Literal["pair", "softmax"]
YES_VARIANTS = ("Yes", " Yes", "yes", " yes")
NO_VARIANTS = ("No", " No", "no", " no")


# --- token ids and the score ---------------------------------------------------------------------------------------
def answer_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    """Token ids of the ``variants`` that are one token each, encoded without special tokens (no BOS in front).

    A variant that splits (e.g. " Yes" -> " ", "Yes" in a small vocabulary) would otherwise contribute its first piece,
    which means something else; if no variant is a single token, the first piece of the bare word is the fallback.
    """
    ids: list[int] = []
    for word in variants:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1 and int(encoded[0]) not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        encoded = tokenizer.encode(variants[0], add_special_tokens=False)
        ids = [int(encoded[0])] if encoded else []
    return ids


def yes_no_ids(tokenizer: Any, field: str = "model") -> tuple[list[int], list[int]]:
    yes, no = answer_token_ids(tokenizer, YES_VARIANTS), answer_token_ids(tokenizer, NO_VARIANTS)
    if not yes or not no or set(yes) & set(no):
        raise LoratuneError(
            f"{field}: the tokenizer does not tell 'Yes' from 'No' by their first token ({yes} vs {no})"
        )
    return yes, no


def yes_probability(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int], normalise: Normalise) -> torch.Tensor:
    """P(yes) per row of next-token ``logits`` (batch x vocab), either over the Yes/No pair or the whole vocabulary."""
    import torch

    logits = logits.float()
    log_yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
    if normalise == "pair":
        log_no = torch.logsumexp(logits[:, no_ids], dim=-1)
        return torch.sigmoid(log_yes - log_no)
    return torch.exp(log_yes - torch.logsumexp(logits, dim=-1))


# --- loaders -------------------------------------------------------------------------------------------------------
class YesNoVlm:
    """A loaded VLM that answers yes/no questions; ``yes_probabilities`` is one batched forward."""

    model: Any
    yes_ids: list[int]
    no_ids: list[int]

    def next_token_logits(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def yes_probabilities(
        self, images: Sequence[Image.Image], questions: Sequence[str], normalise: Normalise = "pair"
    ) -> list[float]:
        import torch

        with torch.inference_mode():
            logits = self.next_token_logits(images, questions)
        return yes_probability(logits, self.yes_ids, self.no_ids, normalise).tolist()

    def ask(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        normalise: Normalise = "pair",
        batch_size: int = 8,
        reuse_vision: bool = True,
    ) -> list[float]:
        """P(yes) for each pair ``(images[i], questions[i])``, ``batch_size`` pairs per forward. An image object that
        appears in several pairs is one image asked several questions (a loader that can reuses its vision pass)."""
        step = max(1, batch_size)
        probs: list[float] = []
        for start in range(0, len(images), step):
            probs += self.yes_probabilities(images[start : start + step], questions[start : start + step], normalise)
        return probs


class NativeVlm(YesNoVlm):
    """transformers-native image-text-to-text model + processor (InternVL -hf, Qwen2/2.5-VL, LLaVA, ...)."""

    def __init__(self, ref: str, device: Any, dtype: Any, field: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(ref)
            self.model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dtype or "auto")
        except Exception as err:  # noqa: BLE001  (missing files, no network, an unsupported architecture)
            raise LoratuneError(f"{field}: cannot load vision-language model {ref!r}: {first_line(err)}") from None
        self.model.to(device).eval()
        self.device = device
        self.tokenizer = self.processor.tokenizer
        # Batched last-token logits need every prompt to end at the same position.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.yes_ids, self.no_ids = yes_no_ids(self.tokenizer, field)
        self.keep_last = _accepts(self.model, "logits_to_keep")
        self._prompt_cache: dict[str, list[int]] = {}
        self._layouts: dict[tuple[tuple[int, int], str], ImageLayout | None] = {}

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inputs(self, images: Sequence[Image.Image], questions: Sequence[str]) -> Any:
        texts = [self.prompt(q) for q in questions]
        return self.processor(images=list(images), text=texts, return_tensors="pt", padding=True)

    def next_token_logits(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        inputs = self.inputs(images, questions).to(self.device)
        if "pixel_values" in inputs and self.model.dtype is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kwargs = {"logits_to_keep": 1} if self.keep_last else {}
        return self.model(**inputs, **kwargs).logits[:, -1, :]

    def ask(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        normalise: Normalise = "pair",
        batch_size: int = 8,
        reuse_vision: bool = True,
    ) -> list[float]:
        import torch

        unique = list({id(image): image for image in images}.values())
        if not reuse_vision or len(unique) == len(images):
            return super().ask(images, questions, normalise, batch_size)
        step = max(1, batch_size)
        encoded: dict[int, EncodedImage] = {}
        with torch.inference_mode():
            for start in range(0, len(unique), step):
                chunk = unique[start : start + step]
                found = self.encode(chunk)
                if found is None:  # this model cannot take precomputed features: one vision pass per question
                    return super().ask(images, questions, normalise, batch_size)
                encoded.update(zip((id(image) for image in chunk), found))
            probs: list[float] = []
            for start in range(0, len(images), step):
                chunk_pairs = zip(images[start : start + step], questions[start : start + step])
                logits = self.logits_from_features([(encoded[id(image)], q) for image, q in chunk_pairs])
                probs += yes_probability(logits, self.yes_ids, self.no_ids, normalise).tolist()
        return probs

    def _prompt_ids(self, question: str) -> list[int]:
        """The chat-templated prompt's token ids, the image as its one placeholder (kept: the trait questions repeat
        for every image of a character)."""
        if question not in self._prompt_cache:
            self._prompt_cache[question] = list(self.tokenizer(self.prompt(question))["input_ids"])
        return self._prompt_cache[question]

    def encode(self, images: Sequence[Image.Image]) -> list[EncodedImage] | None:
        """Each image's vision features and the token span standing for it in a prompt, or None where this model
        cannot be given precomputed features safely (then nothing is reused)."""
        import torch

        if not hasattr(self.model, "get_image_features") or not _accepts(self.model, "mm_encoder_outputs"):
            return None
        image_token = getattr(self.model.config, "image_token_id", None)
        if image_token is None or self._prompt_ids("").count(image_token) != 1:
            return None
        layouts = [self.layout(image) for image in images]
        spans = [layout.span for layout in layouts if layout is not None]
        if len(spans) < len(images):
            return None
        batched = all(layout is not None and layout.batched for layout in layouts)
        pixels = self.pixel_values(images, batched).to(self.device, self.model.dtype)
        features = self.model.get_image_features(pixel_values=pixels, return_dict=True)
        pooled = getattr(features, "pooler_output", None)
        # InternVL: one tensor of tiles x tokens x width for the whole batch; LLaVA: a list, tokens x width per image.
        stacked = isinstance(pooled, torch.Tensor) and pooled.ndim == 3
        if not stacked and not (isinstance(pooled, (list, tuple)) and len(pooled) == len(images)):
            return None
        out, row_start = [], 0
        for index, span in enumerate(spans):
            tokens = span.count(image_token)
            rows = tokens // pooled.shape[1] if stacked else 1
            image_features = pooled[row_start : row_start + rows] if stacked else pooled[index]
            row_start += rows
            if image_features.shape[:-1].numel() != tokens:
                return None
            out.append(EncodedImage(image_features, span))
        return out if row_start == len(pooled) else None

    def layout(self, image: Image.Image) -> ImageLayout | None:
        """How the processor lays out an image of this size and mode (kept per size: a processor's token count and
        tiling follow from the image's size alone), or None where its inputs cannot be reused."""
        key = (image.size, image.mode)
        if key not in self._layouts:
            self._layouts[key] = self._measure_layout(image)
        return self._layouts[key]

    def _measure_layout(self, image: Image.Image) -> ImageLayout | None:
        """The processor on this one image with the plain prompt: the span its placeholder expands to, and whether
        ``batched_pixels`` gives the processor's own pixels for it."""
        import torch

        image_token = self.model.config.image_token_id
        plain = self._prompt_ids("")
        inputs = self.inputs([image], [""])
        if set(inputs) - {"input_ids", "attention_mask", "pixel_values"}:
            return None  # per-image inputs (grid sizes, image sizes) the text pass would need as well
        ids = [i for i, keep in zip(inputs["input_ids"][0].tolist(), inputs["attention_mask"][0].tolist()) if keep]
        at = plain.index(image_token)
        after = len(plain) - at - 1
        if ids[:at] != plain[:at] or ids[len(ids) - after :] != plain[at + 1 :]:
            return None  # the processor's text is not the plain prompt with the image expanded in place
        expected = inputs["pixel_values"]
        batched = batched_pixels(self.processor, [image])
        reproduces = (
            batched is not None
            and batched.shape == expected.shape
            and torch.allclose(batched, expected, rtol=0, atol=1e-5)
        )
        return ImageLayout(ids[at : len(ids) - after], reproduces)

    def pixel_values(self, images: Sequence[Image.Image], batched: bool) -> torch.Tensor:
        """The vision tower's input for ``images``: ``batched_pixels`` where that was checked (``batched``) to give
        the processor's pixels for every image's size and all share one size, else the processor's own."""
        if batched and len({image.size for image in images}) == 1:
            pixels = batched_pixels(self.processor, images)
            if pixels is not None:
                return pixels
        return self.inputs(images, [""] * len(images))["pixel_values"]

    def logits_from_features(self, pairs: Sequence[tuple[EncodedImage, str]]) -> torch.Tensor:
        """Next-token logits for (encoded image, question) pairs: the prompt tokens with the image's span in place of
        its placeholder, left-padded as the processor pads, and the image's features handed to the forward."""
        import numpy as np
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        image_token = self.model.config.image_token_id
        rows = []
        for image, question in pairs:
            ids = self._prompt_ids(question)
            at = ids.index(image_token)
            rows.append(ids[:at] + image.span + ids[at + 1 :])
        width = max(len(r) for r in rows)
        # Filled through numpy: torch.tensor on nested lists of a few thousand ids takes longer than the text pass of
        # a small model.
        input_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row) :] = row
            mask[index, width - len(row) :] = 1
        input_ids, mask = torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)
        parts = [image.features for image, _ in pairs]
        # Handed over in the layout get_image_features gave: stacked tiles (3-d), or one tensor per image (2-d).
        features = BaseModelOutputWithPooling(pooler_output=torch.cat(parts) if parts[0].ndim == 3 else parts)
        kwargs = {"logits_to_keep": 1} if self.keep_last else {}
        out = self.model(input_ids=input_ids, attention_mask=mask, mm_encoder_outputs={"image": features}, **kwargs)
        return out.logits[:, -1, :]


@dataclass
class ImageLayout:
    """What the processor makes of an image of one size: the prompt token span standing for it, and whether
    ``batched_pixels`` reproduces its pixels."""

    span: list[int]
    batched: bool


@dataclass
class EncodedImage:
    """One image after the vision tower and projector: its feature rows (tiles x tokens x width) and the prompt token
    span that stands for it."""

    features: torch.Tensor
    span: list[int]


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# --- choosing the loader -------------------------------------------------------------------------------------------
_INTERNVL2_HUB = re.compile(r"^OpenGVLab/(Mini-)?InternVL(2|2_5|2\.5|3)?(-\w+)*$", re.IGNORECASE)


def _local_config(ref: str) -> dict[str, Any] | None:
    path = Path(ref).expanduser() / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None


def needs_remote_code(ref: str) -> bool:
    """True for checkpoints whose model class ships with the checkpoint (``auto_map`` in config.json)."""
    config = _local_config(ref)
    if config is not None:
        return "auto_map" in config and "AutoModelForImageTextToText" not in config.get("auto_map", {})
    return bool(_INTERNVL2_HUB.match(ref)) and not ref.lower().endswith("-hf")


def resolve_loader(
    ref: str, loader: Literal["auto", "native", "internvl2"], trust_remote_code: bool, field: str
) -> Literal["native", "internvl2"]:
    """Which loader ``ref`` needs; refuses remote code unless the config allows it (checked before any cache lookup)."""
    kind: Literal["native", "internvl2"] = (
        loader if loader != "auto" else ("internvl2" if needs_remote_code(ref) else "native")
    )
    if kind == "internvl2" and not trust_remote_code:
        raise LoratuneError(
            f"{field}: {ref!r} runs code shipped with the checkpoint; set evaluation.trust_remote_code: true to "
            "allow it, or use a transformers-native checkpoint (e.g. OpenGVLab/InternVL3-1B-hf)"
        )
    return kind


def load_vlm(
    ref: str,
    loader: Literal["auto", "native", "internvl2"],
    device: Any,
    dtype: Any,
    trust_remote_code: bool,
    field: str,
    max_tiles: int | None = None,
) -> YesNoVlm:
    if resolve_loader(ref, loader, trust_remote_code, field) == "internvl2":
        from loratune.metrics.internvl2_remote import InternVL2RemoteVlm

        return InternVL2RemoteVlm(ref, device, dtype, field, trust_remote_code, max_tiles)
    return NativeVlm(ref, device, dtype, field)
