"""``dlib_face``: character consistency from dlib's HOG face detector, 5-point alignment and ResNet 128-d face
embedding. ``face_recognition_models`` ships those files, so it is a real face embedding that works offline; the
scoring (reference centroid, fallback for faceless references) is ``face_identity``'s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.cache import cached_model
from loratune.metrics.face_identity import FaceIdentity, FaceOptions

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class DlibFaceIdentity(FaceIdentity):
    """dlib's HOG face detector + 5-point alignment + ResNet 128-d embedding (files from face_recognition_models)."""

    class Options(FaceOptions):
        upsample: int = Field(1, ge=0, le=3, description="dlib detector upsampling: finds smaller faces, slower")
        jitter: int = Field(0, ge=0, le=100, description="dlib num_jitters: average over re-sampled crops")

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.model is not None:
            raise LoratuneError(
                f"{self.field_path}.model: dlib_face always uses the embedder shipped in face_recognition_models "
                f"(got {self.config.model!r}); remove `model`"
            )

    def load(self) -> None:
        self.detector, self.shape_predictor, self.embedder = load_dlib()
        self.model_id = "dlib_face_recognition_resnet_model_v1 (face_recognition_models)"

    def embed_faces(self, images: list[Image.Image]) -> list[np.ndarray | None]:
        import numpy as np

        out: list[np.ndarray | None] = []
        for img in images:
            rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
            rects = self.detector(rgb, self.options.upsample)
            if len(rects) == 0:
                out.append(None)
                continue
            rect = max(rects, key=lambda r: r.area())
            shape = self.shape_predictor(rgb, rect)
            out.append(np.asarray(self.embedder.compute_face_descriptor(rgb, shape, self.options.jitter)))
        return out


def load_dlib() -> tuple[Any, Any, Any]:
    """dlib's (HOG face detector, 5-point shape predictor, ResNet face embedder), loaded once per process."""
    return cached_model(("dlib_face",), _load_dlib)


def _load_dlib() -> tuple[Any, Any, Any]:
    import warnings

    import dlib

    with warnings.catch_warnings():  # face_recognition_models imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import face_recognition_models as frm

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )
