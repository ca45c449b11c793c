"""InternVL's image preparation on a whole batch: the processor's own tile/resize and normalisation steps, run on all
images of one size at once. The scorer checks per image size that these pixels are the processor's
(``NativeVlm.layout``) before it uses them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


def batched_pixels(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor | None:
    """InternVL's tiling processor (``crop_to_patches``): its resize/tile and normalisation on all of ``images``
    (one size) at once, or None for other processors. transformers turns batching off on CPU and runs them image
    by image, then copies the pixels twice more (a stack, then a concatenation), which costs more than the vision
    tower of a small model."""
    import numpy as np
    import torch

    proc = getattr(processor, "image_processor", None)
    if proc is None or not getattr(proc, "crop_to_patches", False) or not hasattr(proc, "crop_image_to_patches"):
        return None
    if not (proc.do_rescale and proc.do_normalize):
        return None
    x = torch.stack([torch.from_numpy(np.array(image.convert("RGB"))) for image in images]).permute(0, 3, 1, 2)
    if proc.get_number_of_image_patches(x.shape[-2], x.shape[-1], {}) == 1:
        tiles = proc.resize(x, proc.size, resample=proc.resample)  # one tile, no thumbnail: the crop is the resize
    else:
        tiles = proc.crop_image_to_patches(
            x, proc.min_patches, proc.max_patches, patch_size=proc.size, resample=proc.resample
        ).flatten(0, 1)
    # One copy to float, channels first (the resize leaves them last), normalised in place with the rescale folded
    # into mean and std as transformers folds it: a second full-size tensor costs as much as the arithmetic.
    pixels = tiles.to(torch.float32, memory_format=torch.contiguous_format)
    mean = torch.tensor(proc.image_mean) * (1.0 / proc.rescale_factor)
    std = torch.tensor(proc.image_std) * (1.0 / proc.rescale_factor)
    return proc.normalize(pixels, mean, std, inplace=True)
