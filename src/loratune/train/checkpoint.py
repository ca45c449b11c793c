"""Checkpoint folders: ``checkpoints/epoch-NNNN/`` holding the LoRA in diffusers and kohya format (named by the
family), the resume state and ``info.json``, written as a whole (``atomic_dir``) so a crash never leaves half a
checkpoint. The resume state keeps the denoiser's LoRA under ``"unet"``, whatever the family, so older checkpoints
resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratune.atomic import atomic_dir, atomic_write_json
from loratune.errors import LoratuneError
from loratune.train.model import Models, lora_config_dict, state_dict

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
STATE_FILE = "training_state.pt"
INFO_FILE = "info.json"


def checkpoint_dir(out_dir: Path, epoch: int) -> Path:
    return out_dir / "checkpoints" / f"epoch-{epoch:04d}"


def kohya_name(output_name: str, epoch: int) -> str:
    return f"{output_name}-{epoch:06d}.safetensors"


def save_checkpoint(
    out_dir: Path,
    models: Models,
    epoch: int,
    output_name: str,
    info: dict[str, Any],
    metadata: dict[str, str],
    training_state: dict[str, Any],
) -> tuple[Path, Path, Path]:
    """Write one checkpoint; returns (folder, diffusers file, kohya file)."""
    import torch
    from safetensors.torch import save_file

    from loratune.lora.kohya import with_hashes

    family = models.family
    denoiser_sd = state_dict(models.denoiser)
    te_sds = {i: state_dict(models.text_encoders[i]) for i in models.trained_text_encoders}
    alpha = float(models.denoiser.peft_config["default"].lora_alpha)
    target = checkpoint_dir(out_dir, epoch)
    with atomic_dir(target) as tmp:
        family.save_diffusers_lora(
            tmp, DIFFUSERS_FILE, denoiser_sd, lora_config_dict(models.denoiser),
            {i: (sd, lora_config_dict(models.text_encoders[i])) for i, sd in te_sds.items()},
        )
        encoders = tuple(te_sds.get(i, {}) for i in range(max(te_sds, default=-1) + 1))
        tensors = family.to_kohya(denoiser_sd, alpha, encoders, models.denoiser.config)
        save_file(tensors, str(tmp / kohya_name(output_name, epoch)), metadata=with_hashes(tensors, metadata))
        torch.save(
            training_state | {"lora": {"unet": denoiser_sd, **{f"te{i}": sd for i, sd in te_sds.items()}}},
            tmp / STATE_FILE,
        )
        atomic_write_json(tmp / INFO_FILE, info)
    return target, target / DIFFUSERS_FILE, target / kohya_name(output_name, epoch)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (one with its resume state), or None."""
    folders = sorted((out_dir / "checkpoints").glob("epoch-[0-9][0-9][0-9][0-9]"))
    complete = [f for f in folders if (f / STATE_FILE).is_file() and (f / INFO_FILE).is_file()]
    return complete[-1] if complete else None


def load_training_state(folder: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a corrupt or foreign file
        raise LoratuneError(f"{folder / STATE_FILE}: cannot resume from this file ({err})") from None


def read_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
