"""Identity as a rate: the threshold and AUC against scikit-learn, and each identity backend's rate against the
definition written out with independently loaded models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from test_face import _astronaut_face, _noise
from test_metrics_identity import make, picture, run

from loratune.config import BackendConfig
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.identity_rate import auc, fit_threshold, leave_one_out_mean, shuffled_tiles, structure_probes
from loratune.metrics.registry import create_backend


@pytest.mark.parametrize("seed", range(6))
def test_threshold_has_the_best_youden_j_and_auc_is_sklearns(seed) -> None:
    rng = np.random.default_rng(seed)
    positives = list(rng.normal(0.7, 0.1, 5 + seed).round(3))
    negatives = list(rng.normal(0.5, 0.1, 12).round(3))
    fitted = fit_threshold(positives, negatives)
    labels = [1] * len(positives) + [0] * len(negatives)
    scores = positives + negatives
    assert fitted.auc == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fitted.true_positive_rate - fitted.false_positive_rate == pytest.approx(max(tpr - fpr))
    # The threshold is what it claims: the share of each set at or above it.
    assert fitted.true_positive_rate == np.mean(np.array(positives) >= fitted.threshold)
    assert fitted.false_positive_rate == np.mean(np.array(negatives) >= fitted.threshold)


def test_separable_sets_put_the_threshold_in_the_gap_and_too_few_fit_nothing() -> None:
    fitted = fit_threshold([0.9, 0.8], [0.3, 0.4, 0.5])
    assert fitted.threshold == pytest.approx(0.65) and fitted.auc == 1.0
    assert fit_threshold([0.9], [0.1, 0.2]) is None and fit_threshold([0.9, 0.8], [0.1]) is None
    sims = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    assert leave_one_out_mean(sims) == pytest.approx([0.35, 0.45, 0.3])


def test_shuffled_tiles_keep_every_tile_and_lose_the_layout() -> None:
    image = picture(5, size=(64, 48))
    shuffled = shuffled_tiles(image, seed=3)
    a, b = np.asarray(image), np.asarray(shuffled)
    tiles = lambda x: sorted(x[i * 6:(i + 1) * 6, j * 8:(j + 1) * 8].tobytes() for i in range(8) for j in range(8))
    assert tiles(a) == tiles(b) and not np.array_equal(a, b)  # the same 64 tiles, another order
    assert np.array_equal(np.asarray(shuffled_tiles(image, seed=3)), b)  # by seed: the same every time
    assert len(structure_probes([image, image])) == 4


def _luca_world():
    """Three references of "luca", four base-model samples of its prompt, one reference of "alberto"."""
    refs = References(images={"luca": [picture(200), picture(201), picture(202)], "alberto": [picture(203)]},
                      negatives={"luca": [picture(300 + i) for i in range(4)]})
    images = [EvalImage(Path(f"{i}.png"), picture(i), prompt="p", character="luca") for i in range(6)]
    return refs, images


def test_clip_i_rate_is_the_share_above_the_threshold_learned_from_references_and_base_samples(tiny_models) -> None:
    import open_clip

    refs, images = _luca_world()
    backend = make("clip_i", str(tiny_models.open_clip))
    result = run(backend, images, refs)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.open_clip}")
    model.eval()

    def embed(imgs):
        with torch.no_grad():
            return F.normalize(model.encode_image(torch.stack([preprocess(i) for i in imgs])).float(), dim=-1)

    r = embed(refs.images["luca"])
    positives = [float((r[i] @ r.T).sum() - 1.0) / 2 for i in range(3)]  # each reference against the other two
    # Negatives: the base samples of luca's prompt and the other character's reference, against luca's references.
    negatives = [float((n @ r.T).mean()) for n in embed(refs.negatives["luca"] + refs.images["alberto"])]
    # ... and luca's references cut into shuffled tiles: the palette without the character.
    probes = [float((n @ r.T).mean()) for n in embed(structure_probes(refs.images["luca"]))]
    expected = fit_threshold(positives, negatives, probes)
    fitted = backend.threshold_for("luca")
    assert fitted.threshold == pytest.approx(expected.threshold, abs=1e-5)
    assert (fitted.negatives, fitted.probes) == (5, 6)
    assert fitted.auc == pytest.approx(auc(positives, negatives), abs=1e-6)
    assert fitted.structure_auc == pytest.approx(auc(positives, probes), abs=1e-6)
    sims = [float((g @ r.T).mean()) for g in embed([img.image for img in images])]
    passes = [float(s >= expected.threshold) for s in sims]
    assert result.per_image == passes and result.value == pytest.approx(sum(passes) / 6)
    assert result.details["per_image_similarity"] == pytest.approx(sims, abs=1e-5)
    assert result.details["to_references"] == pytest.approx(sum(sims) / 6, abs=1e-5)  # the mean stays reported
    norm = backend.producer().normalisation()
    assert (norm.kind, norm.lo, norm.hi) == ("share", 0.0, 1.0)

    plain = run(make("clip_i", str(tiny_models.open_clip)), images, References(images=refs.images))
    assert plain.per_image == pytest.approx(sims, abs=1e-5)  # without negatives: the mean similarity, as before


def test_face_rate_uses_the_centroid_of_the_other_reference_faces(tiny_models) -> None:
    import cv2
    import onnxruntime

    faces = [_astronaut_face(), _noise(1), _noise(2)]
    refs = References(images={None: faces}, negatives={None: [_noise(10 + i) for i in range(3)]})
    images = [EvalImage(Path(f"{i}.png"), img) for i, img in enumerate([_noise(20), _astronaut_face(), _noise(21)])]
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)
    backend = create_backend(BackendConfig(name="insightface", model=str(tiny_models.arcface), recogniser_only=True,
                                           fallback=None), runtime, "consistency")
    backend.load()
    backend.setup(refs)
    backend.update(images)
    result = backend.compute()

    session = onnxruntime.InferenceSession(str(tiny_models.arcface), providers=["CPUExecutionProvider"])

    def embed(img) -> np.ndarray:
        x = cv2.resize(np.asarray(img), (112, 112)).astype(np.float32)
        e = session.run(None, {session.get_inputs()[0].name: ((x - 127.5) / 127.5).transpose(2, 0, 1)[None]})[0][0]
        return e / np.linalg.norm(e)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    f = [embed(x) for x in faces]
    centroid = unit(sum(f))
    positives = [float(f[i] @ unit(sum(f) - f[i])) for i in range(3)]
    negatives = [float(embed(x) @ centroid) for x in refs.negatives[None]]
    probes = [float(embed(x) @ centroid) for x in structure_probes(faces)]  # recogniser_only: every image is a face
    expected = fit_threshold(positives, negatives, probes)
    assert backend.threshold_for(None).threshold == pytest.approx(expected.threshold, abs=1e-4)
    sims = [float(embed(img.image) @ centroid) for img in images]
    assert result.per_image == [float(s >= expected.threshold) for s in sims]
    assert backend.normalisation().kind == "share"


def test_the_console_line_holds_without_a_structure_auc() -> None:
    """A face backend whose shuffled references hold no face has no structure AUC; the console says so (it used to
    raise formatting None)."""
    from loratune.scorer_checks import identity_lines

    faces = fit_threshold([0.9, 0.8], [0.3, 0.4]).to_json()
    clip = fit_threshold([0.9, 0.8], [0.3, 0.4], [0.85, 0.2]).to_json()
    lines = identity_lines({"backend": "insightface", "stand_in": False, "warnings": ["w"],
                            "characters": {"luca": faces, "": clip}})
    head = "above similarity 0.600; AUC 1.00 against the base model's samples"
    assert lines == [
        f"identity (insightface): luca {head}, no shuffled reference was scored (none held a face)",
        f"identity (insightface): character {head}, 0.75 against shuffled references",
        "w",
    ]
