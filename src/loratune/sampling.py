"""Render the run's fixed sample set (prompts × seeds) with a LoRA, for training checkpoints and for evaluation.

The base pipeline is loaded once (``load_pipeline``); each LoRA file — diffusers/peft or kohya format, diffusers'
``load_lora_weights`` reads both — is applied, rendered and unloaded again (``sample_loras``). Every image gets its
own CPU generator seeded with its seed, so an image depends only on (prompt, seed, LoRA), never on batching or device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.atomic import atomic_path, atomic_write_json, atomic_write_text
from loratune.config import Config, Prompt, SamplingSection
from loratune.errors import LoratuneError, first_line
from loratune.manifest import SAMPLES_MANIFEST
from loratune.records import Sample

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


def set_scheduler(pipe: Any, name: str) -> None:
    if name == "default":
        return
    import diffusers

    pipe.scheduler = getattr(diffusers, _SCHEDULERS[name]).from_config(pipe.scheduler.config)


def load_pipeline(config: Config, device: Any | None = None) -> Any:
    """The base text-to-image pipeline of ``config.model`` (hub id or folder), on ``device`` in the model dtype."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loratune.device import pick_device, torch_dtype
    from loratune.modelref import check_model_ref

    base = check_model_ref(config.model.base, "model.base")
    device = device or pick_device(config.evaluation.device)  # sampling feeds evaluation: same device
    cls = StableDiffusionXLPipeline if config.model.family == "sdxl" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"dtype": torch_dtype(config.model.dtype, device)}
    if config.model.variant:
        kwargs["variant"] = config.model.variant
    if config.model.family == "sd15":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as err:
        raise LoratuneError(f"model.base: cannot load {base}: {first_line(err)}") from None
    set_scheduler(pipe, config.sampling.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def render(pipe: Any, config: Config, out_dir: str | Path, lora_scale: float | None = None) -> list[Sample]:
    """Render every prompt × seed into ``out_dir`` (PNG files + ``samples.jsonl``), returning the records."""
    import torch

    from loratune.modelref import is_stand_in

    sampling: SamplingSection = config.sampling
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = sampling.lora_scale if lora_scale is None else lora_scale
    extra: dict[str, Any] = {"cross_attention_kwargs": {"scale": scale}}
    if config.model.family == "sdxl":
        extra["original_size"] = extra["target_size"] = (sampling.height, sampling.width)
    samples: list[Sample] = []
    for index, prompt in enumerate(sample_prompts(config)):
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in sampling.seeds]
        with torch.no_grad():
            images = pipe(
                prompt=prompt.text,
                negative_prompt=sampling.negative_prompt or None,
                num_images_per_prompt=len(sampling.seeds),
                generator=generators,
                num_inference_steps=sampling.steps,
                guidance_scale=sampling.cfg,
                width=sampling.width,
                height=sampling.height,
                **extra,
            ).images
        for seed, image in zip(sampling.seeds, images):
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
    atomic_write_text(out_dir / SAMPLES_MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    return samples


def find_lora_files(paths: list[str | Path]) -> list[Path]:
    """LoRA files from files and folders (a folder's ``*.safetensors`` sorted by epoch, files without one last)."""
    from loratune.lora.kohya import checkpoint_epoch

    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = [p for p in path.rglob("*.safetensors") if not p.name.startswith(".")]
            if not files:
                raise LoratuneError(f"{path}: no .safetensors LoRA files in this folder")
            epochs = {p: checkpoint_epoch(p) for p in files}
            files.sort(key=lambda p: (epochs[p] is None, epochs[p] or 0, str(p)))  # unnumbered files last
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise LoratuneError(f"LoRA file not found: {path}")
    return found


def apply_lora(pipe: Any, path: str | Path, name: str = "loratune") -> None:
    """Load a LoRA file of either format onto ``pipe`` (replacing any loaded before)."""
    pipe.unload_lora_weights()
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise LoratuneError(f"{path}: not a LoRA for this base model ({first_line(err)})") from None


def sample_loras(config: Config, lora_paths: list[str | Path], out_dir: str | Path) -> dict[str, list[Sample]]:
    """Sample each LoRA (files or folders of them) on the base model: ``out_dir/<file stem>/`` per LoRA.

    Returns {LoRA path: samples}, in the order found (folders sorted by epoch).
    """
    files = find_lora_files(lora_paths)
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):  # same names in different folders: keep the outputs apart
        stems = [f"{i:03d}-{f.stem}" for i, f in enumerate(files)]
    pipe = load_pipeline(config)
    results: dict[str, list[Sample]] = {}
    for path, stem in zip(files, stems):
        apply_lora(pipe, path)
        results[str(path)] = render(pipe, config, Path(out_dir) / stem)
    pipe.unload_lora_weights()
    return results


@dataclass
class RankedLora:
    """One LoRA file's place in a ranking: its scores and where its samples and scores.json went."""

    path: Path
    epoch: int | None
    result: Any  # loratune.evaluation.EvaluationResult
    samples_dir: Path


def rank_loras(
    config: Config,
    lora_paths: list[str | Path],
    out_dir: str | Path,
    references: str | Path | None = None,
    show_progress: bool = True,
) -> list[RankedLora]:
    """Sample every LoRA (files or folders, either format), score each set, and rank them by composite (best first).

    Each LoRA's samples, ``scores.json`` and ``per_image.csv`` go to ``out_dir/<file stem>/``; the ranking to
    ``out_dir/ranking.json``. LoRAs whose composite is missing rank last.
    """
    from loratune.evaluation import Evaluator, load_references
    from loratune.lora.kohya import checkpoint_epoch

    evaluator = Evaluator(config, show_progress=show_progress)  # backend and option errors before any rendering
    evaluator.references = load_references(config, references)
    ranked = []
    for path, samples in sample_loras(config, lora_paths, out_dir).items():
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
        ],
    )
    return ranked
