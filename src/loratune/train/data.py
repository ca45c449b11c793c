"""Training data: find images and captions, assign aspect buckets, and plan each epoch's batches.

Three layouts are read. kohya's: sub-folders ``N_name/`` (``N`` repeats per epoch, ``name`` the class token) holding
images with same-stem caption files. A plain folder: images with caption files, or a ``metadata.jsonl`` with
``file_name`` and ``text`` (the Hugging Face imagefolder convention). And a kohya dataset config (``.toml``) whose
subsets name their folders, repeats, class tokens and regularisation images. Everything is checked before a model
loads.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.images import is_image_file, load_image

_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Item:
    """One training image: its caption, how often an epoch shows it, and its size in pixels."""

    image: Path
    caption: str
    repeats: int
    width: int
    height: int
    is_reg: bool = False  # a regularisation (prior-preservation) image: the class without the character


def _caption_for(image: Path, extension: str, metadata: dict[str, str]) -> str | None:
    if image.name in metadata:
        return metadata[image.name]
    sidecar = image.with_suffix(extension)
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise LoratuneError(f"{sidecar}: caption is not UTF-8 text") from None
        return text or None
    return None


def _read_metadata(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LoratuneError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    captions: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[Path(row["file_name"]).name] = str(row.get("text") or row.get("caption") or "").strip()
        except (ValueError, KeyError, TypeError):
            raise LoratuneError(f"{path}:{n}: expected a JSON object with 'file_name' and 'text'") from None
    return {k: v for k, v in captions.items() if v}


def scan_dataset(
    path: str | Path | None,
    caption_extension: str = ".txt",
    missing_caption: str = "error",
    class_token: str | None = None,
) -> list[Item]:
    """Every training image with its caption and repeat count; raises ``LoratuneError`` on any bad input.

    ``missing_caption="class_token"`` captions an uncaptioned image with its kohya folder's name (or ``class_token``
    for a plain folder) instead of failing.
    """
    if not path:
        raise LoratuneError("dataset.path: not set (a kohya-layout folder or a folder of images with captions)")
    if Path(path).suffix.lower() == ".toml":
        return scan_kohya_toml(path, caption_extension)
    root = Path(path)
    if not root.is_dir():
        raise LoratuneError(f"dataset.path: folder not found: {root}")
    groups: list[tuple[Path, int, str | None]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _KOHYA_DIR.match(sub.name)
        if match:
            groups.append((sub, int(match.group(1)), match.group(2).replace("_", " ")))
    if not groups:
        groups = [(root, 1, class_token)]
    items: list[Item] = []
    for folder, repeats, token in groups:
        if repeats < 1:
            raise LoratuneError(f"{folder}: repeat count must be at least 1")
        metadata = _read_metadata(folder)
        for image in sorted(p for p in folder.iterdir() if is_image_file(p)):
            caption = _caption_for(image, caption_extension, metadata)
            if caption is None:
                if missing_caption != "class_token":
                    raise LoratuneError(
                        f"{image}: no caption ({image.with_suffix(caption_extension).name} missing or empty); "
                        "add one or set dataset.missing_caption: class_token"
                    )
                if not token:
                    raise LoratuneError(f"{image}: no caption and no class token to fall back on")
                caption = token
            with load_image(image) as img:  # decodes fully: a broken file fails here, before any model loads
                width, height = img.size
            items.append(Item(image, caption, repeats, width, height))
    if not items:
        raise LoratuneError(f"dataset.path: no training images in {root}")
    return items


def bucket_sizes(resolution: int, step: int = 64, min_side: int = 256, max_side: int = 1024) -> list[tuple[int, int]]:
    """kohya-style buckets: (width, height) multiples of ``step`` with area at most ``resolution²``."""
    min_side = min(min_side, resolution)
    max_side = max(max_side, resolution)
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    width = min_side
    while width <= max_side:
        height = min(max_side, area // width // step * step)
        if height >= min_side:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def assign_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (ties: the larger area)."""
    import math

    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def plan_epoch(item_buckets: list[tuple[int, tuple[int, int]]], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of item indices for one epoch: each item ``repeats`` times, one bucket per batch, shuffled by seed.

    ``item_buckets`` holds (repeats, bucket) per item.
    """
    rng = random.Random(seed)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, (repeats, bucket) in enumerate(item_buckets):
        by_bucket.setdefault(bucket, []).extend([index] * repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
    rng.shuffle(batches)
    return batches


def process_caption(caption: str, shuffle: bool, keep_tokens: int, separator: str, rng: random.Random) -> str:
    """kohya's caption shuffle: the first ``keep_tokens`` comma-separated tokens stay, the rest are shuffled."""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.split(separator) if t.strip()]
    kept, rest = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(rest)
    return f"{separator} ".join(kept + rest)


# kohya dataset-config keys that loratune takes from its own config instead (dataset.resolution, train.batch_size, …).
_KOHYA_ELSEWHERE = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                    "bucket_reso_steps", "bucket_no_upscale", "shuffle_caption", "keep_tokens", "flip_aug",
                    "color_aug", "random_crop", "caption_separator"}
_KOHYA_SUBSET = {"image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg"}


@dataclass(frozen=True)
class KohyaSubset:
    """One ``[[datasets.subsets]]`` entry of a kohya dataset config, with its inherited options resolved."""

    image_dir: Path
    num_repeats: int
    class_tokens: str | None
    caption_extension: str | None
    is_reg: bool


def read_kohya_toml(path: str | Path) -> list[KohyaSubset]:
    """The subsets of a kohya ``--dataset_config`` file (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``).

    As in sd-scripts (``library/config_util.py``) a subset option not set on the subset comes from its dataset, then
    from ``[general]``. ``image_dir`` is taken relative to the TOML file's folder when it is not absolute.
    """
    import logging

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoratuneError(f"dataset.path: kohya dataset config not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise LoratuneError(f"{path}: not a valid TOML file ({err})") from None
    general = data.get("general") or {}
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise LoratuneError(f"{path}: no [[datasets]] table (a kohya dataset config lists its subsets there)")
    subsets: list[KohyaSubset] = []
    elsewhere: set[str] = set()
    for d, dataset in enumerate(datasets):
        entries = dataset.get("subsets") if isinstance(dataset, dict) else None
        if not isinstance(entries, list) or not entries:
            raise LoratuneError(f"{path}: datasets[{d}] has no [[datasets.subsets]] entries")
        for s, subset in enumerate(entries):
            where = f"{path}: datasets[{d}].subsets[{s}]"
            options = {k: v for k, v in {**general, **dataset, **subset}.items() if k != "subsets"}
            elsewhere |= set(options) & _KOHYA_ELSEWHERE
            unknown = sorted(set(subset) - _KOHYA_SUBSET - _KOHYA_ELSEWHERE)
            if unknown:
                raise LoratuneError(f"{where}: unsupported key(s) {', '.join(unknown)} "
                                    f"(loratune reads {', '.join(sorted(_KOHYA_SUBSET))})")
            if not options.get("image_dir"):
                raise LoratuneError(f"{where}: image_dir is missing")
            image_dir = Path(str(options["image_dir"])).expanduser()
            image_dir = image_dir if image_dir.is_absolute() else path.parent / image_dir
            if not image_dir.is_dir():
                raise LoratuneError(f"{where}: image_dir folder not found: {image_dir}")
            repeats = options.get("num_repeats", 1)
            if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
                raise LoratuneError(f"{where}: num_repeats must be a whole number >= 1 (got {repeats!r})")
            extension = options.get("caption_extension")
            if extension is not None and not str(extension).startswith("."):
                extension = "." + str(extension)
            tokens = options.get("class_tokens")
            subsets.append(KohyaSubset(image_dir, repeats, str(tokens) if tokens else None, extension,
                                       bool(options.get("is_reg", False))))
    if elsewhere:
        logging.getLogger(__name__).warning("%s: %s come from loratune's config (dataset.*, train.*), not the TOML",
                                            path, ", ".join(sorted(elsewhere)))
    return subsets


def scan_kohya_toml(path: str | Path, caption_extension: str = ".txt") -> list[Item]:
    """Every image of a kohya dataset config: training subsets first, then the regularisation images balanced as
    sd-scripts balances them (``balance_regularisation``). A caption file wins; without one an image takes its
    subset's ``class_tokens`` (kohya's rule); an image with neither fails."""
    train: list[Item] = []
    reg: list[Item] = []
    for subset in read_kohya_toml(path):
        metadata = _read_metadata(subset.image_dir)
        images = sorted(p for p in subset.image_dir.iterdir() if is_image_file(p))
        if not images:
            raise LoratuneError(f"{path}: no images in {subset.image_dir}")
        extension = subset.caption_extension or caption_extension
        for image in images:
            caption = _caption_for(image, extension, metadata) or subset.class_tokens
            if caption is None:
                raise LoratuneError(f"{image}: no caption ({image.with_suffix(extension).name} missing or empty) and "
                                    "no class_tokens on its subset; add either")
            with load_image(image) as img:
                width, height = img.size
            item = Item(image, caption, subset.num_repeats, width, height, subset.is_reg)
            (reg if subset.is_reg else train).append(item)
    if not train:
        raise LoratuneError(f"{path}: every subset is is_reg = true; at least one must hold the training images")
    return train + balance_regularisation(sum(it.repeats for it in train), reg)


def balance_regularisation(train_images: int, reg: list[Item]) -> list[Item]:
    """The regularisation images one epoch shows, as many as the training images (repeats counted).

    sd-scripts' rule (``DreamBoothDataset.__init__`` in ``library/train_util.py``): take the reg images in order with
    their own repeats until the count reaches ``train_images`` (later ones are left out); if they all fit, add one
    repeat to each in turn until it does. Prior preservation then sees the class as often as the character.

    >>> items = [Item(Path(f"r{i}.png"), "boy", 1, 64, 64, True) for i in range(3)]
    >>> [it.repeats for it in balance_regularisation(7, items)]
    [3, 2, 2]
    >>> [it.repeats for it in balance_regularisation(2, items)]
    [1, 1]
    """
    from dataclasses import replace

    if not reg:
        return []
    repeats: list[int] = []
    n = 0
    for item in reg:
        repeats.append(item.repeats)
        n += item.repeats
        if n >= train_images:
            break
    i = 0
    while n < train_images:
        repeats[i % len(repeats)] += 1
        n += 1
        i += 1
    return [replace(item, repeats=r) for item, r in zip(reg, repeats)]
