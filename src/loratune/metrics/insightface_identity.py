"""``insightface``: character consistency from InsightFace's ArcFace embeddings, scored as ``face_identity`` scores.

The model is a pack by name (``buffalo_l``, looked up under ``root/models/``; insightface fetches the packs it knows)
or folder, or a recogniser ONNX file by path plus a detector ONNX (``detector``); ``recogniser_only`` embeds the whole
image resized to the recogniser's input (112 px) — meant for pre-cropped, aligned faces and for tests with a bare
recogniser. Each image gives the embedding of its largest detected face; the reference centroid, the rate and the
fallback for faceless references are ``FaceIdentity``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.cache import cached_model
from loratune.metrics.face_identity import FaceIdentity, FaceOptions
from loratune.metrics.openclip_models import first_line
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class InsightFaceIdentity(FaceIdentity):
    """ArcFace embeddings via insightface: a FaceAnalysis pack, or detector + recogniser ONNX files by path."""

    class Options(FaceOptions):
        root: str = Field("~/.insightface", description="where insightface keeps packs (root/models/<name>)")
        detector: str | None = Field(
            None, description="detector ONNX (SCRFD/RetinaFace) when `model` is a recogniser ONNX"
        )
        recogniser_only: bool = Field(False, description="no detector: embed the whole image resized to 112 px")
        det_size: int = Field(640, ge=64, le=2048)
        det_thresh: float = Field(0.5, gt=0.0, lt=1.0)

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ref = self.model_id or ""
        self.is_onnx = ref.endswith(".onnx")
        if self.is_onnx and not Path(ref).expanduser().is_file():
            raise LoratuneError(f"{self.field_path}.model: recogniser ONNX not found: {ref}")
        # A bare name is a pack under `root` (insightface fetches the packs it knows); a path must exist.
        if ("/" in ref or ref.startswith((".", "~"))) and not Path(ref).expanduser().exists():
            raise LoratuneError(f"{self.field_path}.model: model path not found: {ref}")
        if self.options.detector and not Path(self.options.detector).expanduser().is_file():
            raise LoratuneError(f"{self.field_path}.detector: detector ONNX not found: {self.options.detector}")
        if self.is_onnx and not self.options.detector and not self.options.recogniser_only:
            raise LoratuneError(
                f"{self.field_path}: a recogniser ONNX needs a detector (option detector: PATH.onnx) "
                "or recogniser_only: true for pre-cropped faces"
            )

    def load(self) -> None:
        device = str(self.runtime.device)
        opts = self.options
        key = (
            "insightface",
            self.model_id,
            opts.root,
            opts.detector,
            opts.recogniser_only,
            opts.det_size,
            opts.det_thresh,
            device,
        )
        self.detector, self.recogniser = cached_model(key, self._load)
        self.stand_in = is_stand_in(self.model_id) or (opts.detector is not None and is_stand_in(opts.detector))

    def _load(self) -> tuple[Any, Any]:
        gpu = str(self.runtime.device).startswith("cuda")
        ctx_id = 0 if gpu else -1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        opts = self.options
        ref = str(Path(self.model_id or "").expanduser()) if self.is_onnx else (self.model_id or "")
        try:
            if self.is_onnx:
                recogniser = _onnx_model(ref, "recognition", providers, f"{self.field_path}.model")
                recogniser.prepare(ctx_id)
                detector = None
                if opts.detector and not opts.recogniser_only:
                    path = str(Path(opts.detector).expanduser())
                    detector = _onnx_model(path, "detection", providers, f"{self.field_path}.detector")
                    detector.prepare(ctx_id, input_size=(opts.det_size, opts.det_size), det_thresh=opts.det_thresh)
                return detector, recogniser
            from insightface.app import FaceAnalysis

            app = FaceAnalysis(
                name=ref, root=opts.root, allowed_modules=["detection", "recognition"], providers=providers
            )
            app.prepare(ctx_id=ctx_id, det_size=(opts.det_size, opts.det_size), det_thresh=opts.det_thresh)
        except LoratuneError:
            raise
        except Exception as err:  # noqa: BLE001  (a pack without its ONNX files, no network, a broken ONNX)
            raise LoratuneError(
                f"{self.field_path}.model: cannot load insightface model {ref!r}: {first_line(err)}"
            ) from None
        return (None if opts.recogniser_only else app.det_model), app.models["recognition"]

    def embed_faces(self, images: list[Image.Image]) -> list[np.ndarray | None]:
        import numpy as np
        from insightface.app.common import Face

        bgr = [np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1]) for img in images]
        if self.detector is None:
            return list(self.recogniser.get_feat(bgr)) if bgr else []
        out: list[np.ndarray | None] = []
        for img in bgr:
            boxes, kps = self.detector.detect(img, max_num=0, metric="default")
            if boxes is None or len(boxes) == 0 or kps is None:
                out.append(None)
                continue
            i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            face = Face(bbox=boxes[i, :4], kps=kps[i], det_score=float(boxes[i, 4]))
            out.append(np.asarray(self.recogniser.get(img, face)))
        return out


def _onnx_model(path: str, task: str, providers: list[str], field: str) -> Any:
    """insightface's model for an ONNX file, which must be of the expected kind (its router guesses from the shapes)."""
    from insightface.model_zoo import get_model

    model = get_model(path, providers=providers)
    if model is None or getattr(model, "taskname", None) != task:
        found = "no model insightface knows" if model is None else f"a {model.taskname} model"
        raise LoratuneError(f"{field}: {path} is {found}, not a face {task} ONNX")
    return model
