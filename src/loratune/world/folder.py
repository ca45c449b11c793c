"""``write_world(dir)``: the known-truth world as a folder every loratune command can use.

Writes::

    DIR/base/                        the pre-trained world pipeline (StableDiffusionPipeline.from_pretrained)
    DIR/base.safetensors             the same base as one file in the original (LDM) layout, as model sites ship
                                     them (``model.base: base.safetensors`` with ``model.config: base``)
    DIR/dataset/10_lucaboy/*.png+.txt   kohya dataset of one target character across all scenes
    DIR/references/lucaboy/*.png     held-out references (other poses/positions; never in the dataset)
    DIR/scorers/open_clip/           the world-trained CLIP (CLIPScore and CLIP-I; ``loratune.world.scorers``)
    DIR/scorers/aesthetic/           a random-weight LAION-style MLP on that CLIP (a stand-in, marked as such)
    DIR/loratune.yaml                a complete config over all of the above (paths relative to the yaml)
    DIR/loratune-world.json          what was written, and the base weights' sha256
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loratune.atomic import atomic_dir
from loratune.errors import LoratuneError
from loratune.world.scene import CHARACTERS, SCENES, TARGETS, caption, render, sample_jitters
from loratune.world.scorers import CLIP_DIR, CLIP_INFO, CLIP_MODEL_CFG

WEIGHTS = Path(__file__).parent / "weights"
MARKER = "loratune-world.json"
REPEATS = 10
N_TRAIN = 20  # five per scene
N_REFERENCES = 4  # one per scene
SEED = 0


@dataclass(frozen=True)
class World:
    """Absolute paths of what ``write_world`` wrote."""

    root: Path
    base: Path
    dataset: Path
    references: Path
    config: Path
    target: str


def world_config(target: str) -> dict[str, Any]:
    """The ``loratune.yaml`` mapping for a world folder whose LoRA learns ``target``."""
    character = CHARACTERS[target]
    norm = json.loads(CLIP_INFO.read_text())["norm_range"]  # the world CLIP's own scale (``scorers.calibrate``)
    prompts = [
        {"text": caption(character, scene, "standing", describe=False), "character": target}
        for scene in SCENES.values()
    ]
    return {
        "model": {"base": "base", "family": "sd15"},
        "dataset": {
            "path": "dataset",
            "caption_extension": ".txt",
            "resolution": 64,
            "buckets": False,
            "min_bucket": 64,
            "max_bucket": 64,
            "characters": {
                target: {"token": target, "traits": list(character.traits), "references": f"references/{target}"}
            },
        },
        "sampling": {
            "prompts": prompts,
            "negative_prompt": "",
            "seeds": [0, 1],
            "steps": 20,
            "cfg": 7.0,
            "scheduler": "dpm++",
            "width": 64,
            "height": 64,
        },
        "evaluation": {
            # World-trained CLIP for alignment and consistency, the weight-free noise level; the aesthetic MLP
            # is a stand-in.
            "backends": {
                "alignment": {"name": "clipscore", "model": "scorers/open_clip", "norm_range": norm["clipscore"]},
                "consistency": {"name": "clip_i", "model": "scorers/open_clip", "norm_range": norm["clip_i"]},
                "aesthetics": {
                    "name": "laion_aesthetic",
                    "model": "scorers/aesthetic/aesthetic.pth",
                    "clip_model": "scorers/open_clip",
                },
                # The world is flat-shaded: PIQE rates its clean images below the base model's grainy ones (the
                # scorer check says so), so its quality is the noise level, which reads grain and not flat colour.
                "quality": {"name": "noise"},
                "diversity": {"name": "lpips", "pretrained_backbone": False, "size": 64},
            },
            # a random-weight MLP's number means nothing: shown, but kept out of the composite
            "weights": {"aesthetics": 0.0},
            # Copy risk and CMMD on the world's own CLIP. It sees a new pose of the character as close to a training
            # image (held-out references: cosine 0.955-0.975 to their nearest training image), so a copy is above that.
            "learning": {"copy_embedder": {"name": "clip_i", "model": "scorers/open_clip"}, "copy_threshold": 0.98,
                         "cmmd_embedder": {"name": "clip_i", "model": "scorers/open_clip"}},
            "device": "cpu",
            "dtype": "float32",
            "batch_size": 8,
            "trust_remote_code": False,
        },
        "train": {
            "rank": 8,
            "learning_rate": 1e-3,
            "optimizer": "adamw",
            "epochs": 4,
            "batch_size": 4,
            "save_every_epochs": 1,
            "mixed_precision": "no",
            "device": "cpu",
            "seed": 0,
            "output_name": target,
        },
        "search": {
            "n_trials": 6,
            "sampler": "tpe",
            "seed": 0,
            "pruner": "hyperband",
            "space": {
                "learning_rate": {"type": "float", "low": 2e-4, "high": 3e-3, "log": True},
                "rank": {"type": "categorical", "choices": [4, 8]},
                "epochs": {"type": "int", "low": 2, "high": 5},
            },
            "phases": {"baseline": True, "refine_trials": 2, "ensemble_top_k": 2, "ensemble_method": "svd"},
        },
    }


def write_world(out_dir: str | Path, target: str = "lucaboy") -> World:
    """Write the world folder for a LoRA of ``target`` (``lucaboy`` or ``albertoboy``) and return its paths.

    >>> world = write_world("world")  # doctest: +SKIP
    >>> train(load_config(world.config), "runs/luca")  # doctest: +SKIP
    """
    if target not in TARGETS:
        raise LoratuneError(f"target: {target!r} is not a target character (choose from {', '.join(TARGETS)})")
    root = Path(out_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LoratuneError(f"{root}: exists and is not a folder")
    # The write replaces the whole folder: never swallow a folder that holds something else.
    if root.is_dir() and not (root / MARKER).is_file() and any(root.iterdir()):
        raise LoratuneError(f"{root}: folder exists and is not a world folder; give a new or empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(root) as tmp:
        tmp.chmod(0o755)
        shutil.copytree(WEIGHTS / "base", tmp / "base")
        write_tokenizer(tmp / "base" / "tokenizer")
        from loratune.singlefile.write import write_single_file

        write_single_file(tmp / "base", tmp / "base.safetensors", "sd15")
        _write_images(tmp, target)
        _write_scorers(tmp / "scorers")
        header = (
            "# loratune config for the known-truth world written by `loratune world`.\n"
            "# World-trained: the base model, and the CLIP behind alignment (clipscore) and consistency (clip_i).\n"
            "# Still random-weight stand-ins: the aesthetics MLP and the LPIPS backbone (diversity); the noise level\n"
            "# (quality) needs none.\n"
        )
        (tmp / "loratune.yaml").write_text(header + yaml.safe_dump(world_config(target), sort_keys=False))
        info = json.loads((WEIGHTS / "base.json").read_text())
        clip = {"sha256": json.loads(CLIP_INFO.read_text())["sha256"]}
        marker = {"target": target, "seed": SEED, "base": info, "clip": clip}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return World(
        root=root,
        base=root / "base",
        dataset=root / "dataset",
        references=root / "references" / target,
        config=root / "loratune.yaml",
        target=target,
    )


def _write_images(root: Path, target: str) -> None:
    from PIL import Image

    character = CHARACTERS[target]
    scenes = list(SCENES.values())
    train = root / "dataset" / f"{REPEATS}_{target}"
    refs = root / "references" / target
    train.mkdir(parents=True)
    refs.mkdir(parents=True)
    # Separate jitter streams: a reference never repeats a training image's pose and position.
    for i, jitter in enumerate(sample_jitters(SEED, N_TRAIN)):
        image, text = render(character, scenes[i % len(scenes)], jitter)
        Image.fromarray(image).save(train / f"{i:04d}.png")
        (train / f"{i:04d}.txt").write_text(text + "\n")
    for i, jitter in enumerate(sample_jitters(SEED + 1000, N_REFERENCES)):
        image, _ = render(character, scenes[i % len(scenes)], jitter)
        Image.fromarray(image).save(refs / f"ref-{i:02d}.png")


def find_world(ref: str | Path | None) -> dict[str, Any] | None:
    """The marker of the world folder that holds ``ref`` (a path inside ``DIR``: its base model, a scorer, the
    dataset), else None. How the report and the banner tell world-trained models from real and random ones."""
    from loratune.modelref import find_marker

    found = find_marker(ref, MARKER)
    if found is None or found[1] is None or found[1].get("target") not in TARGETS:
        return None
    return dict(found[1], root=str(found[0]))


def write_tokenizer(folder: Path) -> None:
    """SD1.5's tokenizer (the real CLIP vocabulary, rebuilt offline), as ``build_sd15`` writes it."""
    from loratune.tiny.clip_tokenizer import make_clip_tokenizer, write_slow_tokenizer_files

    make_clip_tokenizer().save_pretrained(str(folder))
    write_slow_tokenizer_files(folder)


def _write_scorers(folder: Path) -> None:
    from loratune.modelref import write_stand_in_marker
    from loratune.tiny.aesthetic import build_aesthetic

    # World-trained, so no stand-in marker: the report and the banner treat its scores as meaningful.
    shutil.copytree(CLIP_DIR, folder / "open_clip")
    (folder / "aesthetic").mkdir(parents=True)
    build_aesthetic(folder / "aesthetic" / "aesthetic.pth", CLIP_MODEL_CFG["embed_dim"], SEED)
    write_stand_in_marker(folder / "aesthetic", "tiny LAION aesthetic MLP")
