"""``loratune train``: train one LoRA; checkpoints in kohya and diffusers format, each sampled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def command(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="loratune YAML config")],
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config key, e.g. train.rank=8")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default: runs/<train.output_name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint in the run folder")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")] = False,
) -> None:
    """Train a LoRA (built-in trainer, or train.external's command) and sample every checkpoint."""
    from loratune.config import dump_config, load_config
    from loratune.progress import stderr_console

    cfg = load_config(config, set_ or [])
    out_dir = out or Path("runs") / cfg.train.output_name
    # Model and dataset first: a rejected run leaves no folder behind.
    from loratune.modelref import check_model_available

    check_model_available(cfg.model.base, "model.base")
    from loratune.singlefile.load import components_folder

    components_folder(cfg.model.base, cfg.model.family, cfg.model.config)  # a one-file base: its configs are here
    if cfg.train.external is None:
        from loratune.train.loop import prepare

        prepare(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    from loratune.atomic import atomic_write_text

    atomic_write_text(out_dir / "config.yaml", dump_config(cfg))

    from loratune.train import TrainingDiverged, train

    with _progress(enabled=not as_json) as (on_step, on_checkpoint):
        try:
            result = train(cfg, out_dir, on_checkpoint=on_checkpoint, resume=resume, progress=on_step)
        except TrainingDiverged as err:
            from loratune.errors import LoratuneError

            raise LoratuneError(f"{err} (marker: {err.marker})") from None
        except KeyboardInterrupt:
            import sys

            print(f"loratune: interrupted — checkpoints so far are in {out_dir / 'checkpoints'}; go on with: "
                  f"loratune train {config} --out {out_dir} --resume", file=sys.stderr)
            raise typer.Exit(130) from None
    rows = [
        {
            "epoch": c.epoch,
            "step": c.step,
            "rank": c.rank,
            "resolution": c.resolution,
            "kohya": str(c.kohya_path),
            "diffusers": str(c.diffusers_path),
            "samples": len(c.samples),
        }
        for c in result.checkpoints
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "out_dir": str(out_dir),
                    "steps": result.steps,
                    "epochs": result.epochs,
                    "final_loss": result.final_loss,
                    "checkpoints": rows,
                },
                indent=2,
            )
        )
        return
    from loratune.report.console import print_train_summary

    print_train_summary(out_dir, result, stderr_console)


class _progress:
    """A rich bar over optimizer steps (on stderr, only on a terminal) plus one line per checkpoint."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        import sys

        from loratune.progress import stderr_console

        if self.enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=stderr_console,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=None, status="")

        def on_step(record: dict[str, Any]) -> None:
            if self.bar is not None and record.get("loss") is not None:  # external trainers report no steps
                status = f"epoch {record['epoch']} loss {record['loss']:.4f} lr {record['lr']:.2e}"
                self.bar.update(self.task, total=record["total_steps"], completed=record["step"], status=status)

        def on_checkpoint(info: Any) -> None:
            if self.enabled:
                stderr_console.print(
                    f"epoch {info.epoch}: step {info.step}, {info.kohya_path}, {len(info.samples)} samples"
                )

        return on_step, on_checkpoint

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
