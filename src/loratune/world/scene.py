"""The procedural world: characters defined by visible traits, scenes by big colour layouts, drawn with numpy.

Everything is deterministic from a seed. A character is a little figure (legs, shirt with an optional stripe, arms,
head of a given shape, hair, optional hat); a scene is a background whose large areas use a small palette, so the
oracle can read both back from pixels. Two *target* characters (``lucaboy``, ``albertoboy``) are kept out of the base
model's training; the others teach it what a figure on a background looks like.

>>> image, caption = render(CHARACTERS["benboy"], SCENES["beach"], Jitter.draw(0))
>>> image.shape, caption
((64, 64, 3), 'benboy, a boy with black hair and a red shirt, waving on a beach')
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
SIZE = 64
SKIN: RGB = (235, 175, 140)
POSES = ("standing", "waving", "jumping")


@dataclass(frozen=True)
class Scene:
    name: str
    phrase: str  # caption text after the pose, e.g. "on a beach"
    palette: tuple[RGB, ...]  # the colours of its large areas (what the oracle matches)


SCENES: dict[str, Scene] = {
    s.name: s
    for s in (
        Scene("beach", "on a beach", ((140, 200, 245), (20, 70, 190), (240, 220, 130))),
        Scene("town", "in a town", ((215, 215, 225), (170, 100, 90), (150, 150, 175), (95, 95, 95))),
        Scene("forest", "in a forest", ((30, 100, 40), (110, 75, 40), (110, 190, 60))),
        Scene("night", "at night", ((15, 20, 60), (50, 40, 70))),
    )
}


@dataclass(frozen=True)
class Character:
    token: str
    kind: str  # "boy" | "girl"
    hair_name: str
    hair: RGB
    shirt_name: str
    shirt: RGB
    pants: RGB
    head: str = "round"  # "round" | "square"
    stripe: RGB | None = None  # a horizontal band across the shirt
    hat: RGB | None = None
    target: bool = False

    @property
    def description(self) -> str:
        extra = " with a stripe" if self.stripe else ""
        hat = " and a hat" if self.hat else ""
        article = "an" if self.shirt_name[0] in "aeiou" else "a"
        return f"a {self.kind} with {self.hair_name} hair and {article} {self.shirt_name} shirt{extra}{hat}"

    @property
    def traits(self) -> tuple[str, ...]:
        found = [f"{self.hair_name} hair", f"a {self.shirt_name} shirt", f"a {self.head} head"]
        if self.stripe:
            found.append("a striped shirt")
        if self.hat:
            found.append("a hat")
        return tuple(found)


_C = Character
CHARACTERS: dict[str, Character] = {
    c.token: c
    for c in (
        # Targets: their shirt colours appear nowhere else in the world (tests check the distances). No stripe or hat:
        # the 16×16-latent VAE blurs a 3-px stripe into the shirt, and the shirt's colour with it.
        _C("lucaboy", "boy", "brown", (120, 60, 20), "teal", (0, 170, 170), (40, 60, 140), target=True),
        _C(
            "albertoboy",
            "boy",
            "golden",
            (220, 170, 40),
            "purple",
            (120, 40, 150),
            (90, 60, 40),
            head="square",
            target=True,
        ),
        _C("benboy", "boy", "black", (20, 20, 20), "red", (200, 30, 30), (40, 40, 90)),
        _C("mayagirl", "girl", "blonde", (240, 220, 120), "blue", (30, 60, 210), (60, 60, 60)),
        _C("tomboy", "boy", "red", (190, 60, 20), "yellow", (240, 200, 0), (40, 60, 140), head="square"),
        _C("zoegirl", "girl", "black", (20, 20, 20), "white", (240, 240, 240), (200, 30, 30), stripe=(30, 60, 210)),
        _C("samboy", "boy", "blonde", (240, 220, 120), "black", (25, 25, 25), (120, 120, 120), hat=(200, 30, 30)),
        _C("lilygirl", "girl", "brown", (120, 60, 20), "orange", (240, 120, 0), (40, 40, 90), head="square"),
        _C("maxboy", "boy", "white", (230, 230, 230), "green", (30, 140, 50), (90, 60, 40)),
        _C("ninagirl", "girl", "red", (190, 60, 20), "pink", (250, 140, 190), (60, 60, 60), hat=(240, 240, 240)),
        _C("joeboy", "boy", "brown", (120, 60, 20), "grey", (128, 128, 128), (25, 25, 25), stripe=(240, 200, 0)),
        _C(
            "ivygirl",
            "girl",
            "black",
            (20, 20, 20),
            "brown",
            (110, 70, 40),
            (30, 60, 210),
            head="square",
            hat=(30, 140, 50),
        ),
    )
}
TARGETS = tuple(c.token for c in CHARACTERS.values() if c.target)
BASE_CHARACTERS = tuple(c.token for c in CHARACTERS.values() if not c.target)


@dataclass(frozen=True)
class Jitter:
    """Where and how the figure stands, and the background's own variation."""

    pose: str
    cx: int  # figure centre, pixels
    feet: int  # row of the feet
    scale: float
    horizon: int  # shift of the scene's horizontal layout
    seed: int  # scene details (building and tree positions, stars)

    @classmethod
    def draw(cls, seed: int) -> Jitter:
        rng = random.Random(seed)
        return cls(
            pose=rng.choice(POSES),
            cx=rng.randint(20, 44),
            feet=rng.randint(54, 60),
            scale=rng.uniform(0.85, 1.15),
            horizon=rng.randint(-3, 3),
            seed=rng.randrange(2**31),
        )


def caption(character: Character, scene: Scene, pose: str, describe: bool = True) -> str:
    """Kohya-style caption: trigger token first; base characters are described, targets are left to the LoRA."""
    who = character.description if describe else f"a {character.kind}"
    return f"{character.token}, {who}, {pose} {scene.phrase}"


def render(character: Character | None, scene: Scene, jitter: Jitter, size: int = SIZE) -> tuple[np.ndarray, str]:
    """One image (``size``² RGB uint8) and its caption; ``character=None`` draws the empty scene."""
    img = np.zeros((64, 64, 3), np.uint8)
    _BACKGROUNDS[scene.name](img, jitter)
    if character is not None:
        _figure(img, character, jitter)
    if size != 64:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))
    text = caption(character, scene, jitter.pose, describe=not character.target) if character else scene.phrase
    return img, text


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: RGB) -> None:
    xa, ya, xb, yb = (round(v) for v in (x0, y0, x1, y1))
    img[max(ya, 0) : max(yb, 0), max(xa, 0) : max(xb, 0)] = colour


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour: RGB, top_only: float | None = None) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if top_only is not None:
        mask &= yy <= top_only
    img[mask] = colour


def _beach(img: np.ndarray, j: Jitter) -> None:
    sky, sea, sand = SCENES["beach"].palette
    img[:] = sky
    _rect(img, 0, 22 + j.horizon, 64, 34 + j.horizon, sea)
    _rect(img, 0, 34 + j.horizon, 64, 64, sand)


def _town(img: np.ndarray, j: Jitter) -> None:
    sky, wall_a, wall_b, road = SCENES["town"].palette
    rng = random.Random(j.seed)
    img[:] = sky
    x = -rng.randint(0, 8)
    while x < 64:
        width, top = rng.randint(12, 18), rng.randint(8, 18) + j.horizon
        _rect(img, x, top, x + width - 1, 46, rng.choice((wall_a, wall_b)))
        for wy in range(top + 3, 42, 7):  # windows: small details, not part of the palette
            for wx in range(x + 3, x + width - 4, 5):
                _rect(img, wx, wy, wx + 2, wy + 3, (170, 220, 240))
        x += width
    _rect(img, 0, 46, 64, 64, road)


def _forest(img: np.ndarray, j: Jitter) -> None:
    canopy, trunk, grass = SCENES["forest"].palette
    rng = random.Random(j.seed)
    img[:] = canopy
    for _ in range(5):
        x = rng.randint(0, 60)
        _rect(img, x, 0, x + rng.randint(3, 5), 44 + j.horizon, trunk)
    _rect(img, 0, 44 + j.horizon, 64, 64, grass)


def _night(img: np.ndarray, j: Jitter) -> None:
    sky, ground = SCENES["night"].palette
    rng = random.Random(j.seed)
    img[:] = sky
    for _ in range(12):  # stars: single pixels, not part of the palette
        img[rng.randint(0, 38), rng.randint(0, 63)] = (250, 250, 210)
    # the moon is a detail, not palette: its colour is close to the town's sky
    _disc(img, rng.randint(8, 56), rng.randint(7, 14), 5.5, (235, 235, 200))
    _rect(img, 0, 44 + j.horizon, 64, 64, ground)


_BACKGROUNDS = {"beach": _beach, "town": _town, "forest": _forest, "night": _night}


def _figure(img: np.ndarray, c: Character, j: Jitter) -> None:
    s, cx = j.scale, j.cx
    feet = j.feet - (5 if j.pose == "jumping" else 0)
    leg_h, torso_h, torso_w, head_r = 9 * s, 11 * s, 12 * s, 5.5 * s
    hip = feet - leg_h
    shoulder = hip - torso_h
    spread = 3 * s if j.pose == "jumping" else 1 * s
    _rect(img, cx - spread - 3 * s, hip, cx - spread, feet, c.pants)
    _rect(img, cx + spread, hip, cx + spread + 3 * s, feet, c.pants)
    # arms (skin) beside the torso; waving raises the right one
    _rect(img, cx - torso_w / 2 - 3 * s, shoulder + 1, cx - torso_w / 2, shoulder + 10 * s, SKIN)
    if j.pose == "waving":
        _rect(img, cx + torso_w / 2, shoulder - 8 * s, cx + torso_w / 2 + 3 * s, shoulder + 2, SKIN)
    else:
        _rect(img, cx + torso_w / 2, shoulder + 1, cx + torso_w / 2 + 3 * s, shoulder + 10 * s, SKIN)
    _rect(img, cx - torso_w / 2, shoulder, cx + torso_w / 2, hip, c.shirt)
    if c.stripe:
        mid = shoulder + torso_h / 2
        _rect(img, cx - torso_w / 2, mid - 1.5 * s, cx + torso_w / 2, mid + 1.5 * s, c.stripe)
    head_cy = shoulder - head_r
    if c.head == "square":
        _rect(img, cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r, SKIN)
        _rect(img, cx - head_r - 1, head_cy - head_r - 2 * s, cx + head_r + 1, head_cy - head_r * 0.2, c.hair)
    else:
        _disc(img, cx, head_cy, head_r, SKIN)
        _disc(img, cx, head_cy - 1, head_r + 1, c.hair, top_only=head_cy - head_r * 0.2)
    if c.hat:
        top = head_cy - head_r - 2 * s
        _rect(img, cx - head_r - 2, top - 1, cx + head_r + 2, top + 1, c.hat)
        _rect(img, cx - head_r * 0.7, top - 5 * s, cx + head_r * 0.7, top, c.hat)


def sample_jitters(seed: int, n: int) -> list[Jitter]:
    rng = random.Random(seed)
    return [Jitter.draw(rng.randrange(2**31)) for _ in range(n)]


def world_batch(tokens: tuple[str, ...], seed: int, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` images of the given characters over all scenes (uint8, n×64×64×3) and their captions."""
    rng = random.Random(seed)
    images, captions = [], []
    scenes = list(SCENES.values())
    for jitter in sample_jitters(seed, n):
        image, text = render(CHARACTERS[rng.choice(tokens)], rng.choice(scenes), jitter)
        images.append(image)
        captions.append(text)
    return np.stack(images), captions
