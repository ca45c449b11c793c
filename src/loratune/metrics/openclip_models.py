"""Image/text embedding models shared by the CLIP-based backends: open_clip and Hugging Face transformers (timm:
``loratune.metrics.timm_models``).

Every loader takes a hub id **or** a local path through the library's own call, validates the reference before
loading (so a bad value fails fast with one line naming the config field), loads through ``cached_model`` (once per
process, keyed by everything that changes the loaded object) and returns a small wrapper whose ``embed_images`` /
``embed_texts`` give L2-normalised float32 embeddings on the CPU, computed in batches on the runtime's device/dtype.

open_clip references, in the order they are recognised:

* a folder in the hf-hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``) -> ``local-dir:``;
* a checkpoint file (``.safetensors``; ``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``) plus
  ``architecture`` (a built-in open_clip model name);
* ``hf-hub:org/repo`` (or ``local-dir:path``) passed through;
* a built-in model name (``ViT-L-14``, ``EVA02-L-14``, ...; ``ViT-L/14`` works too) with a ``pretrained`` tag, a
  checkpoint file, or ``random`` (random weights: a stand-in); without one: ``openai``, or the model's only tag;
* any other ``org/repo`` -> ``hf-hub:org/repo``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loratune.errors import LoratuneError, first_line  # first_line: re-exported for the backends that import it here
from loratune.metrics.cache import cached_model
from loratune.modelref import check_model_ref, is_stand_in, looks_like_hub_id

if TYPE_CHECKING:
    import torch
    from PIL import Image

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_WEIGHTS = "random"


class ImageEmbedder(Protocol):
    """What the identity backends need: L2-normalised float32 image embeddings on the CPU, one row per image."""

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor: ...


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def normalise(features: torch.Tensor) -> torch.Tensor:
    import torch

    features = features.float()
    return features / torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-12)


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Initialise models under a fixed seed without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def device_key(device: Any, dtype: Any) -> tuple[str, str]:
    return str(device), str(dtype)


# --- open_clip ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenClipSource:
    """A validated open_clip reference: what to pass to ``create_model_and_transforms`` and ``get_tokenizer``."""

    model_name: str  # built-in name or ``local-dir:``/``hf-hub:`` reference
    pretrained: str | None  # tag or checkpoint file (built-in names only)
    tokenizer_name: str
    stand_in: bool
    label: str  # what scores.json reports as the model id


def resolve_open_clip(
    ref: str, pretrained: str | None, architecture: str | None, field: str, options_field: str | None = None
) -> OpenClipSource:
    """Check an open_clip reference without loading anything; raise ``LoratuneError`` naming the field if bad."""
    import open_clip

    opt = options_field or field.rsplit(".", 1)[0]
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise LoratuneError(f"{field}: {ref} is not an open_clip model folder (no open_clip_config.json in it)")
        name = f"local-dir:{path}"
        return OpenClipSource(name, None, name, is_stand_in(str(path)), str(path))
    if path.is_file() or path.suffix in CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise LoratuneError(f"{field}: model path not found: {ref}")
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise LoratuneError(f"{field}: {ref} is not a checkpoint (expected {', '.join(CHECKPOINT_SUFFIXES)})")
        if not architecture:
            raise LoratuneError(
                f"{opt}.architecture: an open_clip checkpoint file needs the model name it was trained as "
                f"(e.g. ViT-L-14) for {ref}"
            )
        arch = _builtin_name(architecture)
        if arch is None:
            raise LoratuneError(f"{opt}.architecture: unknown open_clip model {architecture!r}")
        return OpenClipSource(arch, str(path), arch, is_stand_in(str(path)), str(path))
    if ref.startswith(("hf-hub:", "local-dir:")):
        if ref.startswith("local-dir:"):
            return resolve_open_clip(ref.removeprefix("local-dir:"), pretrained, architecture, field, options_field)
        return OpenClipSource(ref, None, ref, False, ref)
    name = _builtin_name(ref)
    if name is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained is None:
            # OpenAI's weights where they exist (ViT-L-14 for the LAION predictor), else a model's only release.
            if "openai" not in tags and len(tags) != 1:
                known = ", ".join(tags) or "none"
                raise LoratuneError(f"{opt}.pretrained: required for open_clip model {name} (tags: {known}, or a file)")
            pretrained = "openai" if "openai" in tags else tags[0]
        if pretrained.lower() in tags:  # open_clip's tags are lower case; "OpenAI" means "openai"
            pretrained = pretrained.lower()
        if pretrained == RANDOM_WEIGHTS:
            return OpenClipSource(name, None, name, True, f"{name} (random weights)")
        weights = Path(pretrained).expanduser()
        if weights.is_file():
            return OpenClipSource(name, str(weights), name, is_stand_in(str(weights)), f"{name}:{weights}")
        if pretrained not in tags:
            if weights.suffix in CHECKPOINT_SUFFIXES or "/" in pretrained:
                raise LoratuneError(f"{opt}.pretrained: checkpoint file not found: {pretrained}")
            known = ", ".join(tags) or "none"
            raise LoratuneError(
                f"{opt}.pretrained: unknown tag {pretrained!r} for open_clip model {name} (tags: {known}, or a file)"
            )
        return OpenClipSource(name, pretrained, name, False, f"{name}:{pretrained}")
    if looks_like_hub_id(ref):
        return OpenClipSource(f"hf-hub:{ref}", None, f"hf-hub:{ref}", False, f"hf-hub:{ref}")
    raise LoratuneError(f"{field}: model path not found and not an open_clip model name: {ref}")


def _builtin_name(name: str) -> str | None:
    import open_clip

    cleaned = name.replace("/", "-")
    return cleaned if cleaned in open_clip.list_models() else None


_PRECISION = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "None": "fp32"}


class OpenClipModel:
    """An open_clip model with its eval transform and tokenizer."""

    def __init__(
        self, model: Any, preprocess: Callable[[Any], Any], tokenizer: Callable[..., Any], device: Any, dtype: Any
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype  # the input dtype: open_clip's half precisions keep some parameters in float32
        self.embed_dim = self._embed_dim()

    def _embed_dim(self) -> int:
        """The joint embedding width (0 when the architecture does not say; callers then check the first output)."""
        output_dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
        if output_dim:
            return int(output_dim)
        proj = getattr(self.model, "text_projection", None)
        return int(proj.shape[-1]) if proj is not None and hasattr(proj, "shape") else 0

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        return torch.stack([self.preprocess(img) for img in images])

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size):
                pixels = self.pixels(chunk).to(self.device, self.dtype)
                out.append(normalise(self.model.encode_image(pixels)).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(list(texts), batch_size):
                tokens = self.tokenizer(list(chunk)).to(self.device)
                out.append(normalise(self.model.encode_text(tokens)).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)


def load_open_clip(source: OpenClipSource, device: Any, dtype: Any, field: str) -> OpenClipModel:
    """Load (once per process) the open_clip model described by ``source``."""

    def loader() -> OpenClipModel:
        import open_clip
        import torch
        from open_clip.model import get_input_dtype

        precision = _PRECISION.get(str(dtype), "fp32")
        try:
            with seeded():  # random weights ('random' tag) repeat from run to run; loaded weights overwrite them
                model, _, preprocess = open_clip.create_model_and_transforms(
                    source.model_name,
                    pretrained=source.pretrained,
                    precision=precision,
                    device=device,
                    weights_only=True,
                )
            tokenizer = open_clip.get_tokenizer(source.tokenizer_name)
        except Exception as err:  # noqa: BLE001  (offline downloads, bad checkpoints, missing files: the user's to fix)
            raise LoratuneError(f"{field}: cannot load open_clip model {source.label}: {first_line(err)}") from None
        model.eval()
        return OpenClipModel(model, preprocess, tokenizer, device, get_input_dtype(precision) or torch.float32)

    return cached_model(("open_clip", source.model_name, source.pretrained, *device_key(device, dtype)), loader)


# --- Hugging Face transformers ------------------------------------------------------------------------------------
def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor on transformers 4 and a ``BaseModelOutputWithPooling`` on 5."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    return output[0]


def _auto_model_and_processor(ref: str, processor: str, field: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """``AutoModel`` and the named transformers processor class from a hub id or folder; failures name the field."""
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(ref, trust_remote_code=trust_remote_code)
        loaded = getattr(transformers, processor).from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001  (any load failure is the user's file or network)
        raise LoratuneError(f"{field}: cannot load transformers model {ref}: {first_line(err)}") from None
    return model, loaded


class HFClipModel:
    """A transformers dual encoder (``CLIPModel`` and kin: anything with ``get_image/text_features``) + processor."""

    def __init__(self, model: Any, processor: Any, device: Any) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = next(model.parameters()).dtype
        text_config = getattr(model.config, "text_config", None)
        self.max_length = getattr(text_config, "max_position_embeddings", None)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size):
                pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"]
                features = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
                out.append(normalise(features).cpu())
        return torch.cat(out)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(list(texts), batch_size):
                kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
                if self.max_length:
                    kwargs.update(truncation=True, max_length=self.max_length)
                enc = self.processor(text=list(chunk), **kwargs)
                features = _features(
                    self.model.get_text_features(
                        input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
                    )
                )
                out.append(normalise(features).cpu())
        return torch.cat(out)


def load_hf_clip(ref: str, device: Any, dtype: Any, field: str, trust_remote_code: bool = False) -> HFClipModel:
    """Load (once per process) a transformers CLIP-style model and its processor from a hub id or a local folder."""
    ref = check_model_ref(ref, field)

    def loader() -> HFClipModel:
        model, processor = _auto_model_and_processor(ref, "AutoProcessor", field, trust_remote_code)
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise LoratuneError(f"{field}: {ref} is a {type(model).__name__}, not a CLIP-style image+text model")
        model = model.to(device=device, dtype=dtype or model.dtype).eval()
        return HFClipModel(model, processor, device)

    return cached_model(("hf_clip", ref, trust_remote_code, *device_key(device, dtype)), loader)


class HFVisionModel:
    """A transformers vision backbone (DINOv2, ViT, CLIP vision, ...) pooled to one vector per image."""

    def __init__(self, model: Any, processor: Any, device: Any, pooling: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.pooling = pooling
        self.dtype = next(model.parameters()).dtype

    def _pool(self, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):  # a full CLIP-style model: its projected image embedding
            return _features(self.model.get_image_features(pixel_values=pixels))
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        hidden = out.last_hidden_state
        if self.pooling == "cls" or (self.pooling == "auto" and pooled is None):
            return hidden[:, 0] if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
        if self.pooling == "mean":
            return hidden[:, 1:].mean(1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
        if pooled is None:
            raise LoratuneError(f"{type(self.model).__name__} has no pooled output; use pooling: cls or mean")
        return pooled.flatten(1)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 8) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size):
                pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"]
                out.append(normalise(self._pool(pixels.to(self.device, self.dtype))).cpu())
        return torch.cat(out)


def load_hf_vision(
    ref: str, device: Any, dtype: Any, field: str, pooling: str = "auto", trust_remote_code: bool = False
) -> HFVisionModel:
    ref = check_model_ref(ref, field)

    def loader() -> HFVisionModel:
        model, processor = _auto_model_and_processor(ref, "AutoImageProcessor", field, trust_remote_code)
        model = model.to(device=device, dtype=dtype or model.dtype).eval()
        return HFVisionModel(model, processor, device, pooling)

    return cached_model(("hf_vision", ref, pooling, trust_remote_code, *device_key(device, dtype)), loader)


# --- CLIP image embeddings from either library ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipImageSource:
    """A validated CLIP reference for image embeddings: open_clip or transformers, decided before loading."""

    library: str  # "open_clip" or "hf"
    ref: str
    open_clip: OpenClipSource | None
    stand_in: bool
    label: str


def detect_clip_library(ref: str) -> str:
    """open_clip for its folders, checkpoint files, built-in names and ``hf-hub:``; transformers for other hub ids."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return "open_clip" if (path / "open_clip_config.json").is_file() else "hf"
    if path.is_file() or ref.startswith(("hf-hub:", "local-dir:")) or _builtin_name(ref) is not None:
        return "open_clip"
    return "hf" if looks_like_hub_id(ref) else "open_clip"


def resolve_clip_image(
    ref: str, library: str, pretrained: str | None, architecture: str | None, field: str
) -> ClipImageSource:
    library = detect_clip_library(ref) if library == "auto" else library
    if library == "open_clip":
        source = resolve_open_clip(ref, pretrained, architecture, field)
        return ClipImageSource("open_clip", ref, source, source.stand_in, source.label)
    ref = check_model_ref(ref, field)
    return ClipImageSource("hf", ref, None, is_stand_in(ref), ref)


def load_clip_image(source: ClipImageSource, runtime: Any, field: str) -> OpenClipModel | HFClipModel:
    if source.open_clip is not None:
        return load_open_clip(source.open_clip, runtime.device, runtime.dtype, field)
    return load_hf_clip(source.ref, runtime.device, runtime.dtype, field, runtime.trust_remote_code)
