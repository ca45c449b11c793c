"""A base model given as one checkpoint file (``model.base: realisticVision.safetensors``), as A1111, ComfyUI and kohya
take it: its family read from its keys, its parts loaded with diffusers' single-file loader, its hashes as kohya
writes them into a LoRA's metadata.

The file holds weights only; the parts' configs, tokenizers and scheduler come from ``model.config`` (a local diffusers
folder of the same family) or, when that is not set, from the family's default repository in the Hugging Face cache.
A ``.ckpt`` is read only through ``torch.load(weights_only=True)``: one that needs unpickling arbitrary objects is
refused with the reason. What differs between families (the keys that identify one, its default repository, what of
it a one-file base reads, how the file loads) the family says (``loratune.families``).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.errors import LoratuneError, first_line

if TYPE_CHECKING:
    from loratune.families import Family

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# Layouts that look like a family's but are not one loratune trains, named so that they are refused clearly (checked
# first: a FLUX.2 file has FLUX.1's double_blocks too). Prefixes as diffusers' own single-file detection reads them.
NOT_TRAINED = (("cond_stage_model.model.", "a Stable Diffusion 2"),
               ("single_stream_modulation.", "a FLUX.2"), ("model.diffusion_model.single_stream_modulation.", "a FLUX.2"))


def is_single_file(ref: str | Path | None) -> bool:
    """True for an existing checkpoint file (not a diffusers folder, not a hub id)."""
    if not ref:
        return False
    path = Path(ref).expanduser()
    return path.is_file() and path.suffix.lower() in SUFFIXES


def load_ckpt(path: Path) -> dict[str, Any]:
    """A ``.ckpt``'s state dict through ``weights_only`` unpickling, or one line saying why it is refused."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001  (UnpicklingError for foreign objects, or a broken file)
        raise LoratuneError(f"model.base: {path} is refused: it loads only by unpickling objects beyond tensors "
                            f"({first_line(err)}); convert it to .safetensors") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise LoratuneError(f"model.base: {path} holds no state dict")
    return state


def checkpoint_keys(path: str | Path) -> list[str]:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return list(fh.keys())
        except Exception as err:  # noqa: BLE001
            raise LoratuneError(f"model.base: {path}: not a readable safetensors file ({first_line(err)})") from None
    return list(load_ckpt(path))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Every tensor of a checkpoint file (a ``.ckpt`` through ``load_ckpt``)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return load_ckpt(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise LoratuneError(f"model.base: {path}: not a readable safetensors file ({first_line(err)})") from None


def detect_family(path: str | Path) -> str:
    """The family whose ``single_file_keys`` the checkpoint has; anything else is one line naming what it is not."""
    from loratune.families import FAMILIES

    keys = checkpoint_keys(path)

    def has(prefixes: tuple[str, ...]) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    for prefix, what in NOT_TRAINED:
        if has((prefix,)):
            raise LoratuneError(f"model.base: {path} is {what} checkpoint; loratune trains "
                                f"{', '.join(f.label for f in FAMILIES.values())}")
    found = [name for name, family in FAMILIES.items() if family.single_file_keys and has(family.single_file_keys)]
    if len(found) == 1:
        return found[0]
    expected = "; ".join(f"{f.label}: {' / '.join(f.single_file_keys)}" for f in FAMILIES.values()
                         if f.single_file_keys)
    raise LoratuneError(f"model.base: {path} is not a checkpoint of one known family in the original layout "
                        f"(keys starting with {expected}{'; it has several' if found else ''})")


def config_folder(family: str, config: str | None) -> str:
    """Where the single file's component configs, tokenizers and scheduler (and the parts it does not hold) come
    from: ``model.config``, else the family's default repository in the Hugging Face cache; one line saying what to do
    when neither is there."""
    from loratune.families import get_family

    if config:
        if not (Path(config) / "model_index.json").is_file():
            raise LoratuneError(f"model.config: {config} is not a diffusers pipeline folder (no model_index.json)")
        return config
    found = get_family(family)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(found.default_repo, local_files_only=True,
                                 allow_patterns=list(found.single_file_fetch))
    except Exception:  # noqa: BLE001  (not cached)
        patterns = " ".join(f"'{p}'" for p in found.single_file_fetch)
        raise LoratuneError(
            f"model.base is one file, and its {family} component configs are neither in model.config nor in the "
            f"Hugging Face cache of {found.default_repo}: set model.config to a diffusers folder of the same family, "
            f"or fetch them once with `hf download {found.default_repo} --include {patterns}`") from None


def load_pipeline(path: str | Path, family: Family, config: str | None) -> Any:
    """The family's pipeline from the one file (float32, on the CPU), parts configured by ``config_folder``."""
    import diffusers

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        load_ckpt(path)  # refused here, with the reason, before diffusers reads it
    folder = config_folder(family.name, config)
    extra = {k: v for k, v in family.pipeline_extras().items() if k != "feature_extractor"}
    try:
        return getattr(diffusers, family.pipeline_class).from_single_file(str(path), config=folder,
                                                                          local_files_only=True, **extra)
    except Exception as err:  # noqa: BLE001  (shapes that do not fit the config, a truncated file)
        raise LoratuneError(f"model.base: cannot load {path} as {family.name} with the configs of {folder}: "
                            f"{first_line(err)}") from None


def components_folder(base: str, family: str, config: str | None) -> str:
    """Where the base's component configs (scheduler, tokenizers) live: the base itself, unless it is one file."""
    return config_folder(family, config) if is_single_file(base) else base


@functools.lru_cache(maxsize=8)
def _hashes(path: str, size: int, mtime: float) -> tuple[str, str]:
    legacy = hashlib.sha256()
    full = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        legacy.update(fh.read(0x10000))
        fh.seek(0)
        for block in iter(lambda: fh.read(1 << 20), b""):
            full.update(block)
    return legacy.hexdigest()[:8], full.hexdigest()


def base_model_hashes(path: str | Path) -> dict[str, str]:
    """``ss_sd_model_hash`` and ``ss_new_sd_model_hash`` as sd-scripts writes them for a base model file
    (``train_util.model_hash``: the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB, the web UI's old
    hash; ``train_util.calculate_sha256``: the sha256 of the whole file)."""
    stat = Path(path).stat()
    legacy, full = _hashes(str(Path(path).resolve()), stat.st_size, stat.st_mtime)
    return {"ss_sd_model_hash": legacy, "ss_new_sd_model_hash": full}
