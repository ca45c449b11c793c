"""Render the run's fixed sample set (prompts × seeds) with a LoRA, for training checkpoints and for evaluation.

``render_samples`` is the one way a LoRA is drawn: during training with the adapter in memory, and from a file
(either format, diffusers' ``load_lora_weights`` reads both) for an ensemble, an outside trainer's checkpoints or
``loratune evaluate``. Both build the pipeline from the base's loaded parts with the same scheduler and draw under the
training precision (``loratune.train.model.Precision``), so a LoRA's images do not depend on which way it was drawn.
Every image gets its own CPU generator seeded with its seed, so an image depends only on (prompt, seed, LoRA), never on
batching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.atomic import atomic_path, atomic_write_json, atomic_write_text
from loratune.config import Config, Prompt, SamplingSection
from loratune.errors import LoratuneError, first_line
from loratune.manifest import SAMPLES_MANIFEST
from loratune.records import Sample

if TYPE_CHECKING:
    from loratune.train.cache import BaseCache
    from loratune.train.model import Models, Precision

# Where a run keeps the base model's own samples (no LoRA; same prompts and seeds): the report's comparison row.
BASE_SAMPLES = Path("samples") / "base"
NO_LORA = "no-lora"  # ``rank_loras``: the base model's own samples beside the LoRAs' folders

_SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
}


def sample_prompts(config: Config) -> list[Prompt]:
    """The configured prompts, or one per character (its token) when none are configured."""
    if config.sampling.prompts:
        return list(config.sampling.prompts)
    prompts = [Prompt(text=c.token, character=name) for name, c in config.dataset.characters.items()]
    if not prompts:
        raise LoratuneError("sampling.prompts: no prompts and no dataset.characters to sample")
    return prompts


def sampling_scheduler(config: Config) -> Any:
    """The base's own scheduler (with ``train.prediction_type`` when set), then ``sampling.scheduler`` if chosen."""
    import diffusers

    from loratune.singlefile.load import components_folder

    folder = components_folder(config.model.base, config.model.family, config.model.config)
    scheduler_config = diffusers.DDPMScheduler.load_config(folder, subfolder="scheduler")
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    if config.train.prediction_type:
        scheduler.register_to_config(prediction_type=config.train.prediction_type)
    if config.sampling.scheduler != "default":
        scheduler = getattr(diffusers, _SCHEDULERS[config.sampling.scheduler]).from_config(scheduler.config)
    return scheduler


def pipeline_from_models(config: Config, models: Models) -> Any:
    """A text-to-image pipeline over the loaded parts (no second copy of the weights), as the family builds it."""
    return models.family.pipeline(models, sampling_scheduler(config))


def with_seeds(config: Config, seeds: list[int]) -> Config:
    """``config`` drawing ``seeds`` instead of ``sampling.seeds``."""
    return config.model_copy(update={"sampling": config.sampling.model_copy(update={"seeds": list(seeds)})})


def render_samples(
    config: Config, models: Models, precision: Precision, out_dir: str | Path, lora: str | Path | None = None,
    append: bool = False,
) -> list[Sample]:
    """Render the sample set with a LoRA: the adapter already in ``models`` (training), or the file ``lora``.
    ``append``: more seeds for a folder that holds some already (``render``).

    The models are in eval mode while drawing and get their modes back afterwards; a file's adapter is removed again.
    A file's LoRA loads in the base's dtype while a trained one is float32; under mixed precision autocast rounds both
    to the compute dtype alike before any matmul, so the two ways give the same images to the bit.
    """
    pipe = pipeline_from_models(config, models)
    modules = [models.denoiser, *models.text_encoders]
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        if lora is not None:
            apply_lora(pipe, lora, models)
        with precision.autocast():
            return render(pipe, config, out_dir, models, append=append)
    finally:
        if lora is not None:
            pipe.unload_lora_weights()
        for module, training in zip(modules, modes):
            module.train(training)


def render_base_samples(config: Config, models: Models, precision: Precision, out_dir: str | Path) -> list[Sample]:
    """The base model's own samples (no LoRA; same prompts and seeds) for the report's comparison row, rendered
    through ``render_samples`` like every other set. ``models`` must hold no adapter. A folder that already holds a
    complete set is kept: the row is drawn once per run, however many trainings share the folder."""
    from loratune.manifest import read_manifest

    manifest = Path(out_dir) / SAMPLES_MANIFEST
    if manifest.is_file():
        try:
            rows = read_manifest(manifest)
        except LoratuneError:
            rows = {}
        if rows and all((Path(out_dir) / Path(name).name).is_file() for name in rows):
            return []
    return render_samples(config, models, precision, out_dir, lora=None)


def render(
    pipe: Any, config: Config, out_dir: str | Path, models: Models, lora_scale: float | None = None,
    append: bool = False,
) -> list[Sample]:
    """Render every prompt × seed into ``out_dir`` (PNG files + ``samples.jsonl``), returning the records.

    Steps and cfg left unset take the family's defaults for this base (``Family.sampling_defaults``). ``append``:
    ``sampling.seeds`` are more seeds for a folder drawn before (a raced epoch, ``search.gating.race``): the manifest
    keeps its rows and gains the new ones, and a prompt with its own seed (drawn then) is not drawn again.
    """
    import torch

    from loratune.modelref import is_stand_in

    sampling: SamplingSection = config.sampling
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = sampling.lora_scale if lora_scale is None else lora_scale
    default_steps, default_cfg = models.family.sampling_defaults(models)
    samples: list[Sample] = []
    for index, prompt in enumerate(sample_prompts(config)):
        # A prompt's own settings (imported from a kohya prompt file) override the section's.
        if append and prompt.seed is not None:
            continue
        seeds = [prompt.seed] if prompt.seed is not None else sampling.seeds
        width, height = prompt.width or sampling.width, prompt.height or sampling.height
        negative = sampling.negative_prompt if prompt.negative_prompt is None else prompt.negative_prompt
        extra = models.family.call_kwargs(models, lora_scale=scale, width=width, height=height,
                                          negative_prompt=negative)
        cfg = next(c for c in (prompt.cfg, sampling.cfg, default_cfg) if c is not None)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        with torch.no_grad():
            images = pipe(
                prompt=prompt.text,
                num_images_per_prompt=len(seeds),
                generator=generators,
                num_inference_steps=prompt.steps or sampling.steps or default_steps,
                guidance_scale=cfg,
                width=width,
                height=height,
                **extra,
            ).images
        for seed, image in zip(seeds, images):
            target = out_dir / f"p{index:02d}-s{seed}.png"
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
            samples.append(Sample(path=str(target), prompt=prompt.text, seed=seed, character=prompt.character))
    stand_in = is_stand_in(config.model.base)
    rows = [
        {"file": Path(s.path).name, "prompt": s.prompt, "seed": s.seed, "character": s.character}
        | ({"note": "stand-in weights"} if stand_in else {})
        for s in samples
    ]
    earlier = (out_dir / SAMPLES_MANIFEST).read_text() if append and (out_dir / SAMPLES_MANIFEST).is_file() else ""
    atomic_write_text(out_dir / SAMPLES_MANIFEST, earlier + "".join(json.dumps(r) + "\n" for r in rows))
    return samples


@dataclass(frozen=True)
class SkippedLora:
    """A LoRA file left out of a ranking, and why (its one-line error)."""

    path: Path
    reason: str


def find_lora_files(paths: list[str | Path], skipped: list[SkippedLora] | None = None) -> list[Path]:
    """LoRA files from files and folders (a folder's ``*.safetensors`` sorted by epoch, files without one last).

    A file whose header cannot be read raises, unless ``skipped`` is given: then it is recorded there and left out.
    """
    from loratune.lora.kohya import checkpoint_epoch

    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = [p for p in path.rglob("*.safetensors") if not p.name.startswith(".")]
            if not files:
                raise LoratuneError(f"{path}: no .safetensors LoRA files in this folder")
            epochs: dict[Path, int | None] = {}
            for file in files:
                try:
                    epochs[file] = checkpoint_epoch(file)
                except LoratuneError as err:
                    if skipped is None:
                        raise
                    skipped.append(SkippedLora(file, str(err)))
            readable = sorted(epochs, key=lambda p: (epochs[p] is None, epochs[p] or 0, str(p)))  # unnumbered last
            found.extend(readable)
        elif path.is_file():
            try:
                checkpoint_epoch(path)
                found.append(path)
            except LoratuneError as err:
                if skipped is None:
                    raise
                skipped.append(SkippedLora(path, str(err)))
        else:
            raise LoratuneError(f"LoRA file not found: {path}")
    return found


def apply_lora(pipe: Any, path: str | Path, models: Models, name: str = "loratune") -> None:
    """Load a LoRA file of either format onto ``pipe`` (replacing any loaded before), as the family reads it."""
    pipe.unload_lora_weights()
    path = Path(path)
    try:
        models.family.load_lora(pipe, path, name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise LoratuneError(f"{path}: not a LoRA for this base model ({first_line(err)})") from None


def sample_loras(
    config: Config,
    lora_paths: list[str | Path],
    out_dir: str | Path,
    cache: BaseCache | None = None,
    skipped: list[SkippedLora] | None = None,
) -> dict[str, list[Sample]]:
    """Sample each LoRA (files or folders of them) on the base model: ``out_dir/<file stem>/`` per LoRA.

    The base comes from ``cache`` (a search worker's, shared with its training) or is loaded once here. Returns
    {LoRA path: samples}, in the order found (folders sorted by epoch). With ``skipped``, a file that cannot be read
    or does not fit the base model is recorded there and the others are drawn; without it, the first such file stops.
    """
    from loratune.modelref import check_model_ref
    from loratune.train.cache import BaseCache
    from loratune.train.model import training_precision

    files = find_lora_files(lora_paths, skipped)
    if not files:
        return {}
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):  # same names in different folders: keep the outputs apart
        stems = [f"{i:03d}-{f.stem}" for i, f in enumerate(files)]
    check_model_ref(config.model.base, "model.base")
    precision = training_precision(config.train)
    results: dict[str, list[Sample]] = {}
    with (cache or BaseCache()).borrow(config, precision) as base:
        for path, stem in zip(files, stems):
            try:
                results[str(path)] = render_samples(config, base.models, precision, Path(out_dir) / stem, lora=path)
            except LoratuneError as err:
                if skipped is None:
                    raise
                skipped.append(SkippedLora(path, str(err)))
    return results


@dataclass
class RankedLora:
    """One LoRA file's place in a ranking: its scores and where its samples and scores.json went."""

    path: Path
    epoch: int | None
    result: Any  # loratune.evaluation.EvaluationResult
    samples_dir: Path


def _no_lora_left(skipped: list[SkippedLora]) -> None:
    if len(skipped) == 1:
        raise LoratuneError(skipped[0].reason)
    raise LoratuneError(f"no LoRA could be ranked: all {len(skipped)} files were skipped (first: "
                        f"{skipped[0].reason})")


def rank_loras(
    config: Config,
    lora_paths: list[str | Path],
    out_dir: str | Path,
    references: str | Path | None = None,
    show_progress: bool = True,
    skipped: list[SkippedLora] | None = None,
) -> list[RankedLora]:
    """Sample every LoRA (files or folders, either format), score each set, and rank them by composite (best first).

    Each LoRA's samples, ``scores.json`` and ``per_image.csv`` go to ``out_dir/<file stem>/``; the ranking to
    ``out_dir/ranking.json``. LoRAs whose composite is missing rank last. With ``skipped``, unreadable files and
    files that do not fit the base are recorded there (and in ``ranking.json``, with their reason, after the ranked
    ones) instead of stopping the ranking; when no file is left, that is an error.
    """
    from loratune.evaluation import Evaluator, load_references
    from loratune.lora.kohya import checkpoint_epoch
    from loratune.modelref import check_model_ref
    from loratune.train.cache import BaseCache
    from loratune.train.model import training_precision

    evaluator = Evaluator(config, show_progress=show_progress)  # backend and option errors before any rendering
    # Unreadable files are found before anything is drawn or written: with none left, nothing is.
    files = find_lora_files(lora_paths, skipped)
    if not files and skipped:
        _no_lora_left(skipped)
    cache = BaseCache()
    negatives = None
    if config.evaluation.identity.rate and config.evaluation.backends.get("consistency") is not None:
        # The base model's own samples of the same prompts: what the identity threshold is learned against.
        negatives = Path(out_dir) / NO_LORA
        check_model_ref(config.model.base, "model.base")
        precision = training_precision(config.train)
        with cache.borrow(config, precision) as base:
            render_base_samples(config, base.models, precision, negatives)
    evaluator.references = load_references(config, references, negatives_dir=negatives)
    ranked = []
    drawn = sample_loras(config, files, out_dir, cache=cache, skipped=skipped)
    if not drawn and skipped:
        _no_lora_left(skipped)
    for path, samples in drawn.items():
        folder = Path(samples[0].path).parent
        result = evaluator.score(samples)
        result.write(folder)
        ranked.append(RankedLora(Path(path), checkpoint_epoch(path), result, folder))
    ranked.sort(key=lambda r: (r.result.composite is None, -(r.result.composite or 0.0)))
    atomic_write_json(
        Path(out_dir) / "ranking.json",
        [
            {
                "rank": i + 1,
                "lora": str(r.path),
                "epoch": r.epoch,
                "composite": r.result.composite,
                "normalised": r.result.normalised,
                "samples": str(r.samples_dir),
            }
            for i, r in enumerate(ranked)
        ]
        + [{"rank": None, "lora": str(s.path), "skipped": s.reason} for s in skipped or []],
    )
    return ranked
