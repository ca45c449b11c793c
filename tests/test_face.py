"""Face identity: InsightFace on the factory's ONNX files (by path, as a pack), dlib on real faces, the fallback."""

from __future__ import annotations

from pathlib import Path

import insightface
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.registry import create_backend

RUNTIME = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)
HANKS = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"


def _backend(name: str, **options):
    backend = create_backend(BackendConfig(name=name, **options), RUNTIME, "consistency")
    backend.load()
    return backend


def _astronaut_face() -> Image.Image:
    return Image.fromarray(data.astronaut()[0:260, 120:340])  # Eileen Collins' face, without the mission patch


def _noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8))


def test_insightface_loads_factory_onnx_by_path(tiny_models) -> None:
    import cv2
    import onnxruntime

    images = [_noise(0), _noise(1), _astronaut_face()]
    backend = _backend("insightface", model=str(tiny_models.arcface), recogniser_only=True, fallback=None)
    backend.setup(References(images={None: [images[2]]}))
    backend.update([EvalImage(Path(f"{i}.png"), img) for i, img in enumerate(images[:2])])
    result = backend.compute()

    # Independent: onnxruntime on the same file, insightface's ArcFace preprocessing ((x - 127.5) / 127.5, RGB, 112 px).
    session = onnxruntime.InferenceSession(str(tiny_models.arcface), providers=["CPUExecutionProvider"])

    def embed(img: Image.Image) -> np.ndarray:
        x = cv2.resize(np.asarray(img), (112, 112)).astype(np.float32)
        x = ((x - 127.5) / 127.5).transpose(2, 0, 1)[None]
        e = session.run(None, {session.get_inputs()[0].name: x})[0][0]
        return e / np.linalg.norm(e)

    ref = embed(images[2])
    expected = [float(embed(img) @ ref) for img in images[:2]]
    assert result.per_image == pytest.approx(expected, abs=1e-4)
    assert result.stand_in and result.details["face_detection_rate"] == 1.0
    assert result.details["across_generations"] == pytest.approx(float(embed(images[0]) @ embed(images[1])), abs=1e-4)

    with pytest.raises(LoratuneError, match="detector"):
        create_backend(BackendConfig(name="insightface", model=str(tiny_models.arcface)), RUNTIME, "consistency")


def test_dlib_puts_a_face_closer_to_its_mirror_than_to_another_face() -> None:
    face = _astronaut_face()
    mirror = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other = Image.open(HANKS).convert("RGB")
    backend = _backend("dlib_face", fallback=None)
    a, m, o = (
        torch.nn.functional.normalize(torch.as_tensor(e), dim=0) for e in backend.embed_faces([face, mirror, other])
    )
    assert float(a @ m) > float(a @ o)

    backend.setup(References(images={"eileen": [face]}))
    items = [
        EvalImage(Path("mirror.png"), mirror, character="eileen"),
        EvalImage(Path("hanks.png"), other, character="eileen"),
        EvalImage(Path("noise.png"), _noise(2), character="eileen"),
    ]
    backend.update(items)
    result = backend.compute()
    assert not result.stand_in
    assert result.per_image[0] > result.per_image[1] and result.per_image[2] is None  # no face: left out, not 0
    assert result.details["face_detection_rate"] == pytest.approx(2 / 3)
    assert result.details["images_without_face"] == ["noise.png"]
    assert result.value == pytest.approx((result.per_image[0] + result.per_image[1]) / 2)


def test_too_few_faces_fall_back_to_image_embeddings(tiny_models) -> None:
    fallback = {"name": "clip_i", "model": str(tiny_models.open_clip)}
    backend = _backend("dlib_face", fallback=fallback, min_detection_rate=0.5)
    refs = References(images={None: [_noise(5)]})
    items = [EvalImage(Path(f"{i}.png"), _noise(i)) for i in range(3)]
    backend.setup(refs)
    backend.update(items)
    result = backend.compute()

    direct = _backend("clip_i", model=str(tiny_models.open_clip))
    direct.setup(refs)
    direct.update(items)
    expected = direct.compute()
    assert result.backend == "clip_i" and result.value == pytest.approx(expected.value)
    assert result.details["fallback_from"] == "dlib_face"
    assert result.details["identity_backend"]["reference_face_detection_rate"] == {"": 0.0}
    assert backend.producer() is backend.fallback and backend.describe()["identity_backend"]["backend"] == "clip_i"

    with pytest.raises(LoratuneError, match="fallback"):
        create_backend(BackendConfig(name="dlib_face", fallback={"model": "x"}), RUNTIME, "consistency")
    # A bad fallback names its own fields, not the face backend's.
    missing = BackendConfig(name="dlib_face", fallback={"name": "clip_i", "model": "./no/such/clip"})
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.fallback\.model: model path not"):
        create_backend(missing, RUNTIME, "consistency")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.fallback: backend 'piqe' scores"):
        create_backend(BackendConfig(name="dlib_face", fallback={"name": "piqe"}), RUNTIME, "consistency")


def test_insightface_pack_folder_and_detector_by_path_agree(tiny_models) -> None:
    refs_dir = tiny_models.references / "lucaboy"
    refs = References(images={"lucaboy": [Image.open(p).convert("RGB") for p in sorted(refs_dir.glob("*.png"))]})
    train = sorted((tiny_models.dataset / "10_lucaboy").glob("*.png"))[:3]
    items = [EvalImage(p, Image.open(p).convert("RGB"), character="lucaboy") for p in train]
    items.append(EvalImage(Path("noise.png"), _noise(3), character="lucaboy"))

    results = []
    for options in (
        {"model": str(tiny_models.arcface.parent)},  # the folder is a FaceAnalysis pack
        {"model": str(tiny_models.arcface), "detector": str(tiny_models.face_detector)},
    ):
        backend = _backend("insightface", fallback=None, min_detection_rate=0.0, **options)
        backend.setup(refs)
        backend.update(items)
        results.append(backend.compute())
    pack, by_path = results
    assert pack.per_image == pytest.approx(by_path.per_image)
    assert pack.per_image[3] is None and "noise.png" in pack.details["images_without_face"]
    assert pack.details["reference_faces"]["lucaboy"]["with_face"] >= 1
    assert 0 < pack.details["face_detection_rate"] < 1 and pack.stand_in


def test_unloadable_fallback_keeps_the_face_result() -> None:
    backend = _backend("dlib_face", fallback={"name": "dino", "model": "facebook/dinov2-base"}, min_detection_rate=0.9)
    backend.setup(References(images={None: [_astronaut_face(), _noise(4)]}))  # no hub here: the fallback cannot load
    assert backend.producer() is backend
    backend.update([EvalImage(Path("a.png"), _astronaut_face()), EvalImage(Path("n.png"), _noise(4))])
    result = backend.compute()
    assert result.backend == "dlib_face" and result.value == pytest.approx(1.0, abs=1e-6)
    assert "fallback_error" in result.details["identity_backend"] and result.details["face_detection_rate"] == 0.5


def _tiny_insightface(tiny_models, **options):
    fallback = {"name": "clip_i", "model": str(tiny_models.open_clip)}
    return _backend("insightface", model=str(tiny_models.arcface), detector=str(tiny_models.face_detector),
                    fallback=fallback, **options)


def _faces(tiny_models, n: int) -> list[EvalImage]:
    """Images in which the tiny detector finds faces (the tiny references: all of them have one)."""
    paths = sorted((tiny_models.references / "lucaboy").glob("*.png"))
    return [EvalImage(p, Image.open(p).convert("RGB"), character="lucaboy") for p in paths[:n]]


def test_references_without_faces_choose_the_fallback_once(tiny_models) -> None:
    backend = _tiny_insightface(tiny_models)
    refs = References(images={"lucaboy": [_noise(10), _noise(11)]})
    backend.setup(refs)
    decision = backend.describe()["identity_backend"]
    assert decision["backend"] == "clip_i" and decision["reference_face_detection_rate"] == {"lucaboy": 0.0}
    assert "'lucaboy'" in decision["reason"]

    direct = _backend("clip_i", model=str(tiny_models.open_clip))
    direct.setup(refs)
    faces = _faces(tiny_models, 3)
    assert all(e is not None for e in backend.embed_faces([item.image for item in faces]))
    for images in (faces, [EvalImage(Path("n.png"), _noise(12), character="lucaboy"), *faces[:1]]):
        backend.reset()
        backend.update(images)
        result = backend.compute()  # every generated image has a face, then some: still CLIP-I, on CLIP-I's scale
        direct.reset()
        direct.update(images)
        assert result.backend == "clip_i" and result.per_image == pytest.approx(direct.compute().per_image)
        assert result.details["fallback_from"] == "insightface"
    assert backend.producer().normalisation().backend == "clip_i"


def test_references_with_faces_keep_the_face_backend(tiny_models) -> None:
    backend = _tiny_insightface(tiny_models)
    refs_dir = tiny_models.references / "lucaboy"
    backend.setup(References(images={"lucaboy": [Image.open(p).convert("RGB") for p in sorted(refs_dir.glob("*.png"))]}))
    backend.update([EvalImage(Path(f"{i}.png"), _noise(i), character="lucaboy") for i in range(3)])
    result = backend.compute()  # no face in any generated image: missing, never the fallback's number
    assert result.backend == "insightface" and result.value is None and result.details["face_detection_rate"] == 0.0
    assert backend.producer() is backend and result.details["identity_backend"]["backend"] == "insightface"


def test_images_without_a_character_compare_to_all_references() -> None:
    face = _astronaut_face()
    backend = _backend("dlib_face", fallback=None)
    backend.setup(References(images={"eileen": [face], "tom": [Image.open(HANKS).convert("RGB")]}))
    backend.update([EvalImage(Path("a.png"), face.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    result = backend.compute()
    a, m, o = (
        torch.nn.functional.normalize(torch.as_tensor(e, dtype=torch.float32), dim=0)
        for e in backend.embed_faces(
            [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.open(HANKS).convert("RGB")]
        )
    )
    centroid = torch.nn.functional.normalize((a + o) / 2, dim=0)  # as References.for_character(None): everyone's
    assert result.value == pytest.approx(float(m @ centroid), abs=1e-5)


def test_unusable_insightface_files_are_one_line_errors(tiny_models, tmp_path: Path) -> None:
    # A pack folder without its ONNX files: insightface fails an assert with no message (once an IndexError here).
    empty_pack = tmp_path / "pack"
    empty_pack.mkdir()
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.model: cannot load insightface"):
        _backend("insightface", model=str(empty_pack), fallback=None)
    # The recogniser where the detector belongs: insightface's router would hand back a recogniser.
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.detector: .* not a face detection"):
        _backend("insightface", model=str(tiny_models.arcface), detector=str(tiny_models.arcface), fallback=None)


def test_face_paths_in_a_config_resolve_next_to_it(tiny_models, tmp_path: Path) -> None:
    import shutil

    import yaml

    from loratune.config import load_config

    folder = tmp_path / "project"
    shutil.copytree(tiny_models.arcface.parent, folder / "faces")
    shutil.copytree(tiny_models.open_clip, folder / "clip")
    consistency = {
        "name": "insightface",
        "model": "faces/arcface.onnx",
        "detector": f"faces/{tiny_models.face_detector.name}",
        "fallback": {"name": "clip_i", "model": "clip"},
    }
    (folder / "loratune.yaml").write_text(yaml.safe_dump({"evaluation": {"backends": {"consistency": consistency}}}))
    backend = load_config(folder / "loratune.yaml").evaluation.backends["consistency"]
    assert backend.model == str(folder / "faces" / "arcface.onnx")
    assert backend.options()["detector"] == str(folder / "faces" / tiny_models.face_detector.name)
    assert backend.options()["fallback"]["model"] == str(folder / "clip")
    built = create_backend(backend, RUNTIME, "consistency")  # from another working folder: the files are found
    assert built.fallback is not None and built.fallback.model_id == str(folder / "clip")
