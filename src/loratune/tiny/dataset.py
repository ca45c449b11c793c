"""A procedural two-character dataset in kohya layout, drawn with PIL — deterministic from the seed.

``make_character_dataset(out_dir)`` writes::

    out_dir/train/10_lucaboy/0000.png + 0000.txt      (kohya: 10 repeats; caption "lucaboy, a boy with ...")
    out_dir/train/10_albertoboy/...
    out_dir/references/lucaboy/*.png                  (clean front views for identity scoring)
    out_dir/references/albertoboy/*.png

Each character keeps its hair and palette across images; pose, scale, position and background vary, so a LoRA has
something to learn and the consistency/diversity metrics something to tell apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from loratune.atomic import atomic_path, atomic_write_text

REPEATS = 10
N_REFERENCES = 3


@dataclass(frozen=True)
class CharacterLook:
    token: str
    description: str  # caption text after the token
    traits: tuple[str, ...]
    hair: tuple[int, int, int]
    hair_style: str  # "curly" | "spiky"
    shirt: tuple[int, int, int]
    shorts: tuple[int, int, int]
    skin: tuple[int, int, int]


CHARACTERS: tuple[CharacterLook, ...] = (
    CharacterLook(
        token="lucaboy",
        description="a boy with curly brown hair",
        traits=("curly brown hair", "a teal shirt"),
        hair=(112, 70, 38),
        hair_style="curly",
        shirt=(32, 150, 140),
        shorts=(40, 70, 160),
        skin=(238, 196, 160),
    ),
    CharacterLook(
        token="albertoboy",
        description="a boy with spiky black hair",
        traits=("spiky black hair", "a yellow shirt"),
        hair=(30, 26, 28),
        hair_style="spiky",
        shirt=(236, 196, 40),
        shorts=(190, 60, 40),
        skin=(196, 140, 100),
    ),
)

BACKGROUNDS: dict[str, str] = {
    "beach": "standing on a beach",
    "town": "in a seaside town",
    "field": "in a green field",
    "night": "under a night sky",
}


@dataclass
class CharacterDataset:
    root: Path
    train: Path
    references: Path
    characters: dict[str, CharacterLook] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)


def make_character_dataset(
    out_dir: str | Path, n_per_character: int = 8, size: int = 64, seed: int = 0
) -> CharacterDataset:
    """Draw ``n_per_character`` captioned training images per character plus reference images (PNG, ``size`` px)."""
    if n_per_character < 1:
        raise ValueError(f"n_per_character must be >= 1 (got {n_per_character})")
    if size < 32:
        raise ValueError(f"size must be >= 32 (got {size})")
    root = Path(out_dir)
    result = CharacterDataset(root=root, train=root / "train", references=root / "references")
    for look in CHARACTERS:
        result.characters[look.token] = look
        # A string seed is hashed deterministically (sha512) by random.Random, unlike hash().
        rng = random.Random(f"{seed}:{look.token}")
        folder = result.train / f"{REPEATS}_{look.token}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_character):
            background = rng.choice(sorted(BACKGROUNDS))
            image = _draw(look, background, size, rng, reference=False)
            path = folder / f"{i:04d}.png"
            _save(image, path)
            atomic_write_text(
                path.with_suffix(".txt"), f"{look.token}, {look.description}, {BACKGROUNDS[background]}\n"
            )
            result.images.append(path)
        refs = result.references / look.token
        refs.mkdir(parents=True, exist_ok=True)
        for i in range(N_REFERENCES):
            _save(_draw(look, "plain", size, rng, reference=True), refs / f"ref-{i:02d}.png")
    return result


def _save(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _draw(look: CharacterLook, background: str, size: int, rng: random.Random, reference: bool) -> Image.Image:
    # Drawn at 4× and downsampled: anti-aliased edges look less like synthetic test data to the metrics.
    s = size * 4
    image = Image.new("RGB", (s, s))
    draw = ImageDraw.Draw(image)
    _background(draw, background, s, rng)
    scale = 1.0 if reference else rng.uniform(0.65, 1.05)
    cx = s / 2 if reference else rng.uniform(0.35, 0.65) * s
    ground = s * (0.92 if reference else rng.uniform(0.85, 0.97))
    pose = rng.choice(("down", "hips")) if reference else rng.choice(("down", "up", "wave", "hips"))
    _figure(draw, look, cx, ground, s * 0.8 * scale, pose, rng)
    return image.resize((size, size), Image.LANCZOS)


def _background(draw: ImageDraw.ImageDraw, kind: str, s: int, rng: random.Random) -> None:
    # A brightness shift keeps each colour's hue, so no background drifts into the skin tones the stand-in face
    # detector (tiny/face_detector.py) looks for.
    shift = rng.randint(-12, 12)
    jitter = lambda c: tuple(max(0, min(255, v + shift)) for v in c)
    if kind == "plain":
        draw.rectangle((0, 0, s, s), fill=(235, 235, 230))
    elif kind == "beach":
        draw.rectangle((0, 0, s, s * 0.5), fill=jitter((135, 200, 240)))
        draw.rectangle((0, s * 0.5, s, s * 0.65), fill=jitter((30, 110, 190)))
        draw.rectangle((0, s * 0.65, s, s), fill=jitter((236, 214, 160)))
    elif kind == "town":
        draw.rectangle((0, 0, s, s), fill=jitter((170, 210, 235)))
        x = 0.0
        while x < s:
            w = rng.uniform(0.15, 0.3) * s
            h = rng.uniform(0.35, 0.7) * s
            draw.rectangle(
                (x, s * 0.8 - h, x + w, s), fill=jitter(rng.choice([(230, 150, 110), (240, 210, 150), (200, 120, 130)]))
            )
            x += w
        draw.rectangle((0, s * 0.8, s, s), fill=jitter((150, 140, 130)))
    elif kind == "field":
        draw.rectangle((0, 0, s, s * 0.55), fill=jitter((160, 215, 245)))
        draw.rectangle((0, s * 0.55, s, s), fill=jitter((90, 170, 70)))
    else:  # night
        draw.rectangle((0, 0, s, s), fill=jitter((20, 24, 60)))
        for _ in range(12):
            x, y = rng.uniform(0, s), rng.uniform(0, s * 0.6)
            draw.ellipse((x, y, x + s * 0.012, y + s * 0.012), fill=(250, 250, 210))
        draw.rectangle((0, s * 0.75, s, s), fill=jitter((40, 60, 40)))


def _figure(
    draw: ImageDraw.ImageDraw,
    look: CharacterLook,
    cx: float,
    ground: float,
    height: float,
    pose: str,
    rng: random.Random,
) -> None:
    u = height / 8  # the figure is eight "heads" tall, head included
    head_r = u * 0.9
    head_cy = ground - height + head_r
    neck = head_cy + head_r
    hip = neck + u * 3
    limb = max(2, int(u * 0.45))
    # Legs and shorts.
    for side in (-1, 1):
        draw.line((cx + side * u * 0.4, hip, cx + side * u * 0.6, ground), fill=look.skin, width=limb)
    draw.rectangle((cx - u * 0.9, hip - u * 0.2, cx + u * 0.9, hip + u * 1.1), fill=look.shorts)
    # Arms by pose, then the shirt over the shoulders.
    shoulder = neck + u * 0.4
    for side in (-1, 1):
        hand_y = {
            "down": hip + u * 0.3,
            "up": head_cy - u * 1.5,
            "hips": hip,
            "wave": head_cy - u if side == 1 else hip,
        }[pose]
        hand_x = cx + side * (u * 0.9 if pose == "hips" else u * 1.6)
        draw.line((cx + side * u * 0.9, shoulder, hand_x, hand_y), fill=look.skin, width=limb)
    draw.rounded_rectangle((cx - u, neck, cx + u, hip + u * 0.1), radius=u * 0.3, fill=look.shirt)
    # Head, eyes, hair.
    draw.ellipse((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r), fill=look.skin)
    eye = max(1.0, u * 0.12)
    for side in (-1, 1):
        ex = cx + side * head_r * 0.35
        draw.ellipse((ex - eye, head_cy - eye, ex + eye, head_cy + eye), fill=(30, 30, 30))
    if look.hair_style == "curly":
        for k in range(9):
            ang = 3.14159 * (k / 8)
            hx = cx - math.cos(ang) * head_r * 0.95
            hy = head_cy - math.sin(ang) * head_r * 0.85
            r = head_r * rng.uniform(0.33, 0.42)
            draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=look.hair)
    else:
        base = head_cy - head_r * 0.35
        for k in range(6):
            x0 = cx - head_r + k * head_r * 2 / 6
            x1 = x0 + head_r * 2 / 6
            tip = head_cy - head_r * rng.uniform(1.45, 1.75)
            draw.polygon([(x0, base), ((x0 + x1) / 2, tip), (x1, base)], fill=look.hair)
        draw.chord((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r * 0.2), 180, 360, fill=look.hair)
