"""Booru-style tags from SmilingWolf's WD taggers (wd-v1-4-*-tagger-v2, wd-*-tagger-v3, wd-eva02-large-tagger-v3):
``model.onnx`` through onnxruntime and the tag list ``selected_tags.csv`` beside it.

Preprocessing and reading follow the taggers' reference app (SmilingWolf/wd-tagger): alpha composited on white,
padded to a white square, resized (bicubic) to the model's input size, float32 0-255 in BGR order, NHWC; the output is
one sigmoid probability per row of ``selected_tags.csv``. General tags (category 0) above ``general_threshold`` are
kept, most confident first; rating (9) and character (4) tags never enter a caption — a character tag names the
identity the trigger is meant to carry.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.caption.base import Captioner
from loratune.errors import LoratuneError, first_line
from loratune.metrics.cache import cached_model
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL = 0


def read_tags(path: Path) -> tuple[list[str], list[int]]:
    """(names, categories) of ``selected_tags.csv`` (columns tag_id, name, category, count), in row order."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [r["name"] for r in rows], [int(r["category"]) for r in rows]
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError) as err:
        raise LoratuneError(f"caption.model: {path}: not a tagger tag list (tag_id,name,category,count): "
                            f"{first_line(err)}") from None


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """The tagger's input for one image: white-padded square, ``size`` px, float32 BGR 0-255, HWC."""
    import numpy as np
    from PIL import Image

    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


class Wd14Tagger(Captioner):
    class Options(Captioner.Options):
        general_threshold: float = Field(0.35, gt=0.0, lt=1.0, description="keep general tags above this probability")
        exclude_tags: list[str] = Field(default_factory=list, description="tags never written (underscores or spaces)")

    options: Options

    def files(self) -> tuple[Path, Path]:
        """(model.onnx, selected_tags.csv): in a local folder, or fetched from the hub (cache first)."""
        ref = self.model_id
        folder = Path(ref).expanduser()
        if folder.is_file():
            folder = folder.parent
        if folder.is_dir():
            found = folder / MODEL_FILE, folder / TAGS_FILE
            missing = [p.name for p in found if not p.is_file()]
            if missing:
                raise LoratuneError(f"caption.model: {folder} has no {' or '.join(missing)} (a WD tagger folder "
                                    f"holds {MODEL_FILE} and {TAGS_FILE})")
            return found
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(ref, MODEL_FILE)), Path(hf_hub_download(ref, TAGS_FILE))
        except Exception as err:  # noqa: BLE001  (offline, unknown repo, gated)
            raise LoratuneError(f"caption.model: cannot fetch {MODEL_FILE} and {TAGS_FILE} of {ref!r}: "
                                f"{first_line(err)}") from None

    def load(self) -> None:
        self.session, self.tags, self.categories, self.size = cached_model(
            ("wd14", self.model_id, str(self.runtime.device)), self._load
        )
        self.stand_in = is_stand_in(self.model_id)

    def _load(self) -> tuple[Any, list[str], list[int], int]:
        import onnxruntime as ort

        model, tags_file = self.files()
        tags, categories = read_tags(tags_file)
        cuda = getattr(self.runtime.device, "type", str(self.runtime.device)) == "cuda"
        providers = ["CUDAExecutionProvider"] if cuda and "CUDAExecutionProvider" in ort.get_available_providers() \
            else []
        try:
            session = ort.InferenceSession(str(model), providers=[*providers, "CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  (not an ONNX file, unsupported opset)
            raise LoratuneError(f"caption.model: {model}: cannot load the tagger: {first_line(err)}") from None
        shape = session.get_inputs()[0].shape
        outputs = session.get_outputs()[0].shape[-1]
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise LoratuneError(f"caption.model: {model}: expected an NHWC RGB input, got {shape}")
        if isinstance(outputs, int) and outputs != len(tags):
            raise LoratuneError(f"caption.model: {model} gives {outputs} tags but {tags_file.name} lists {len(tags)}")
        return session, tags, categories, int(shape[1])

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Tag probabilities, one row per image (in the order of ``selected_tags.csv``)."""
        import numpy as np

        batch = np.stack([prepare_image(image, self.size) for image in images])
        inputs = self.session.get_inputs()[0]
        output = self.session.get_outputs()[0]
        # Some exports fix the batch at 1: feed one image at a time there.
        if inputs.shape[0] == 1:
            return np.concatenate([self.session.run([output.name], {inputs.name: row[None]})[0] for row in batch])
        return self.session.run([output.name], {inputs.name: batch})[0]

    def describe(self, images: Sequence[Image.Image]) -> list[Any]:
        excluded = {t.strip().replace(" ", "_") for t in self.options.exclude_tags}
        out = []
        for row in self.probabilities(images):
            found = [(float(p), name) for name, category, p in zip(self.tags, self.categories, row)
                     if category == GENERAL and p > self.options.general_threshold and name not in excluded]
            found.sort(key=lambda pair: -pair[0])
            out.append([name for _, name in found])
        return out
