"""DreamSim identity: similarity = 1 - DreamSim distance, i.e. the cosine of DreamSim embeddings (Fu et al. 2023).

DreamSim is tuned on human judgements of "looks the same", which makes it a good identity measure where face detectors
fail (stylised 3D/anime characters). Per-image values and the aggregate follow ``embedding_identity`` (similarity to
the character's references, and across generations).

Loading: the ``dreamsim`` package downloads a checkpoint zip into ``cache_dir`` on first use — even with
``pretrained=False`` it needs the unzipped base-ViT files and the LoRA folder there — and it only skips the download
when every file it expects exists. So ``model`` is the folder holding the unzipped checkpoint (for the default
``ensemble``: dino_vitb16_pretrain.pth, open_clip_vitb16_pretrain.pth.tar, clip_vitb16_pretrain.pth.tar,
ensemble_lora/); when it is a folder name that does not exist yet, dreamsim downloads into it. The DINO variants
additionally fetch DINO's model code through torch.hub (cached under the same folder); the CLIP/OpenCLIP variants
(``clip_vitb32``, ``open_clip_vitb32``) need nothing beyond the folder, so they run offline once it is filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.cache import cached_model
from loratune.metrics.embedding_identity import _EmbeddingIdentity
from loratune.metrics.openclip_models import first_line
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    import torch
    from PIL import Image

DreamSimType = Literal["ensemble", "dino_vitb16", "dinov2_vitb14", "clip_vitb32", "open_clip_vitb32", "synclr_vitb16"]
DEFAULT_CACHE = "~/.cache/loratune/dreamsim"


class DreamSimEncoder:
    """A loaded DreamSim model and its preprocessing; ``embed_images`` gives unit-norm embeddings."""

    def __init__(self, cache_dir: Path, dreamsim_type: str, pretrained: bool, device: Any, field: str) -> None:
        from dreamsim import dreamsim

        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.model, self.preprocess = dreamsim(
                pretrained=pretrained,
                device=str(device),
                cache_dir=str(cache_dir),
                normalize_embeds=True,
                dreamsim_type=dreamsim_type,
            )
        except Exception as err:  # noqa: BLE001  (no network, an incomplete folder, a half-downloaded zip)
            raise LoratuneError(
                f"{field}: cannot load DreamSim {dreamsim_type!r} from {cache_dir} ({first_line(err)}); "
                "put the unzipped DreamSim checkpoint there"
            ) from None
        self.model.to(device)
        self.device = device

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.cat([self.preprocess(img) for img in images[start : start + batch_size]]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.embed(x).float(), dim=-1).cpu())
        return torch.cat(out)


class DreamSimIdentity(_EmbeddingIdentity):
    """Character consistency as DreamSim similarity (1 - distance) to references and across generations."""

    class Options(_EmbeddingIdentity.Options):
        dreamsim_type: DreamSimType = Field("ensemble", description="which DreamSim model (the package's names)")
        pretrained: bool = Field(True, description="load DreamSim's fine-tuned LoRA (false: base ViTs only, stand-in)")

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ref = self.config.model or DEFAULT_CACHE
        self.cache_dir = Path(ref).expanduser()
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise LoratuneError(f"{self.model_field}: DreamSim needs a checkpoint folder, not a file: {ref}")
        self.model_id = f"dreamsim:{self.options.dreamsim_type} ({self.cache_dir})"
        self.stand_in = is_stand_in(str(self.cache_dir)) or not self.options.pretrained

    def load(self) -> None:
        opts = self.options
        key = ("dreamsim", str(self.cache_dir), opts.dreamsim_type, opts.pretrained, str(self.runtime.device))
        self.encoder = cached_model(
            key,
            lambda: DreamSimEncoder(
                self.cache_dir, opts.dreamsim_type, opts.pretrained, self.runtime.device, self.model_field
            ),
        )
