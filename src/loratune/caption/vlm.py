"""Captions from the configured vision-language model: the very model VQAScore uses, asked to describe what is not the
character (pose, framing, background, clothing).

Native transformers VLMs generate with ``model.generate``. The original remote-code InternVL2 checkpoints cannot
(their language models lose ``generate`` on transformers >= 4.50, and ``chat()`` calls ``.cuda()``), so for them the
answer is decoded greedily from ``forward()`` — the same logits VQAScore reads, one token at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.caption.base import Captioner
from loratune.metrics.cache import cached_model
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    from PIL import Image

    from loratune.config import Config

QUESTION = (
    "Describe this image in one sentence: the person's pose, the framing, the background and the clothing. "
    "Do not describe their face, hair or body."
)
VLM_BACKENDS = ("vqascore", "traits")


class VlmCaptioner(Captioner):
    class Options(Captioner.Options):
        question: str = Field(QUESTION, min_length=1)
        max_new_tokens: int = Field(60, ge=1, le=512)

    options: Options

    def default_model(self, config: Config) -> str:
        """The model of the VQAScore (or traits) backend the config scores with, else VQAScore's default."""
        from loratune.metrics.registry import BACKENDS

        for axis in ("alignment", "consistency"):
            backend = config.evaluation.backends.get(axis)  # type: ignore[call-overload]
            if backend is not None and backend.name in VLM_BACKENDS:
                return backend.model or BACKENDS[backend.name].default_model or ""
        return BACKENDS["vqascore"].default_model or ""

    def load(self) -> None:
        from loratune.metrics.vlm_models import load_vlm, resolve_loader

        ref, rt = self.model_id, self.runtime
        kind = resolve_loader(ref, "auto", rt.trust_remote_code, "caption.model")
        # VQAScore's key: a run that captions and scores in one process loads the model once.
        key = ("vlm", ref, kind, str(rt.device), str(rt.dtype), None)
        self.vlm = cached_model(key, lambda: load_vlm(ref, kind, rt.device, rt.dtype, rt.trust_remote_code,
                                                      "caption.model"))
        self.stand_in = is_stand_in(ref)

    def describe(self, images: Sequence[Image.Image]) -> list[Any]:
        import torch

        from loratune.metrics.vlm_models import NativeVlm

        questions = [self.options.question] * len(images)
        with torch.inference_mode():
            if isinstance(self.vlm, NativeVlm):
                return self._generate(self.vlm, images, questions)
            return self._greedy(images, questions)

    def _generate(self, vlm: Any, images: Sequence[Image.Image], questions: list[str]) -> list[str]:
        inputs = vlm.inputs(images, questions).to(vlm.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(vlm.model.dtype)
        out = vlm.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens, do_sample=False)
        answers = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in vlm.processor.batch_decode(answers, skip_special_tokens=True)]

    def _greedy(self, images: Sequence[Image.Image], questions: list[str]) -> list[str]:
        """Greedy decoding through ``forward()`` (remote-code InternVL2): each step re-reads the whole prompt, as
        VQAScore's single step does, and appends the most likely token."""
        import torch

        vlm = self.vlm
        tokenizer = vlm.tokenizer
        stops = {tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|end|>"):
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) == 1:
                stops.add(ids[0])
        pixels, enc = vlm.inputs(images, questions)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        start = ids.shape[1]
        done = torch.zeros(len(images), dtype=torch.bool, device=ids.device)
        for _ in range(self.options.max_new_tokens):
            step = vlm.last_logits(pixels, ids, mask).argmax(-1)
            step = torch.where(done, torch.full_like(step, tokenizer.pad_token_id), step)
            ids = torch.cat([ids, step[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            done |= torch.isin(step, torch.tensor(sorted(stops), device=step.device))
            if bool(done.all()):
                break
        return [t.strip() for t in tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True)]
