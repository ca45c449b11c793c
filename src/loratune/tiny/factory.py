"""``build_tiny_models``: build every tiny model into a temporary folder, then rename it into place."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from loratune.atomic import atomic_dir, atomic_write_text
from loratune.errors import LoratuneError
from loratune.families import DEFAULT_FAMILY, FAMILIES
from loratune.modelref import write_stand_in_marker

# Bump when anything the factory writes changes: cached builds of another version are rebuilt.
FACTORY_VERSION = 8
MANIFEST = "loratune-tiny.json"
CONFIG_NAME = "loratune.yaml"
SEED = 0


def config_name(family: str) -> str:
    """The tiny config of a family's pipeline: ``loratune.yaml`` for the default family, else ``loratune-<f>.yaml``."""
    return CONFIG_NAME if family == DEFAULT_FAMILY else f"loratune-{family}.yaml"


# The families whose pipeline is also written as one checkpoint file in their original layout.
ONE_FILE = [name for name, family in FAMILIES.items() if family.single_file_keys]

# Relative locations inside out_dir (also what the yaml refers to): a pipeline folder per registered family and its
# one-file twin, then the scorers, the dataset and the configs.
LAYOUT: dict[str, str] = {
    **{family: family for family in FAMILIES},
    **{f"{family}_file": f"single_file/{family}.safetensors" for family in ONE_FILE},
    "open_clip": "open_clip",
    "hf_clip": "hf_clip",
    "aesthetic": "aesthetic/aesthetic.pth",
    "arcface": "arcface/arcface.onnx",
    "face_detector": "arcface/scrfd.onnx",
    "vlm": "vlm",
    "imagereward": "imagereward",
    "hpsv2": "hpsv2",
    "florence2": "florence2",
    "tagger": "tagger",
    "dataset": "dataset/train",
    "references": "dataset/references",
    "config": CONFIG_NAME,
    **{f"config_{family}": config_name(family) for family in FAMILIES if family != DEFAULT_FAMILY},
}


@dataclass(frozen=True)
class TinyModels:
    """Absolute paths of everything ``build_tiny_models`` wrote.

    Each family's pipeline, config and one-file twin are ``bases[family]`` / ``configs[family]`` / ``files[family]``,
    also readable as attributes: ``tiny.sdxl`` (the pipeline folder), ``tiny.config_sdxl`` (its config;
    ``tiny.config`` is the default family's) and ``tiny.sdxl_file`` (the pipeline as one checkpoint in the family's
    original layout: ``model.base: single_file/sdxl.safetensors``, ``model.config: sdxl``).
    """

    root: Path
    bases: dict[str, Path]
    configs: dict[str, Path]
    files: dict[str, Path]
    open_clip: Path
    hf_clip: Path
    aesthetic: Path
    arcface: Path
    face_detector: Path  # stand-in SCRFD beside arcface: the folder is an insightface pack (FaceAnalysis(name=folder))
    vlm: Path
    imagereward: Path  # THUDM/ImageReward's layout: ImageReward.pt + med_config.json (+ a tiny BERT vocab.txt)
    hpsv2: Path  # open_clip folder whose weights file is HPSv2's {"state_dict": ...} checkpoint
    florence2: Path  # prose captioner: Florence2ForConditionalGeneration + Florence2Processor
    tagger: Path  # WD14-style tagger: model.onnx + selected_tags.csv
    dataset: Path
    references: Path
    config: Path

    @classmethod
    def at(cls, root: Path) -> TinyModels:
        paths = {name: root / rel for name, rel in LAYOUT.items()}
        bases = {family: paths.pop(family) for family in FAMILIES}
        configs = {DEFAULT_FAMILY: paths["config"]}
        configs |= {family: paths.pop(f"config_{family}") for family in FAMILIES if family != DEFAULT_FAMILY}
        files = {family: paths.pop(f"{family}_file") for family in ONE_FILE}
        return cls(root=root, bases=bases, configs=configs, files=files, **paths)

    def __getattr__(self, name: str) -> Path:
        # Only reached for names that are not fields: a family's pipeline, config or one file by name.
        bases, configs = self.__dict__.get("bases", {}), self.__dict__.get("configs", {})
        files = self.__dict__.get("files", {})
        if name in bases:
            return bases[name]
        if name.startswith("config_") and name.removeprefix("config_") in configs:
            return configs[name.removeprefix("config_")]
        if name.endswith("_file") and name.removesuffix("_file") in files:
            return files[name.removesuffix("_file")]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, str]:
        """Every path by its layout name (pipelines by family, configs as ``config`` / ``config_<family>``)."""
        return {"root": str(self.root), **{name: str(self.root / rel) for name, rel in LAYOUT.items()}}


Progress = Callable[[str], None]


def build_tiny_models(out_dir: str | Path, force: bool = False, progress: Progress | None = None) -> TinyModels:
    """Build (or reuse) the tiny models under ``out_dir`` and return their paths.

    >>> models = build_tiny_models(".cache/tiny-models")  # doctest: +SKIP
    >>> StableDiffusionPipeline.from_pretrained(models.sd15)  # doctest: +SKIP
    """
    root = Path(out_dir).expanduser().resolve()
    models = TinyModels.at(root)
    say = progress or (lambda _msg: None)
    if root.exists() and not root.is_dir():
        raise LoratuneError(f"{root}: exists and is not a folder")
    with _build_lock(root):
        if not force and _complete(root):
            _refresh_config(models)
            return models
        # The build replaces the whole folder: never swallow a folder that holds something else.
        if root.is_dir() and not (root / MANIFEST).is_file() and any(root.iterdir()):
            raise LoratuneError(f"{root}: folder exists and is not a tiny-models folder; give a new or empty folder")
        with atomic_dir(root) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
            _build_all(tmp, say)
            say("writing the configs")
            _write_config(TinyModels.at(tmp))
            (tmp / MANIFEST).write_text(
                json.dumps({"version": FACTORY_VERSION, "seed": SEED, "paths": LAYOUT}, indent=2) + "\n"
            )
    return models


def _build_all(tmp: Path, say: Progress) -> None:
    # Imports here: torch & co. load only when a build is really needed.
    from loratune.tiny.aesthetic import build_aesthetic
    from loratune.tiny.arcface import build_arcface
    from loratune.tiny.clip import OPEN_CLIP_EMBED_DIM, build_hf_clip, build_open_clip
    from loratune.tiny.dataset import make_character_dataset
    from loratune.tiny.face_detector import build_face_detector
    from loratune.tiny.florence import build_florence2
    from loratune.tiny.preference import build_hpsv2, build_imagereward
    from loratune.tiny.tagger import build_tagger
    from loratune.tiny.vlm import build_vlm

    paths = TinyModels.at(tmp)
    steps: list[tuple[str, Path, Callable[[], None]]] = [
        (f"{family.label} pipeline", paths.bases[name], lambda f=family, n=name: f.build_tiny(paths.bases[n], SEED))
        for name, family in FAMILIES.items()
    ]
    steps += [
        ("open_clip CLIP", paths.open_clip, lambda: build_open_clip(paths.open_clip, SEED)),
        ("HF CLIPModel + CLIPProcessor", paths.hf_clip, lambda: build_hf_clip(paths.hf_clip, SEED)),
        (
            "LAION aesthetic MLP",
            paths.aesthetic.parent,
            lambda: build_aesthetic(paths.aesthetic, OPEN_CLIP_EMBED_DIM, SEED),
        ),
        ("ArcFace ONNX recogniser", paths.arcface.parent, lambda: build_arcface(paths.arcface, SEED)),
        ("skin-tone SCRFD face detector", paths.face_detector.parent, lambda: build_face_detector(paths.face_detector)),
        ("InternVL vision-language model", paths.vlm, lambda: build_vlm(paths.vlm, SEED)),
        ("ImageReward BLIP reward model", paths.imagereward, lambda: build_imagereward(paths.imagereward, SEED)),
        ("HPSv2 preference CLIP", paths.hpsv2, lambda: build_hpsv2(paths.hpsv2, SEED)),
        ("Florence-2 prose captioner", paths.florence2, lambda: build_florence2(paths.florence2, SEED)),
        ("WD14-style ONNX tagger", paths.tagger, lambda: build_tagger(paths.tagger, SEED)),
    ]
    for what, folder, build in steps:
        say(what)
        build()
        write_stand_in_marker(folder, f"tiny {what}")
    from loratune.singlefile.write import write_single_file

    for name, file in paths.files.items():
        say(f"{FAMILIES[name].label} as one checkpoint file (original layout)")
        write_single_file(paths.bases[name], file, name)
    if paths.files:
        labels = ", ".join(FAMILIES[name].label for name in paths.files)
        write_stand_in_marker(next(iter(paths.files.values())).parent, f"tiny {labels} pipelines as single files")
    say("procedural two-character dataset")
    make_character_dataset(paths.dataset.parent, n_per_character=8, size=64, seed=SEED)


def _complete(root: Path) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("version") == FACTORY_VERSION


def _config_texts(models: TinyModels) -> dict[Path, str]:
    from loratune.tiny.config_file import tiny_config

    header = (
        "# loratune config for the tiny stand-in models written by `loratune tiny-models`.\n"
        "# Every model here has random weights: scores exercise the pipeline, they mean nothing.\n"
    )
    config = tiny_config()
    texts = {}
    for family, path in models.configs.items():
        on_family = {**config, "model": {**config["model"], "base": LAYOUT[family], "family": family}}
        texts[path] = header + yaml.safe_dump(on_family, sort_keys=False)
    return texts


def _write_config(models: TinyModels) -> None:
    for path, text in _config_texts(models).items():
        atomic_write_text(path, text)


def _refresh_config(models: TinyModels) -> None:
    """Rewrite the yaml when this version of the code would write a different one."""
    for path, text in _config_texts(models).items():
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Serialise builds of one folder across processes (parallel test sessions share the cache)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.parent / f".{root.name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
