"""Diversity: mean pairwise LPIPS distance among the images that share a prompt (and character), i.e. across seeds.

Every image is resized to a fixed square size and scaled to [-1, 1] (LPIPS' input convention). Backbone features are
computed once per image and reused for all of its pairs (the lpips package would recompute them per pair). The
distance is ``lpips.LPIPS.forward``'s ``sum_k spatial_mean(lin_k((f0_k - f1_k)^2))`` on unit-normalised features,
rearranged so that no pair's difference map is ever built: ``lin_k`` is a bias-free 1x1 convolution with weights
``w_c``, so the term is ``sum_c w_c mean_p((a_cp - b_cp)^2) = q(a) + q(b) - 2 g(a, b)`` with ``g`` the inner product
``sum_cp w_c a_cp b_cp / pixels`` and ``q(a) = g(a, a)``: one matrix product of the layers' features side by side
(weighted on one side) gives every pair of a group.

The value is the mean over prompt groups of each group's mean pairwise distance; groups of one image are left out.
``VendiDiversity`` is the embedding-based alternative (Vendi score of CLIP image embeddings per group).
LPIPS needs torchvision's ImageNet backbone; offline, ``pretrained_backbone: false`` (or
``missing_backbone: stand_in``) uses a randomly initialised one, reported as stand-in weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.cache import cached_model
from loratune.metrics.embedding_cache import embed_images
from loratune.metrics.openclip_models import first_line, load_clip_image, resolve_clip_image

if TYPE_CHECKING:
    import torch
    from PIL import Image

NETS = ("alex", "vgg", "squeeze")
_TORCHVISION_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def backbone_checkpoint(net: str) -> Path:
    """Where torch.hub keeps torchvision's ImageNet weights for the LPIPS backbone (downloaded there when online)."""
    import torch
    import torchvision

    url = getattr(torchvision.models, _TORCHVISION_WEIGHTS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resize_for_lpips(image: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> 3xSxS uint8 tensor (bicubic); kept as uint8 until scoring: a quarter of the memory of floats."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    resized = image.convert("RGB").resize((size, size), PILImage.Resampling.BICUBIC)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)


def to_lpips_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1] floats, as ``lpips.im2tensor`` (x / 127.5 - 1)."""
    return pixels.float() / 127.5 - 1.0


class LpipsPairs:
    """``lpips.LPIPS`` split in two: features once per image, then distances for any set of pairs."""

    def __init__(self, model: Any, device: Any) -> None:
        self.model = model
        self.device = device

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        import lpips
        import torch

        with torch.inference_mode():
            outs = self.model.net.forward(self.model.scaling_layer(x.to(self.device)))
            return [lpips.normalize_tensor(o) for o in outs]

    def distances(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The n x n LPIPS distances among the n images whose ``features`` these are."""
        import torch

        weighted, plain = [], []
        with torch.inference_mode():
            for f, lin in zip(feats, self.model.lins):
                conv = lin.model[-1]  # NetLinLayer: a dropout (off in eval) then the bias-free 1x1 convolution
                flat = f.flatten(2)  # images x channels x pixels
                weighted.append((flat * (conv.weight.view(1, -1, 1) / flat.shape[-1])).flatten(1))
                plain.append(flat.flatten(1))
            # In float64 (MPS has none): q(a) + q(b) - 2 g(a, b) cancels, and float32 over a long sum would lose the
            # 1e-7 that lpips keeps.
            exact = torch.float32 if torch.device(self.device).type == "mps" else torch.float64
            gram = torch.cat(weighted, dim=1).to(exact) @ torch.cat(plain, dim=1).to(exact).T
            square = gram.diagonal()
            return (square[:, None] + square[None, :] - 2 * gram).float().cpu()


def load_lpips(
    net: str, pretrained_backbone: bool, missing_backbone: str, device: Any, field: str
) -> tuple[LpipsPairs, bool]:
    """The LPIPS model (calibrated linear heads from the package) and whether its backbone is a stand-in."""

    def loader() -> tuple[LpipsPairs, bool]:
        with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated `pretrained=` argument
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            return build()

    def build() -> tuple[LpipsPairs, bool]:
        import lpips
        import torch

        if pretrained_backbone:
            try:
                return LpipsPairs(lpips.LPIPS(net=net, verbose=False).to(device).eval(), device), False
            except Exception as err:  # noqa: BLE001  (torchvision's download: offline, firewalled, corrupt cache)
                if missing_backbone == "error":
                    raise LoratuneError(
                        f"{field}: cannot load torchvision's pretrained {net} backbone for LPIPS ({first_line(err)}); "
                        f"put it at {backbone_checkpoint(net)} or set pretrained_backbone: false (stand-in weights)"
                    ) from None
        # A seeded random backbone, so stand-in scores at least repeat from run to run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        return LpipsPairs(model.to(device).eval(), device), True

    return cached_model(("lpips", net, pretrained_backbone, missing_backbone, str(device)), loader)


class LpipsDiversity(Backend):
    """Mean pairwise LPIPS among images of the same prompt; higher = more varied generations."""

    class Options(Backend.Options):
        size: int = Field(256, ge=32, le=2048, description="images are resized to size x size before LPIPS")
        pretrained_backbone: bool = Field(True, description="torchvision ImageNet backbone (false: random stand-in)")
        missing_backbone: Literal["error", "stand_in"] = Field(
            "error", description="when the pretrained backbone cannot be loaded: fail, or fall back to a stand-in"
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.model_id not in NETS:
            raise LoratuneError(
                f"{self.field_path}.model: LPIPS network must be one of {', '.join(NETS)} (got {self.model_id!r})"
            )
        self.stand_in = not self.options.pretrained_backbone
        self.reset()

    def load(self) -> None:
        assert self.model_id is not None
        self.lpips, self.stand_in = load_lpips(
            self.model_id,
            self.options.pretrained_backbone,
            self.options.missing_backbone,
            self.runtime.device,
            f"{self.field_path}.model",
        )

    def reset(self) -> None:
        self._groups: dict[str, list[int]] = {}
        self._labels: dict[str, tuple[str | None, str | None]] = {}
        self._inputs: list[torch.Tensor] = []

    def update(self, batch: list[EvalImage]) -> None:
        for img in batch:
            self._groups.setdefault(img.group, []).append(len(self._inputs))
            self._labels[img.group] = (img.character, img.prompt)
            self._inputs.append(resize_for_lpips(img.image, self.options.size))

    def _group_distances(self, rows: list[int]) -> torch.Tensor:
        """The n x n LPIPS distances among the group's images (zero diagonal)."""
        import torch

        batch = self.runtime.batch_size
        feats: list[list[torch.Tensor]] = []
        for start in range(0, len(rows), batch):
            x = to_lpips_input(torch.stack([self._inputs[r] for r in rows[start : start + batch]]))
            feats.append(self.lpips.features(x))
        layers = [torch.cat([f[k] for f in feats]) if len(feats) > 1 else feats[0][k] for k in range(len(feats[0]))]
        return self.lpips.distances(layers)

    def compute(self) -> AxisResult:
        import torch

        per_image: list[float | None] = [None] * len(self._inputs)
        groups: list[dict[str, Any]] = []
        for key, rows in self._groups.items():
            if len(rows) < 2:
                continue
            distances = self._group_distances(rows)
            n = len(rows)
            for row, mean in zip(rows, (distances.sum(1) / (n - 1)).tolist()):
                per_image[row] = mean
            dist = distances[tuple(torch.triu_indices(n, n, offset=1))]
            character, prompt = self._labels[key]
            groups.append(
                {
                    "prompt": prompt,
                    "character": character,
                    "images": n,
                    "pairs": len(dist),
                    "mean_lpips": float(dist.mean()),
                }
            )
        singles = sum(1 for rows in self._groups.values() if len(rows) < 2)
        details: dict[str, Any] = {"groups": groups, "size": self.options.size, "net": self.model_id}
        if singles:
            details["single_image_groups"] = singles
        if self.stand_in:
            details["backbone"] = "random (stand-in weights): torchvision's pretrained backbone was not used"
        if not groups:
            return self.missing(
                "no prompt has two or more images (diversity compares seeds of one prompt)",
                per_image=per_image,
                details=details,
            )
        return self.result(sum(g["mean_lpips"] for g in groups) / len(groups), per_image=per_image, details=details)


class VendiDiversity(Backend):
    """Vendi score (Friedman & Dieng, 2023) of CLIP image embeddings among the images of one prompt.

    Per group of n images: VS = exp(entropy of the eigenvalues of K / n), K the cosine-similarity matrix of the
    embeddings, i.e. the effective number of distinct images (1 = all the same, n = all orthogonal). Groups differ in
    size, so each is reported raw and as (VS - 1) / (n - 1) in [0, 1]; the value is the mean of the latter.
    """

    class Options(Backend.Options):
        library: Literal["auto", "open_clip", "hf"] = Field(
            "auto", description="auto: open_clip for open_clip names/folders/files and hf-hub:, else transformers"
        )
        pretrained: str | None = Field(None, description="open_clip pretrained tag, checkpoint file, or 'random'")
        architecture: str | None = Field(None, description="open_clip model name when `model` is a checkpoint file")
        q: float = Field(1.0, gt=0, description="order of the entropy (1: Shannon, the paper's default)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        opts = self.options
        self.model_field = f"{self.field_path}.model"
        self.clip = resolve_clip_image(
            self.model_id, opts.library, opts.pretrained, opts.architecture, self.model_field
        )
        self.stand_in = self.clip.stand_in
        self.reset()

    def load(self) -> None:
        self.encoder = load_clip_image(self.clip, self.runtime, self.model_field)

    def reset(self) -> None:
        self._groups: dict[str, list[int]] = {}
        self._labels: dict[str, tuple[str | None, str | None]] = {}
        self._embeddings: list[torch.Tensor] = []

    def update(self, batch: list[EvalImage]) -> None:
        embeddings = embed_images(self.runtime, self.encoder, [img.image for img in batch])
        for img, emb in zip(batch, embeddings):
            self._groups.setdefault(img.group, []).append(len(self._embeddings))
            self._labels[img.group] = (img.character, img.prompt)
            self._embeddings.append(emb)

    def compute(self) -> AxisResult:
        import torch
        from vendi_score import vendi

        groups: list[dict[str, Any]] = []
        for key, rows in self._groups.items():
            n = len(rows)
            if n < 2:
                continue
            e = torch.stack([self._embeddings[r] for r in rows]).double()
            score = float(vendi.score_K((e @ e.T).numpy(), q=self.options.q))
            character, prompt = self._labels[key]
            groups.append(
                {
                    "prompt": prompt,
                    "character": character,
                    "images": n,
                    "vendi": score,
                    "normalised": (score - 1.0) / (n - 1),
                }
            )
        details: dict[str, Any] = {"groups": groups, "q": self.options.q, "model": self.clip.label}
        singles = sum(1 for rows in self._groups.values() if len(rows) < 2)
        if singles:
            details["single_image_groups"] = singles
        if not groups:
            return self.missing(
                "no prompt has two or more images (diversity compares seeds of one prompt)", details=details
            )
        return self.result(sum(g["normalised"] for g in groups) / len(groups), details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.clip.label}
