"""One CLIP image embedding per image for every backend of an evaluation that uses the same CLIP model."""

from __future__ import annotations

from pathlib import Path

from loratune.config import load_config
from loratune.evaluation import Evaluator, load_references
from loratune.metrics.registry import AXES
from loratune.records import Sample


def _samples(tiny_models, count: int) -> list[Sample]:
    paths = sorted(Path(tiny_models.dataset).rglob("*.png"))[:count]
    return [Sample(p, p.with_suffix(".txt").read_text().strip(), i, p.parent.name.split("_", 1)[1])
            for i, p in enumerate(paths)]  # fmt: skip


def _score(tiny_models, samples: list[Sample], share: bool):
    """Consistency (CLIP-I) and aesthetics (LAION MLP) on the tiny open_clip model; rows through its visual tower."""
    keep = {"consistency", "aesthetics"}
    config = load_config(tiny_models.config, [f"evaluation.backends.{a}=null" for a in AXES if a not in keep])
    evaluator = Evaluator(config, references=load_references(config), show_progress=False, share_embeddings=share)
    evaluator.load()  # reference embeddings are made here, before counting
    encoder = evaluator.backends["consistency"].encoder
    assert evaluator.backends["aesthetics"].encoder is encoder  # one loaded CLIP for both axes
    rows: list[int] = []
    hook = encoder.model.visual.register_forward_hook(lambda _m, args, _o: rows.append(len(args[0])))
    try:
        return evaluator.score(samples), sum(rows)
    finally:
        hook.remove()


def _copy_embedder(tiny_models) -> str:
    return load_config(tiny_models.config).evaluation.learning.copy_embedder.name


def test_consistency_and_aesthetics_share_one_clip_embedding_per_image(tiny_models) -> None:
    samples = _samples(tiny_models, 10)  # batch size 8: a full batch and a partial one
    shared, shared_rows = _score(tiny_models, samples, share=True)
    apart, apart_rows = _score(tiny_models, samples, share=False)
    # Three users of the one CLIP: consistency, aesthetics, and copy risk (the tiny config's copy embedder is that
    # CLIP too); shared, each sample goes through its visual tower once.
    assert _copy_embedder(tiny_models) == "clip_i"
    assert apart_rows == 3 * len(samples)
    assert shared_rows == len(samples)
    for axis in ("consistency", "aesthetics"):  # the same batches through the same model: the same numbers exactly
        assert shared.axes[axis].per_image == apart.axes[axis].per_image
        assert shared.axes[axis].value == apart.axes[axis].value
    assert shared.composite == apart.composite
