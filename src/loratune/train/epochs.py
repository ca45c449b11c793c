"""An epoch's plan: bucketed, shuffled batches with processed captions and drawn flips, all from the seed, so a
resumed run replays the same batches; and the run's optimizer steps, counted from those plans for the schedule."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loratune.config import Config
from loratune.train.data import Item, assign_bucket, bucket_sizes, plan_epoch, process_caption
from loratune.train.strategies import CurriculumResolution


@dataclass
class Batch:
    indices: list[int]
    bucket: tuple[int, int]
    captions: list[str]
    flips: list[bool]


def epoch_batches(config: Config, items: list[Item], epoch: int, resolution: int) -> list[Batch]:
    """The epoch's batches: bucketed at ``resolution``, shuffled, captions processed, flips drawn — all by seed."""
    ds, t = config.dataset, config.train
    sizes = (
        bucket_sizes(resolution, ds.bucket_step, ds.min_bucket, ds.max_bucket)
        if ds.buckets
        else [(resolution, resolution)]
    )
    buckets = [assign_bucket(it.width, it.height, sizes) for it in items]
    rng = random.Random(t.seed * 1_000_003 + epoch)
    batches = []
    for indices in plan_epoch([(it.repeats, b) for it, b in zip(items, buckets)], t.batch_size, rng.randrange(2**32)):
        captions = [
            process_caption(items[i].caption, t.shuffle_captions, t.keep_tokens, t.caption_separator, rng)
            for i in indices
        ]
        flips = [t.flip and rng.random() < 0.5 for _ in indices]
        batches.append(Batch(indices, buckets[indices[0]], captions, flips))
    return batches


def count_steps(config: Config, items: list[Item], curriculum: CurriculumResolution) -> int:
    """Optimizer steps of the whole run (for the learning-rate schedule)."""
    t = config.train
    total = sum(
        math.ceil(len(epoch_batches(config, items, e, curriculum.resolution_at(e))) / t.gradient_accumulation)
        for e in range(1, t.epochs + 1)
    )
    return min(total, t.max_steps) if t.max_steps else total
