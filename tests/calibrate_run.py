"""A run directory for calibration tests: a real Optuna study and trial folders as the search writes them, with
checkpoints whose five axes are drawn at random (so a taste over the axes can be recovered), real PNG samples and a
small LoRA file per epoch. Only the training is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import yaml
from report_run import _write_folder

from loratune.config import SEED_WEIGHTS
from loratune.metrics.composite import composite

AXES = ("alignment", "consistency", "aesthetics", "quality", "diversity")


def make_calibration_run(run_dir: Path, trials: int = 12, epochs: int = 3, seed: int = 0) -> Path:
    """``trials`` complete trials x ``epochs`` epochs, axes uniform in [0.1, 0.9] (trial 0 epoch 1 lacks quality)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"search": {"n_trials": trials}}))
    study = optuna.create_study(study_name="loratune", storage=f"sqlite:///{run_dir / 'study.db'}",
                                direction="maximize")
    for _ in range(trials):
        trial = study.ask()
        trial.suggest_float("learning_rate", 5e-5, 5e-4, log=True)
        folder = run_dir / "trials" / f"{trial.number:04d}"
        rows = []
        for epoch in range(1, epochs + 1):
            axes = {a: round(float(rng.uniform(0.1, 0.9)), 4) for a in AXES}
            if trial.number == 0 and epoch == 1:
                axes["quality"] = None
            rows.append({"epoch": epoch, "composite": composite(axes, SEED_WEIGHTS).value, "axes": axes})
            _write_folder(folder / "samples" / f"epoch-{epoch:04d}", hue=trial.number * 7 + epoch * 3)
            lora = folder / "checkpoints" / f"epoch-{epoch:04d}" / "lora.safetensors"
            lora.parent.mkdir(parents=True)
            lora.write_bytes(f"{trial.number}/{epoch}".encode())
            trial.report(rows[-1]["composite"], epoch)
        best = max(rows, key=lambda r: r["composite"])
        attrs = {"phase": "search", "trial_dir": f"trials/{trial.number:04d}", "best_epoch": best["epoch"],
                 "composite": best["composite"], "axes": best["axes"],
                 "lora": f"checkpoints/epoch-{best['epoch']:04d}/lora.safetensors",
                 "samples": f"samples/epoch-{best['epoch']:04d}"}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        (folder / "scores.json").write_text(json.dumps({**attrs, "state": "complete", "epochs": rows}))
        (folder / "params.json").write_text(json.dumps({"number": trial.number, "phase": "search",
                                                        "params": trial.params}))
        study.tell(trial, best["composite"])
    return run_dir


TASTE = {"consistency": 0.7, "alignment": 0.3}  # the simulated user's hidden weights


def taste_answer(left: dict[str, float | None], right: dict[str, float | None],
                 taste: dict[str, float] = TASTE) -> str:
    """What a user with hidden weights ``taste`` answers: the checkpoint with the higher composite under them."""
    a, b = composite(left, taste).value, composite(right, taste).value
    return "tie" if a == b else "left" if a > b else "right"


def cosine(weights: dict[str, float], taste: dict[str, float] = TASTE) -> float:
    u = np.array([weights.get(a, 0.0) for a in AXES])
    v = np.array([taste.get(a, 0.0) for a in AXES])
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
