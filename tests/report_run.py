"""A real run directory for report tests: a real Optuna SQLite study (asked, reported, pruned, told) and trial folders
with real PNG samples, laid out as the search runner writes them. Nothing is mocked; only the training is skipped."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import yaml
from PIL import Image, ImageDraw

from loratune.modelref import write_stand_in_marker

PROMPTS = [("luca", "luca boy on a beach"), ("alberto", "alberto boy jumping")]
SEEDS = [0, 1]
AXES = ("alignment", "consistency", "aesthetics", "quality", "diversity")


def _sample(path: Path, hue: int, seed: int) -> None:
    img = Image.new("RGB", (64, 64), ((hue * 37) % 256, (seed * 90 + 40) % 256, (255 - hue * 23) % 256))
    ImageDraw.Draw(img).ellipse((16 + seed * 4, 16, 48, 48), fill=(250, 220, 180))
    img.save(path)


def _write_epoch(trial_dir: Path, epoch: int, hue: int) -> None:
    _write_folder(trial_dir / "samples" / f"epoch-{epoch:04d}", hue + epoch)


def _write_folder(folder: Path, hue: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, (character, prompt) in enumerate(PROMPTS):
        for seed in SEEDS:
            name = f"p{p:02d}-s{seed}.png"
            _sample(folder / name, hue + p, seed)
            rows.append({"file": name, "prompt": prompt, "seed": seed, "character": character})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _axes(x: float) -> dict[str, float | None]:
    return {"alignment": 0.5 + x / 2, "consistency": 0.6 - x / 4, "aesthetics": 0.4, "quality": None,
            "diversity": 0.3 + x / 5}


def make_run(run_dir: Path, epochs: int = 3, multi_objective: bool = False, stand_in: bool = True) -> Path:
    """Write a run with 6 trials: baseline, 3 search trials (one pruned, one failed), a refinement and an ensemble.

    Single objective: trial 4 (refine) is best at epoch 2, then the ensemble (5), 1, 0, the pruned 2, the failed 3.
    Trials that trained have a ``train_log.jsonl`` (5 steps per epoch, its last line torn as after a kill); the run
    has the base model's own samples in ``samples/base``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    models = run_dir.parent / "models"
    (models / "sd15").mkdir(parents=True, exist_ok=True)
    if stand_in:
        write_stand_in_marker(models / "sd15", "tiny SD1.5 pipeline")
    config = {
        "model": {"base": str(models / "sd15"), "family": "sd15"},
        "evaluation": {"backends": {"alignment": {"name": "clipscore", "model": "ViT-L-14"},
                                    "diversity": {"name": "lpips"}}},
        "search": {"n_trials": 6},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    data = run_dir.parent / "data"
    for i, file in enumerate(["10_luca/003.png", "10_alberto/007.png"]):
        (data / file).parent.mkdir(parents=True, exist_ok=True)
        _sample(data / file, 5 + i, i)
    (run_dir / "audit.json").write_text(json.dumps({  # the shape loratune.audit writes
        "dataset": str(data), "layout": "kohya", "images": 12, "stand_in": False,
        "warnings": ["embeddings (clip_i) are stand-in weights: embedding duplicates not flagged"],
        "summary": {"flagged_images": 2, "caption_problems": 1, "near_duplicate_pairs": 1},
        "per_image": [{"file": f"10_luca/{i:03d}.png", "problems": []} for i in range(12)],
        "flagged": [{"file": "10_luca/003.png", "problems": ["near-duplicate of 10_luca/002.png (phash distance 0)"]},
                    {"file": "10_alberto/007.png", "problems": ["blurry: sharpness 4.0", "missing caption"]}],
        "characters": {"luca": {"images": 6, "flagged": 1, "reference_similarity": 0.97}},
    }))
    storage = f"sqlite:///{run_dir / 'study.db'}"
    if multi_objective:
        study = optuna.create_study(study_name="loratune", storage=storage, directions=["maximize", "maximize"],
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["alignment", "consistency"])
    else:
        study = optuna.create_study(study_name="loratune", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
    plan = ["baseline", "search", "search", "search", "refine", "ensemble"]
    for i, phase in enumerate(plan):
        trial = study.ask()
        lr = trial.suggest_float("learning_rate", 5e-5, 5e-4, log=True)
        rank = trial.suggest_categorical("rank", [8, 16, 32])
        trial_dir = run_dir / "trials" / f"{trial.number:04d}"
        trial_dir.mkdir(parents=True)
        train = {"optimizer": "adamw", "learning_rate": lr, "rank": rank, "alpha": None, "batch_size": 2, "epochs": epochs,
                 "lr_scheduler": "constant", "prodigy": {"d_coef": 1.0}, "seed": 0}
        (trial_dir / "params.json").write_text(json.dumps({  # as loratune.search.trial writes it
            "number": trial.number, "phase": phase, "params": {"learning_rate": lr, "rank": rank}, "train": train}))
        trial.set_user_attr("phase", phase)
        trial.set_user_attr("trial_dir", f"trials/{trial.number:04d}")
        trial.set_user_attr("stand_in", stand_in)
        if phase == "ensemble":  # as the runner does it: one merged LoRA, sampled once, no epochs reported
            _write_folder(trial_dir / "samples" / "ensemble", hue=99)
            trial.set_user_attr("best_epoch", 0)
            trial.set_user_attr("samples", "samples/ensemble")
            trial.set_user_attr("members", [4, 1])
            trial.set_user_attr("axes", _axes(0.5))
            trial.set_user_attr("composite", 0.55)
            trial.set_user_attr("lora", "checkpoints/ensemble.safetensors")
            (trial_dir / "scores.json").write_text(json.dumps({"best_epoch": 0, "composite": 0.55, "axes": _axes(0.5),
                                                               "epochs": [{"epoch": 0, "composite": 0.55}]}))
            study.tell(trial, [0.75, 0.47] if multi_objective else 0.55)
            continue
        x = (i * 0.37) % 1.0
        curve = [0.3 + x * 0.4 + 0.1 * e - 0.06 * e * e / 2 for e in range(1, epochs + 1)]
        failed = i == 3
        pruned = i == 2 and not multi_objective
        last = 1 if pruned else epochs
        steps_per_epoch = 5
        (trial_dir / "train_log.jsonl").write_text("".join(  # the trainer's per-step log; a kill tears the last line
            json.dumps({"epoch": 1 + (s - 1) // steps_per_epoch, "step": s, "total_steps": steps_per_epoch * epochs,
                        "loss": 0.2 + 0.02 * i - 0.01 * s + 0.005 * (s % 3), "lr": lr}) + "\n"
            for s in range(1, steps_per_epoch * last + 1)) + '{"epoch": 1, "st')
        for epoch in range(1, last + 1):
            _write_epoch(trial_dir, epoch, hue=i * 11)
            if not multi_objective:
                if i == 1:  # one trial's epochs carry standard errors, as the runner records them
                    trial.set_user_attr("composite_se", {str(e): 0.01 * e for e in range(1, epoch + 1)})
                trial.report(curve[epoch - 1], epoch)
        if failed:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        best_epoch = max(range(1, last + 1), key=lambda e: curve[e - 1])
        axes = _axes(x)
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("axes", axes)
        trial.set_user_attr("composite", curve[best_epoch - 1])
        trial.set_user_attr("lora", f"checkpoints/epoch-{best_epoch:04d}/lora.safetensors")
        # The runner's summary, and one evaluation's full scores.json per epoch (as loratune.evaluation writes it).
        (trial_dir / "scores.json").write_text(json.dumps({
            "best_epoch": best_epoch, "composite": curve[best_epoch - 1], "axes": axes, "stand_in": stand_in,
            "epochs": [{"epoch": e, "composite": curve[e - 1], "axes": _axes(x + e / 10)} for e in range(1, last + 1)],
        }))
        for epoch in range(1, last + 1):
            (trial_dir / "scores" / f"epoch-{epoch:04d}").mkdir(parents=True)
            (trial_dir / "scores" / f"epoch-{epoch:04d}" / "scores.json").write_text(json.dumps({
                "composite": curve[epoch - 1], "missing_axes": ["quality"],
                "composite_note": "axes not computed: quality; they are reported missing (not 0)",
                "composite_weights_used": {"alignment": 0.353, "consistency": 0.294},
                "axes": {"alignment": {"backend": "clipscore", "model": str(models / "sd15"), "normalised": 0.5,
                                       "stand_in_weights": stand_in}},
                "backends": [{"name": "clipscore", "axis": "alignment", "model": str(models / "sd15"),
                              "stand_in_weights": stand_in, "licence": "MIT"}],
            }))
        study.tell(trial, [axes["alignment"], axes["consistency"]] if multi_objective else curve[best_epoch - 1])
    _write_folder(run_dir / "samples" / "base", hue=200)  # the base model without a LoRA, rendered once per run
    (run_dir / "best").mkdir()
    (run_dir / "best" / "lora.safetensors").write_bytes(b"")
    return run_dir
