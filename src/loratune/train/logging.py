"""Per-step training curves for the viewers kohya, OneTrainer and diffusers users already run: TensorBoard event files
in the run's ``logs/`` folder (``tensorboard --logdir OUT/logs``), and Weights & Biases when it is installed and
``train.log_with`` names it. ``train_log.jsonl`` stays the record loratune itself reads (report, demo, resume).

>>> with contextlib.closing(StepLogger(config, out_dir)) as log:  # doctest: +SKIP
...     log.start(first_step=0)
...     log.step({"step": 1, "loss": 0.12, "lr": 1e-4, "epoch": 1})
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.errors import LoratuneError

LOG_DIR = "logs"
# kohya's tag names (train_network.py ``generate_step_logs``), so a TensorBoard holding runs of both lines them up.
TAGS = {"loss": "loss/current", "loss_average": "loss/average", "lr": "lr/unet", "text_encoder_lr": "lr/textencoder",
        "d*lr": "lr/d*lr", "d": "prodigy/d", "validation": "loss/validation/epoch_average",
        "divergence": "loss/validation/epoch_divergence", "epoch_average": "loss/epoch_average"}


def check_loggers(config: Config) -> None:
    """Refuse a logger that cannot run, before any model loads."""
    if "wandb" in config.train.log_with and importlib.util.find_spec("wandb") is None:
        raise LoratuneError("train.log_with: wandb is not installed (pip install wandb, or remove it from the list)")


def optimizer_d(optimizer: Any) -> float | None:
    """Prodigy's current step-size estimate ``d`` (its effective learning rate is d × lr); None for other optimizers."""
    groups = getattr(optimizer, "param_groups", None) or []
    value = groups[0].get("d") if groups else None
    return float(value) if value is not None else None


class StepLogger:
    """Writes each optimizer step's record to the configured viewers (``close`` ends them)."""

    def __init__(self, config: Config, out_dir: str | Path) -> None:
        self.config = config
        self.log_dir = Path(out_dir) / LOG_DIR
        self._writer: Any = None
        self._wandb: Any = None
        self._losses: list[float] = []

    def start(self, first_step: int = 0) -> None:
        """Open the viewers; ``first_step`` is the step a resumed run continues after (0 for a new run)."""
        log_with = self.config.train.log_with
        if "tensorboard" in log_with:
            from torch.utils.tensorboard import SummaryWriter

            # After a resume the steps past the checkpoint are trained again: purge_step makes TensorBoard drop the
            # old events from that step on instead of drawing two curves over each other.
            self._writer = SummaryWriter(str(self.log_dir), purge_step=first_step + 1 if first_step else None)
        if "wandb" in log_with:
            import wandb

            self._wandb = wandb.init(project="loratune", name=self.config.train.output_name, dir=str(self.log_dir),
                                     config=self.config.model_dump(mode="json"))

    def step(self, record: dict[str, Any]) -> None:
        """One optimizer step: ``step``, ``loss``, ``lr`` and, when present, ``text_encoder_lr`` and ``d``."""
        self._losses.append(record["loss"])
        window = self._losses[-100:]  # kohya's loss/average is a moving mean over the recent steps too
        values = {"loss": record["loss"], "loss_average": sum(window) / len(window), "lr": record["lr"]}
        for key in ("text_encoder_lr", "d"):
            if record.get(key) is not None:
                values[key] = record[key]
        if "d" in values:
            values["d*lr"] = values["d"] * record["lr"]  # the step size Prodigy actually takes
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(TAGS[key], value, record["step"])
        if self._wandb is not None:
            self._wandb.log({TAGS[k]: v for k, v in values.items()} | {"epoch": record["epoch"]}, step=record["step"])

    def epoch(self, epoch: int, step: int, validation: float | None, train_average: float | None) -> None:
        """An epoch's end: its mean training loss and the validation loss, whose difference kohya calls the
        divergence (validation minus training; growing as the LoRA fits its training images and not the others)."""
        values = {"epoch_average": train_average, "validation": validation}
        if validation is not None and train_average is not None:
            values["divergence"] = validation - train_average
        present = {k: v for k, v in values.items() if v is not None}
        if self._writer is not None:
            for key, value in present.items():
                self._writer.add_scalar(TAGS[key], value, step)
        if self._wandb is not None and present:
            self._wandb.log({TAGS[k]: v for k, v in present.items()} | {"epoch": epoch}, step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
