"""timm image backbones (DINOv2 and friends) for the embedding backends, loaded like the CLIP models in
``loratune.metrics.openclip_models``: by registry name, ``hf-hub:`` id, local folder or checkpoint file, once per
process, giving L2-normalised embeddings."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.errors import LoratuneError, first_line
from loratune.metrics.cache import cached_model
from loratune.metrics.openclip_models import batches, device_key, normalise, seeded
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    import torch
    from PIL import Image


class TimmModel:
    """A timm backbone with its classifier removed (``num_classes=0``: pooled pre-logits features)."""

    def __init__(self, model: Any, transform: Callable[[Any], Any], device: Any) -> None:
        self.model = model
        self.transform = transform
        self.device = device
        self.dtype = next(model.parameters()).dtype

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size):
                pixels = torch.stack([self.transform(img) for img in chunk]).to(self.device, self.dtype)
                out.append(normalise(self.model(pixels).flatten(1)).cpu())
        return torch.cat(out)


def is_timm_folder(path: Path) -> bool:
    """timm's hub layout: ``config.json`` with an ``architecture`` key (transformers' has ``model_type``)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "architecture" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".", 1)[0]) and "/" not in name


def load_timm(
    ref: str, device: Any, dtype: Any, field: str, architecture: str | None = None, pretrained: bool = True
) -> tuple[TimmModel, bool]:
    """A timm model by registry name (``vit_small_patch14_dinov2.lvd142m``), ``hf-hub:`` id, local folder in timm's
    hub layout, or a checkpoint file + ``architecture``. Returns the model and whether its weights are stand-ins."""
    path = Path(ref).expanduser()
    opt = field.rsplit(".", 1)[0]
    kwargs: dict[str, Any] = {"num_classes": 0}
    stand_in = False
    if path.is_dir():
        if not is_timm_folder(path):
            raise LoratuneError(f"{field}: {ref} is not a timm model folder (config.json without 'architecture')")
        name, kwargs["pretrained"] = f"local-dir:{path}", True
        stand_in = is_stand_in(str(path))
    elif path.is_file():
        if not architecture or not is_timm_name(architecture):
            raise LoratuneError(
                f"{opt}.architecture: a timm checkpoint file needs its timm model name (got {architecture!r})"
            )
        name, kwargs["pretrained"] = architecture, True
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        stand_in = is_stand_in(str(path))
    elif ref.startswith("hf-hub:") or is_timm_name(ref):
        name, kwargs["pretrained"] = ref, pretrained
        stand_in = not pretrained
    else:
        raise LoratuneError(f"{field}: model path not found and not a timm model name: {ref}")

    def loader() -> TimmModel:
        import timm
        from timm.data import create_transform, resolve_model_data_config

        try:
            with seeded():
                model = timm.create_model(name, **kwargs)
        except Exception as err:  # noqa: BLE001  (any load failure is the user's file or network)
            raise LoratuneError(f"{field}: cannot load timm model {ref}: {first_line(err)}") from None
        model = model.to(device=device, dtype=dtype or next(model.parameters()).dtype).eval()
        transform = create_transform(**resolve_model_data_config(model), is_training=False)
        return TimmModel(model, transform, device)

    key = ("timm", name, str(kwargs.get("pretrained_cfg_overlay")), kwargs["pretrained"], *device_key(device, dtype))
    return cached_model(key, loader), stand_in
