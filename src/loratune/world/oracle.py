"""The oracle: reads the truth back from pixels, because the world is procedural and its colours are known.

Per image: which scene is present (each pixel goes to the nearest palette colour of any scene; the scene whose colours
cover the most pixels wins, if it covers at least ``MIN_SCENE_COVER``), whether a character is there with its traits
(a compact blob of its shirt colour, its hair colour above it, stripe/hat where it has one), how noisy it is (each
pixel's distance to its most similar neighbour: ~0 in a world of flat areas, whatever its edges). Identity is exact for
the target characters, whose shirt colours appear nowhere else; a base character whose shirt matches a scene colour
(blue shirt, blue sea) can be read into that scene. Per set: how varied (mean pairwise
difference). Images are RGB uint8 arrays (H×W×3) or PIL images; any size, read at 64 px.

>>> from loratune.world.scene import CHARACTERS, SCENES, Jitter, render
>>> image, _ = render(CHARACTERS["lucaboy"], SCENES["beach"], Jitter.draw(3))
>>> scene_of(image), has_character(image, "lucaboy"), has_character(image, "albertoboy")
('beach', True, False)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loratune.world.scene import CHARACTERS, SCENES, SIZE

MIN_SCENE_COVER = 0.4  # share of pixels a scene's palette must cover to be recognised
PALETTE_TOLERANCE = 60.0  # RGB distance beyond which a pixel belongs to no scene colour
TRAIT_TOLERANCE = 55.0  # RGB distance for a pixel to count as a trait colour
MIN_SHIRT_PIXELS = 24  # the smallest shirt drawn covers ~70 px at 64 px
MAX_SHIRT_PIXELS = 400  # the largest ~190 px: a bigger blob is a piece of background, not a shirt
MIN_HAIR_PIXELS = 8
MIN_DETAIL_PIXELS = 4  # stripe / hat
MAX_HAIR_OFFSET = 12  # pixels between the hair's and the shirt's centre columns
NOISE_SCALE = 0.03  # neighbour residual (0–1 units) at which quality reaches 0


def as_array(image: Any) -> np.ndarray:
    """RGB uint8 at 64×64 from an array or a PIL image."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _distance(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance of every pixel (N×3) to every colour (K×3) -> N×K."""
    return np.linalg.norm(pixels[:, None, :].astype(np.float32) - colours[None, :, :].astype(np.float32), axis=-1)


_PALETTE = np.array([c for s in SCENES.values() for c in s.palette])
_PALETTE_SCENE = np.array([name for name, s in SCENES.items() for _ in s.palette])


def scene_coverage(image: Any) -> dict[str, float]:
    """Share of pixels whose nearest palette colour (within ``PALETTE_TOLERANCE``) belongs to each scene."""
    pixels = as_array(image).reshape(-1, 3)
    d = _distance(pixels, _PALETTE)
    nearest = d.argmin(axis=1)
    matched = d[np.arange(len(pixels)), nearest] <= PALETTE_TOLERANCE
    owners = _PALETTE_SCENE[nearest[matched]]
    return {name: float((owners == name).sum() / len(pixels)) for name in SCENES}


def scene_of(image: Any) -> str | None:
    """The scene whose palette covers the most pixels, or None when none covers ``MIN_SCENE_COVER``."""
    cover = scene_coverage(image)
    best = max(cover, key=cover.__getitem__)
    return best if cover[best] >= MIN_SCENE_COVER else None


_SCENE_WORDS = {name: re.compile(rf"\b({name}|{re.escape(s.phrase)})\b", re.IGNORECASE) for name, s in SCENES.items()}


def scene_in_prompt(prompt: str) -> str | None:
    """The scene a prompt asks for (its name or phrase), or None."""
    found = [name for name, pattern in _SCENE_WORDS.items() if pattern.search(prompt)]
    return found[0] if len(found) == 1 else None


def _mask(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float32) - np.array(colour, np.float32), axis=-1) <= TRAIT_TOLERANCE


def _shirt_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected blob of the mask (scattered noise pixels never form one)."""
    from scipy.ndimage import label

    labels, n = label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(sizes.argmax()))


def trait_checks(image: Any, token: str) -> dict[str, bool]:
    """Each of the character's visible traits, checked in the image."""
    c = CHARACTERS[token]
    img = as_array(image)
    shirt, hair = _shirt_blob(_mask(img, c.shirt)), _mask(img, c.hair)
    checks = {"shirt": MIN_SHIRT_PIXELS <= int(shirt.sum()) <= MAX_SHIRT_PIXELS}
    checks["hair"] = int(hair.sum()) >= MIN_HAIR_PIXELS
    if checks["shirt"] and checks["hair"]:
        sy, sx = np.nonzero(shirt)
        hy, hx = np.nonzero(hair)
        # hair pixels near the shirt's column, above its centre (trees or sand of the same hue lie elsewhere)
        near = np.abs(hx - np.median(sx)) <= MAX_HAIR_OFFSET
        above = hy[near] < np.median(sy)
        checks["hair_above_shirt"] = int(above.sum()) >= MIN_HAIR_PIXELS
    else:
        checks["hair_above_shirt"] = False
    for part in ("stripe", "hat"):
        colour = getattr(c, part)
        if colour is not None:
            checks[part] = int(_mask(img, colour).sum()) >= MIN_DETAIL_PIXELS
    return checks


def identity(image: Any, token: str) -> float:
    """Share of the character's trait checks that pass (0–1)."""
    checks = trait_checks(image, token)
    return sum(checks.values()) / len(checks)


def has_character(image: Any, token: str) -> bool:
    """The character is present: its shirt, its hair, and the hair above the shirt (details are not required)."""
    checks = trait_checks(image, token)
    return checks["shirt"] and checks["hair"] and checks["hair_above_shirt"]


REJECTIONS = ("shirt colour", "shirt in pieces", "shirt too big", "no hair", "hair not above shirt")


def rejection(image: Any, token: str) -> str | None:
    """Why ``has_character`` is False for this image (None when it is True): the first of ``REJECTIONS`` that holds.

    "shirt colour": fewer than ``MIN_SHIRT_PIXELS`` pixels anywhere lie within ``TRAIT_TOLERANCE`` of the shirt's
    colour (another colour, or no shirt); "shirt in pieces": there are enough, but no 8-connected blob of them is as
    large as a shirt. A diagnosis for the benchmarks (what the composite's favourites get wrong); the verdict itself
    stays ``has_character``'s.
    """
    checks = trait_checks(image, token)
    if checks["shirt"] and checks["hair"] and checks["hair_above_shirt"]:
        return None
    if not checks["shirt"]:
        mask = _mask(as_array(image), CHARACTERS[token].shirt)
        if int(mask.sum()) < MIN_SHIRT_PIXELS:
            return "shirt colour"
        return "shirt too big" if int(_shirt_blob(mask).sum()) > MAX_SHIRT_PIXELS else "shirt in pieces"
    return "no hair" if not checks["hair"] else "hair not above shirt"


def shirt_offset(image: Any, token: str) -> float:
    """How far the image's best shirt-coloured pixels are from the shirt's colour: the RGB distance within which
    ``MIN_SHIRT_PIXELS`` pixels lie (0 for a clean render; the oracle accepts a shirt up to ``TRAIT_TOLERANCE``)."""
    pixels = as_array(image).reshape(-1, 3)
    d = _distance(pixels, np.array([CHARACTERS[token].shirt]))[:, 0]
    return float(np.partition(d, MIN_SHIRT_PIXELS - 1)[MIN_SHIRT_PIXELS - 1])


def noise_residual(image: Any) -> float:
    """Mean over pixels of the distance (mean |ΔRGB|, 0–1) to the most similar of the 8 neighbours.

    Every pixel of a flat area or a straight edge has an identical neighbour, so the clean world scores ~0 (only
    single-pixel stars count); noise and speckle leave no pixel a twin.
    """
    img = np.pad(as_array(image).astype(np.float32) / 255.0, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    centre = img[1:-1, 1:-1]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    diffs = [
        np.abs(centre - img[1 + dy : img.shape[0] - 1 + dy, 1 + dx : img.shape[1] - 1 + dx]).mean(-1)
        for dy, dx in shifts
    ]
    return float(np.min(diffs, axis=0).mean())


def quality(image: Any) -> float:
    """1 for a clean image, falling linearly to 0 at a residual of ``NOISE_SCALE``."""
    return float(np.clip(1.0 - noise_residual(image) / NOISE_SCALE, 0.0, 1.0))


def diversity(images: list[Any]) -> float:
    """Mean pairwise mean-absolute difference (0–1) of the images pooled to 16×16; 0 for identical images."""
    pooled = [as_array(i).astype(np.float32).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3)) / 255.0 for i in images]
    pairs = [np.abs(a - b).mean() for k, a in enumerate(pooled) for b in pooled[k + 1 :]]
    return float(np.mean(pairs)) if pairs else 0.0


@dataclass(frozen=True)
class Verdict:
    """The oracle's reading of a set of samples: rates over images, and the set's diversity."""

    n: int
    scene_accuracy: float  # share of images whose scene is the prompt's
    identity_rate: float | None  # share of images showing the character (None: no character asked for)
    identity_mean: float | None  # mean share of trait checks passed
    quality: float
    diversity: float

    @property
    def score(self) -> float:
        """One number for "which LoRA is truly best": the target drawn (identity rate) in the scene the prompt asked
        for (scene accuracy), so a LoRA that draws the character everywhere, whatever the prompt, does not win."""
        return (self.identity_rate or 0.0) * self.scene_accuracy

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"score": self.score}


def judge(images: list[Any], prompts: list[str], token: str | None = None) -> Verdict:
    """The oracle's verdict on ``images`` made from ``prompts`` (one each) for character ``token``."""
    if len(images) != len(prompts) or not images:
        raise ValueError(f"judge: need one prompt per image and at least one image (got {len(images)}, {len(prompts)})")
    arrays = [as_array(i) for i in images]
    scene_hits = [scene_of(a) == scene_in_prompt(p) for a, p in zip(arrays, prompts)]
    ids = [identity(a, token) for a in arrays] if token else None
    present = [has_character(a, token) for a in arrays] if token else None
    return Verdict(
        n=len(arrays),
        scene_accuracy=float(np.mean(scene_hits)),
        identity_rate=float(np.mean(present)) if present is not None else None,
        identity_mean=float(np.mean(ids)) if ids is not None else None,
        quality=float(np.mean([quality(a) for a in arrays])),
        diversity=diversity(arrays),
    )
