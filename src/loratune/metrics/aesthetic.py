"""LAION Aesthetics Predictor V2 (christophschuhmann/improved-aesthetic-predictor): an MLP on CLIP image embeddings.

The public checkpoint (``sac+logos+ava1-l14-linearMSE.pth``) is the state dict of the ``MLP`` below, fed the
L2-normalised CLIP ViT-L/14 (OpenAI) image embedding; it predicts a rating on the AVA/SAC 1-10 scale. The output is
reported as the MLP gives it (not clipped), so it is exactly what the public predictor prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from loratune.errors import LoratuneError
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.cache import cached_model
from loratune.metrics.embedding_cache import embed_images
from loratune.metrics.openclip_models import first_line, load_open_clip, resolve_open_clip
from loratune.modelref import is_stand_in

PUBLIC_HIDDEN = (1024, 128, 64, 16)
LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in the public nn.Sequential


class AestheticMLP(nn.Module):
    """The public predictor's network, layer for layer (dropouts included, no activations), as ``self.layers``."""

    def __init__(self, input_size: int = 768, hidden: tuple[int, int, int, int] = PUBLIC_HIDDEN) -> None:
        super().__init__()
        self.input_size = input_size
        h1, h2, h3, h4 = hidden
        self.layers = nn.Sequential(
            nn.Linear(input_size, h1),
            nn.Dropout(0.2),
            nn.Linear(h1, h2),
            nn.Dropout(0.2),
            nn.Linear(h2, h3),
            nn.Dropout(0.1),
            nn.Linear(h3, h4),
            nn.Linear(h4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> AestheticMLP:
        """Build with the widths the state dict holds (768 inputs for ViT-L/14) and load it strictly."""
        missing = [f"layers.{i}.weight" for i in LINEAR_INDICES if f"layers.{i}.weight" not in state]
        if missing:
            raise ValueError(f"not a LAION aesthetic MLP state dict (missing {', '.join(missing)})")
        widths = [int(state[f"layers.{i}.weight"].shape[0]) for i in LINEAR_INDICES[:4]]
        model = cls(int(state["layers.0.weight"].shape[1]), tuple(widths))  # type: ignore[arg-type]
        model.load_state_dict(state, strict=True)
        return model.eval()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a torch pickle read with ``weights_only=True`` (never arbitrary unpickling)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict, found {type(state).__name__}")
    return state


def resolve_hub_file(ref: str, field: str) -> str:
    """A local file, or ``owner/repo/path/in/repo`` fetched with ``huggingface_hub.hf_hub_download`` (cached)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return str(path)
    parts = ref.split("/")
    if path.exists() or ref.startswith((".", "/", "~")) or len(parts) < 3:
        raise LoratuneError(f"{field}: model path not found: {ref} (a file, or a hub file as owner/repo/filename)")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:]))
    except Exception as err:  # noqa: BLE001  (any load failure is the user's file or network)
        raise LoratuneError(f"{field}: cannot download {ref}: {first_line(err)}") from None


class LaionAesthetic(Backend):
    """LAION Aesthetics Predictor V2 score (1-10) per image; mean over images."""

    class Options(Backend.Options):
        clip_model: str = Field(
            "ViT-L-14", description="open_clip model giving the image embedding (or a local folder)"
        )
        clip_pretrained: str | None = Field(None, description="open_clip tag or file (default: openai)")
        clip_architecture: str | None = Field(None, description="open_clip model name when clip_model is a checkpoint")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        self.model_field = f"{self.field_path}.model"
        path = Path(self.model_id).expanduser()
        if not path.is_file() and (
            path.exists() or self.model_id.startswith((".", "/", "~")) or self.model_id.count("/") < 2
        ):
            raise LoratuneError(f"{self.model_field}: model path not found: {self.model_id}")
        self.clip_source = resolve_open_clip(
            self.options.clip_model,
            self.options.clip_pretrained,
            self.options.clip_architecture,
            f"{self.field_path}.clip_model",
            options_field=self.field_path,
        )
        self.stand_in = is_stand_in(self.model_id) or self.clip_source.stand_in
        self.reset()

    def load(self) -> None:
        rt = self.runtime
        weights = resolve_hub_file(self.model_id or "", self.model_field)

        def loader() -> AestheticMLP:
            try:
                return AestheticMLP.from_state_dict(load_state_dict_file(weights))
            except Exception as err:  # noqa: BLE001  (any load failure is the user's file or network)
                raise LoratuneError(f"{self.model_field}: cannot load {weights}: {first_line(err)}") from None

        self.mlp = cached_model(("laion_aesthetic", weights, str(rt.device)), lambda: loader().to(rt.device))
        self.encoder = load_open_clip(self.clip_source, rt.device, rt.dtype, f"{self.field_path}.clip_model")
        self._check_dim(self.encoder.embed_dim)

    def _check_dim(self, dim: int) -> None:
        if dim and dim != self.mlp.input_size:
            raise LoratuneError(
                f"{self.field_path}.clip_model: {self.clip_source.label} gives {dim}-d embeddings but the aesthetic "
                f"MLP {self.model_id} expects {self.mlp.input_size}-d (the public one needs ViT-L-14)"
            )

    def reset(self) -> None:
        self._scores: list[float] = []

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores for L2-normalised embeddings (one row per image)."""
        self._check_dim(int(embeddings.shape[-1]))
        with torch.inference_mode():
            return self.mlp(embeddings.to(self.runtime.device, torch.float32)).squeeze(-1).float().cpu()

    def update(self, batch: list[EvalImage]) -> None:
        embeddings = embed_images(self.runtime, self.encoder, [img.image for img in batch])
        self._scores.extend(self.predict(embeddings).tolist())

    def compute(self) -> AxisResult:
        if not self._scores:
            return self.missing("no images")
        details = {"min": min(self._scores), "max": max(self._scores), "clip_model": self.clip_source.label}
        return self.result(sum(self._scores) / len(self._scores), per_image=list(self._scores), details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "clip_model": self.clip_source.label}
