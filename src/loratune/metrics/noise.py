"""Technical quality as the image's noise level: scikit-image's wavelet estimate of the noise's standard deviation
(Donoho & Johnstone: the median absolute deviation of the finest diagonal wavelet coefficients / 0.6745), in grey
levels (0-255), averaged over the colour channels. Weight-free and real everywhere.

Why it is offered beside PIQE: grain and speckle are what an over-trained LoRA adds, and this estimate sees only
those. PIQE and its kin judge an image by natural-photo statistics, so on flat-shaded styles (3D animation, anime,
cel shading) they read clean flat regions as missing detail or blocking and rate the clean image worse than a grainy
one; the study's quality check (``scorer_checks.quality_check``) says when the configured metric does that. Smooth
regions and straight edges leave the finest wavelet band almost empty, so a flat-shaded image scores near 0 here.
It does not see blur: pair it with alignment and identity, which do.
"""

from __future__ import annotations

from typing import Any

from loratune.metrics.base import AxisResult, Backend, EvalImage


class NoiseLevel(Backend):
    """Mean estimated noise standard deviation over the images, in grey levels; lower is better."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_id = "skimage.restoration.estimate_sigma"
        self.reset()

    def reset(self) -> None:
        self.per_image: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        import numpy as np
        from skimage.restoration import estimate_sigma

        for item in batch:
            pixels = np.asarray(item.image.convert("RGB"), dtype=np.float64) / 255.0
            self.per_image.append(255.0 * float(estimate_sigma(pixels, channel_axis=-1, average_sigmas=True)))

    def compute(self) -> AxisResult:
        scores = [s for s in self.per_image if s is not None]
        if not scores:
            return self.missing("no images")
        return self.result(sum(scores) / len(scores), per_image=list(self.per_image),
                           details={"unit": "grey levels (0-255)", "max": max(scores)})
