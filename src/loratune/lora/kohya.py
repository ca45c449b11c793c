"""peft/diffusers LoRA state dicts -> kohya sd-scripts files (the format A1111, ComfyUI and kohya's tools load).

kohya names a module ``lora_unet_<path with _>`` and, for the text encoder, ``lora_te_text_model_<path>`` (SD1.5) or
``lora_te1_`` / ``lora_te2_`` (SDXL, Flux's CLIP); each module has ``lora_down.weight`` (peft's A), ``lora_up.weight``
(B) and ``alpha``, with scale = alpha / rank. The paths are the original model's names, which differ per family
(SDXL's SGM blocks, Flux's fused QKV): each family names its modules (``Family.to_kohya``) with the helpers here.
diffusers' ``convert_state_dict_to_kohya`` gets the SD1.5 text-encoder prefix and alpha wrong (see WORKSHOP-FACTS),
hence this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loratune.errors import LoratuneError

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")
_EPOCH_NAME = re.compile(r"-(\d{6})$")


def peft_modules(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{module path: {"A": tensor, "B": tensor}} from peft keys (``….lora_A.weight`` or ``….lora_A.default.weight``)."""
    modules: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"not a peft LoRA key: {key}")
        modules.setdefault(match["module"], {})[match["which"]] = value
    for path, weights in modules.items():
        if set(weights) != {"A", "B"}:
            raise ValueError(f"{path}: needs both lora_A and lora_B")
    return modules


def kohya_module(name: str, down: Any, up: Any, alpha: float) -> dict[str, Any]:
    """One kohya module's tensors; ``alpha`` is written as given, so scale = alpha / rank holds in every loader."""
    import torch

    return {
        f"{name}.lora_down.weight": down.detach().contiguous(),
        f"{name}.lora_up.weight": up.detach().contiguous(),
        f"{name}.alpha": torch.tensor(float(alpha), dtype=down.dtype),
    }


def text_encoder_kohya(prefix: str, state_dict: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """A CLIP text encoder's LoRA as ``{prefix}_text_model_…`` modules (kohya's names for SD1.5, SDXL and Flux)."""
    out: dict[str, Any] = {}
    for path, weights in peft_modules(state_dict).items():
        # transformers 5 drops CLIPTextModel's ``text_model.`` level; kohya's names keep it.
        path = "text_model." + path.removeprefix("text_model.")
        out |= kohya_module(f"{prefix}_" + path.replace(".", "_"), weights["A"], weights["B"], alpha)
    return out


def to_kohya(
    family: str,
    denoiser: Mapping[str, Any],
    alpha: float,
    text_encoders: tuple[Mapping[str, Any], ...] = (),
    denoiser_config: Any = None,
) -> dict[str, Any]:
    """kohya tensors from peft LoRA state dicts (unprefixed module paths, as ``get_peft_model_state_dict`` gives),
    named the way ``family``'s kohya files name them (see ``loratune.families``).

    ``alpha`` is the true lora_alpha of every module; it is written per module so that scale = alpha / rank holds.
    ``denoiser_config``: the denoiser's config where names depend on it (SDXL's ``layers_per_block``).
    """
    from loratune.families import get_family

    return get_family(family).to_kohya(dict(denoiser), alpha, tuple(dict(sd) for sd in text_encoders), denoiser_config)


def kohya_metadata(
    family: str,
    rank: int,
    alpha: float,
    epoch: int,
    steps: int,
    learning_rate: float,
    optimizer: str,
    seed: int,
    resolution: int | str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The ``ss_*`` keys kohya's tools and the web UIs read (all values strings, as safetensors requires).

    Numbers are written as sd-scripts writes them (``train_network.py`` stores ``str(args.x)``): alpha and learning
    rates are floats (``2.0``, ``0.0001``), the dim an int, the resolution a tuple ``(512, 512)``.
    """
    import json

    from loratune.families import get_family

    size = (resolution, resolution) if isinstance(resolution, int) else resolution
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_learning_rate": str(float(learning_rate)),
        "ss_unet_lr": str(float(learning_rate)),
        "ss_optimizer": optimizer,
        "ss_seed": str(seed),
        "ss_resolution": str(tuple(size)) if isinstance(size, tuple) else str(size),
        "ss_base_model_version": get_family(family).kohya_model_version,
        "ss_v2": "False",
        "ss_sd_model_name": "",
    }
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return meta


def tag_frequency(captions: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
    """{folder: {tag: count}}: what A1111 shows as a LoRA's training tags (``ss_tag_frequency``).

    sd-scripts' rule (``BaseDataset.set_tag_frequency``): split each caption on commas, strip, lower-case, count
    once per image (repeats not counted).

    >>> tag_frequency({"10_luca": ["luca boy, Beach", "luca boy, red shirt"]})
    {'10_luca': {'luca boy': 2, 'beach': 1, 'red shirt': 1}}
    """
    out: dict[str, dict[str, int]] = {}
    for folder, texts in captions.items():
        counts = out.setdefault(folder, {})
        for caption in texts:
            for tag in caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
    return out


def dataset_metadata(items: list[Any], base_model: str) -> dict[str, str]:
    """The dataset keys of a kohya file from the training items (``loratune.train.data.Item``): folders with repeats
    and image counts, tag frequencies, image totals (repeats counted, as kohya counts them) and the base model name."""
    import json

    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    captions: dict[str, list[str]] = {}
    for item in items:
        folder = Path(item.image).parent.name
        entry = (reg_dirs if item.is_reg else dirs).setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
        if not item.is_reg:
            captions.setdefault(folder, []).append(item.caption)
    return {
        "ss_num_train_images": str(sum(it.repeats for it in items if not it.is_reg)),
        "ss_num_reg_images": str(sum(it.repeats for it in items if it.is_reg)),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(tag_frequency(captions)),
        # sd-scripts: os.path.basename of --pretrained_model_name_or_path (a hub id keeps its last part).
        "ss_sd_model_name": Path(base_model.rstrip("/")).name,
    }


def modelspec_metadata(spec: Mapping[str, str], title: str, resolution: int, timestamp: float,
                       description: str | None = None) -> dict[str, str]:
    """The ``modelspec.*`` keys (Stability AI's model spec 1.0.0) that model sites and ComfyUI read, as
    sd-scripts' ``build_metadata`` fills them for a LoRA; ``spec`` holds the family's ``architecture``,
    ``implementation`` and (where it has one) ``prediction_type`` (``Family.modelspec``)."""
    import datetime

    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": spec["architecture"],
        "modelspec.implementation": spec["implementation"],
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
    }
    if spec.get("prediction_type"):
        meta["modelspec.prediction_type"] = spec["prediction_type"]
    if description:
        meta["modelspec.description"] = description
    return meta


def safetensors_hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(``sshs_model_hash``, ``sshs_legacy_hash``): the hashes sd-webui-additional-networks and A1111 index LoRAs by.

    sd-scripts' ``precalculate_safetensors_hashes`` (``library/train_util.py``): serialise the tensors with only the
    ``ss_*`` metadata (so later user metadata does not change the hash); the model hash is the sha256 of everything
    after the header, i.e. the tensor data (``addnet_hash_safetensors``); the legacy hash is the first 8 hex digits
    of the sha256 of the 64 KiB at offset 1 MiB of that serialisation (``addnet_hash_legacy``).
    """
    import hashlib

    from safetensors.torch import save

    blob = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def with_hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the ``sshs_*`` hashes of ``tensors``, as sd-scripts adds them to any file with metadata."""
    metadata = dict(metadata)
    if metadata:
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = safetensors_hashes(tensors, metadata)
    return metadata


def save_kohya(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write a kohya file atomically (with the ``sshs_*`` hashes when it has metadata)."""
    from safetensors.torch import save_file

    from loratune.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=with_hashes(tensors, metadata))
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of a LoRA file (empty when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a broken header
        raise LoratuneError(f"{path}: not a readable safetensors file ({err})") from None


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch of a per-epoch checkpoint: ``ss_epoch`` metadata first, else kohya's ``NAME-000001`` file name."""
    meta = read_metadata(path)
    epoch = meta.get("ss_epoch", "").strip()
    if epoch.isdigit():
        if len(epoch) > 9:  # int() of thousands of digits raises; no run has a billion epochs
            raise LoratuneError(f"{path}: metadata ss_epoch is not an epoch number ({len(epoch)} digits)")
        return int(epoch)
    match = _EPOCH_NAME.search(Path(path).stem)
    return int(match.group(1)) if match else None
