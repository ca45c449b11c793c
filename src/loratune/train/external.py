"""Train with an outside tool (e.g. kohya ``train_network.py``) driven by a command template.

The command runs in its own process group (so stopping it stops its children too, e.g. ``accelerate launch``
workers). While it runs, its output folder is polled for per-epoch kohya checkpoints (epoch from ``ss_epoch``
metadata or a ``NAME-000001.safetensors`` name); each finished file is sampled on the base model like our own
checkpoints and handed to ``on_checkpoint``, which may stop the run (``StopTraining``).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.timing import Stopwatch
from loratune.train.records import CheckpointInfo, SampleWhen, StopTraining, TrainResult

if TYPE_CHECKING:
    from loratune.train.cache import BaseCache

POLL_S = 0.5


def command_values(config: Config, output_dir: Path) -> dict[str, Any]:
    """The placeholders a command template may use."""
    t = config.train
    return {
        "rank": t.rank,
        "alpha": t.lora_alpha,
        "learning_rate": t.effective_learning_rate,
        "text_encoder_lr": t.effective_text_encoder_lr,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "optimizer": t.optimizer,
        "lr_scheduler": t.lr_scheduler,
        "output_dir": str(output_dir),
        "output_name": t.output_name,
        "dataset": config.dataset.path or "",
        "resolution": config.dataset.resolution,
        "base_model": config.model.base,
        "python": sys.executable,
    }


def build_command(config: Config, output_dir: Path) -> list[str]:
    """The argument list: the template is split like a shell would, then each word formatted (no shell runs)."""
    assert config.train.external is not None
    template = config.train.external.command
    values = command_values(config, output_dir)
    try:
        return [word.format(**values) for word in shlex.split(template)]
    except KeyError as err:
        raise LoratuneError(
            f"train.external.command: unknown placeholder {{{err.args[0]}}} (known: {', '.join(sorted(values))})"
        ) from None
    except (ValueError, IndexError) as err:
        raise LoratuneError(f"train.external.command: cannot parse the template ({err})") from None


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, 0)  # the leader is gone; are its children?
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class _Watcher:
    """Finds finished checkpoint files: a file counts once its size held still for one poll (or the tool exited)."""

    def __init__(self, folder: Path, final_epoch: int) -> None:
        self.folder, self.final_epoch = folder, final_epoch
        self.sizes: dict[Path, int] = {}
        self.done: set[Path] = set()

    def ready(self, final: bool) -> list[tuple[int, Path]]:
        from loratune.lora.kohya import checkpoint_epoch

        found: list[tuple[int, Path]] = []
        for path in sorted(self.folder.rglob("*.safetensors")):
            if path in self.done or path.name.startswith("."):
                continue
            size = path.stat().st_size
            stable = self.sizes.get(path) == size and size > 0
            self.sizes[path] = size
            if not (stable or final):
                continue
            try:
                epoch = checkpoint_epoch(path)
            except LoratuneError:
                if final:
                    raise
                continue  # still being written
            found.append((epoch if epoch is not None else self.final_epoch, path))  # NAME.safetensors: the last
            self.done.add(path)
        return sorted(found)


def train_external(
    config: Config,
    out_dir: str | Path,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cache: BaseCache | None = None,
    sample_when: SampleWhen | None = None,
) -> TrainResult:
    """Run ``config.train.external.command``; sample and report each per-epoch checkpoint it writes.

    Samples are drawn on the base from ``cache`` (loaded at the first checkpoint when none is given). The external
    tool's own time between checkpoints counts as training (it trains while loratune samples, on the same device);
    ``sample_when`` as in ``loratune.train.loop.train`` (no validation loss here, so a gate samples every epoch).
    """
    from loratune.modelref import check_model_ref
    from loratune.sampling import sample_prompts
    from loratune.train.cache import BaseCache

    ext = config.train.external
    assert ext is not None
    if resume:
        raise LoratuneError("--resume: not supported with train.external (resume in the external tool itself)")
    check_model_ref(config.model.base, "model.base")
    if config.train.sample_checkpoints:
        sample_prompts(config)
    out_dir = Path(out_dir)
    output_dir = out_dir / "checkpoints"
    if output_dir.is_dir() and any(output_dir.iterdir()):  # old files would pass for this run's checkpoints
        raise LoratuneError(f"{out_dir}: already holds checkpoints; choose another --out")
    output_dir.mkdir(parents=True, exist_ok=True)
    args = build_command(config, output_dir)
    cwd = Path(ext.cwd) if ext.cwd else None
    if cwd is not None and not cwd.is_dir():
        raise LoratuneError(f"train.external.cwd: folder not found: {cwd}")
    log_path = out_dir / "external.log"
    watcher = _Watcher(output_dir, config.train.epochs)
    checkpoints: list[CheckpointInfo] = []
    cache = cache or BaseCache()
    stopped = False
    start = time.monotonic()
    watch = Stopwatch()
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        except OSError as err:
            raise LoratuneError(f"train.external.command: cannot start {args[0]!r}: {err.strerror}") from None
        try:
            while True:
                exited = proc.poll() is not None
                ready = watcher.ready(final=exited)
                for i, (epoch, path) in enumerate(ready):
                    watch.lap("train")
                    last = epoch >= config.train.epochs or (exited and i == len(ready) - 1)
                    sample = last or sample_when is None or sample_when(epoch, None, last)
                    info = _sample_checkpoint(config, cache, out_dir, epoch, path, sample)
                    if info.samples:
                        watch.lap("sample")
                        info.sample_more = _sampler_for_more(config, cache, out_dir, epoch, path)
                    info.seconds = watch.take()
                    checkpoints.append(info)
                    if progress is not None:
                        progress({"epoch": epoch, "step": None, "checkpoint": str(path)})
                    if on_checkpoint is not None:
                        try:
                            on_checkpoint(info)
                        finally:
                            info.sample_more = None  # only this checkpoint's callback draws more seeds
                    watch.lap("checkpoint")  # scoring is the callback's to count
                    watch.take()
                if exited:
                    break
                if ext.timeout_s is not None and time.monotonic() - start > ext.timeout_s:
                    stop_process_group(proc)
                    raise LoratuneError(
                        f"train.external: still running after {ext.timeout_s:g} s; stopped (log: {log_path})"
                    )
                time.sleep(POLL_S)
        except StopTraining:
            stopped = True
        finally:
            if proc.poll() is None or _group_alive(proc.pid):
                stop_process_group(proc)
    if not stopped and proc.returncode != 0:
        raise LoratuneError(f"train.external: command exited with code {proc.returncode} (log: {log_path})")
    if not checkpoints and not stopped:
        raise LoratuneError(f"train.external: the command wrote no .safetensors checkpoints into {output_dir}")
    return TrainResult(
        out_dir, checkpoints, steps=0, epochs=max((c.epoch for c in checkpoints), default=0), stopped_early=stopped
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _sample_checkpoint(config: Config, cache: BaseCache, out_dir: Path, epoch: int, path: Path,
                      sample: bool = True) -> CheckpointInfo:
    from loratune.lora.kohya import read_metadata
    from loratune.timing import device_label
    from loratune.train.model import training_precision

    precision = training_precision(config.train)
    samples = _draw(config, cache, out_dir, epoch, path) if config.train.sample_checkpoints and sample else []
    meta = read_metadata(path)
    rank = int(meta["ss_network_dim"]) if meta.get("ss_network_dim", "").isdigit() else None
    steps = int(meta["ss_steps"]) if meta.get("ss_steps", "").isdigit() else 0
    kohya = path if any(k.startswith("lora_unet_") for k in _keys(path)) else None
    return CheckpointInfo(epoch, steps, None if kohya else path, kohya, samples, rank=rank, folder=path.parent,
                          device=device_label(precision.device))


def _draw(config: Config, cache: BaseCache, out_dir: Path, epoch: int, path: Path, append: bool = False) -> list[Any]:
    """The checkpoint file's samples for ``config``'s seeds, drawn on the cached base into the epoch's folder
    (``append``: beside the ones drawn there before)."""
    from loratune.sampling import render_samples
    from loratune.train.model import training_precision

    precision = training_precision(config.train)
    with cache.borrow(config, precision) as base:
        return render_samples(config, base.models, precision, out_dir / "samples" / f"epoch-{epoch:04d}", lora=path,
                              append=append)


def _sampler_for_more(config: Config, cache: BaseCache, out_dir: Path, epoch: int,
                      path: Path) -> Callable[[list[int]], list[Any]]:
    """``CheckpointInfo.sample_more`` for a checkpoint file: more seeds drawn into the epoch's samples folder."""
    from loratune.sampling import with_seeds

    return lambda seeds: _draw(with_seeds(config, seeds), cache, out_dir, epoch, path, append=True)


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())
