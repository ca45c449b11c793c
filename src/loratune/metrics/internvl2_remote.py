"""The original InternVL2 checkpoints (OpenGVLab/InternVL2-1B/2B/8B), whose model code ships with the checkpoint:
upstream's 448-px dynamic tiling and conversation prompt, logits read from ``forward()``. Loaded by
``loratune.metrics.vlm_models.load_vlm`` only when the config sets ``evaluation.trust_remote_code``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loratune.errors import LoratuneError
from loratune.metrics.openclip_models import first_line
from loratune.metrics.vlm_models import YesNoVlm, yes_no_ids

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- upstream InternVL preprocessing (model card of OpenGVLab/InternVL2-*) --------------------------------------------
def build_transform(input_size: int) -> Any:
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    return T.Compose(
        [
            T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
            T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def find_closest_aspect_ratio(
    aspect_ratio: float, target_ratios: list[tuple[int, int]], width: int, height: int, image_size: int
) -> tuple[int, int]:
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in target_ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio  # a large image prefers the grid with more tiles among equally good shapes
    return best


def dynamic_preprocess(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = False
) -> list[Image.Image]:
    """Split ``image`` into a grid of ``image_size`` tiles shaped closest to the image's aspect ratio (+ thumbnail)."""
    width, height = image.size
    ratios = sorted(
        {
            (i, j)
            for n in range(min_num, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_num <= i * j <= max_num
        },
        key=lambda r: r[0] * r[1],
    )
    cols, rows = find_closest_aspect_ratio(width / height, ratios, width, height, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = [
        resized.crop(
            (
                (k % cols) * image_size,
                (k // cols) * image_size,
                (k % cols + 1) * image_size,
                (k // cols + 1) * image_size,
            )
        )
        for k in range(cols * rows)
    ]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


class InternVL2RemoteVlm(YesNoVlm):
    """Original InternVL2 checkpoints (remote code): upstream tiling and prompt, logits from ``forward()``."""

    def __init__(
        self, ref: str, device: Any, dtype: Any, field: str, trust_remote_code: bool, max_tiles: int | None = None
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.model = AutoModel.from_pretrained(ref, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
            self.tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code, use_fast=False)
        except Exception as err:  # noqa: BLE001  (also ImportError: packages the checkpoint's own code imports)
            raise LoratuneError(f"{field}: cannot load InternVL2 model {ref!r}: {first_line(err)}") from None
        self.model.to(device).eval()
        self.device = device
        config = self.model.config
        self.image_size = int(getattr(config, "force_image_size", None) or config.vision_config.image_size)
        self.max_tiles = int(max_tiles or getattr(config, "max_dynamic_patch", 12))
        self.dynamic = bool(getattr(config, "dynamic_image_size", True))
        self.use_thumbnail = bool(getattr(config, "use_thumbnail", True))
        self.transform = build_transform(self.image_size)
        self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.yes_ids, self.no_ids = yes_no_ids(self.tokenizer, field)
        # The conversation templates live in the checkpoint's own conversation.py, imported by its modeling module.
        self.get_conv_template = sys.modules[type(self.model).__module__].get_conv_template

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        if not self.dynamic:
            return [image]
        return dynamic_preprocess(image, 1, self.max_tiles, self.image_size, self.use_thumbnail)

    def prompt(self, question: str, num_tiles: int) -> str:
        template = self.get_conv_template(self.model.template)
        template.system_message = self.model.system_message
        template.append_message(template.roles[0], "<image>\n" + question)
        template.append_message(template.roles[1], None)
        image_tokens = IMG_START + IMG_CONTEXT * self.model.num_image_token * num_tiles + IMG_END
        return template.get_prompt().replace("<image>", image_tokens, 1)

    def inputs(self, images: Sequence[Image.Image], questions: Sequence[str]) -> tuple[torch.Tensor, Any]:
        """(every image's tiles as one pixel batch, the tokenized prompts, left-padded)."""
        import torch

        pixel_values, prompts = [], []
        for image, question in zip(images, questions):
            tiles = self.tiles(image)
            pixel_values.extend(self.transform(tile) for tile in tiles)
            prompts.append(self.prompt(question, len(tiles)))
        pixels = torch.stack(pixel_values).to(self.device, self.model.dtype)
        return pixels, self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)

    def last_logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import torch

        out = self.model(
            pixel_values=pixels,
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_flags=torch.ones(pixels.shape[0], 1, dtype=torch.long, device=self.device),
            return_dict=True,
        )
        return out.logits[:, -1, :]

    def next_token_logits(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        pixels, enc = self.inputs(images, questions)
        return self.last_logits(pixels, enc["input_ids"], enc["attention_mask"])
