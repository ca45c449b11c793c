"""Peak device memory per phase of a trial, measured beside loratune's estimate: run this first on any CUDA machine.

One short training (``--steps`` optimizer steps, one checkpoint) under the chosen residency, its checkpoint sampled and
scored as a search does; ``torch.cuda.max_memory_allocated`` is read and reset at every phase boundary, so each
phase's peak is its own. The table gives the estimate, the measurement and their ratio (estimate / measured: above
1 the estimate is safe, below 1 it is short). Weights in the estimate are exact; a ratio far from 1 means the
activation constants (each family's ``train_activation_bytes`` and ``sample_activation_bytes``) need recalibrating.

    .venv/bin/python benchmarks/gpu_memory.py -c examples/sd15.yaml --dataset my-character/train [--residency swap]
    .venv/bin/python benchmarks/gpu_memory.py            # the tiny models (checks the script, measures nothing real)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, default=None, help="loratune config (default: the tiny one)")
    parser.add_argument("--dataset", type=Path, default=None, help="training images (default: the config's)")
    parser.add_argument("--residency", choices=["keep", "swap"], default="swap")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import torch

    from loratune.config import load_config
    from loratune.evaluation import Evaluator, load_references
    from loratune.residency.estimate import GIB, PHASES, estimate
    from loratune.residency.policy import Residency
    from loratune.train import train

    if args.config is None:
        from loratune.tiny import build_tiny_models

        args.config = build_tiny_models(Path(".cache/tiny-models")).config
    overrides = [f"train.max_steps={args.steps}", "train.epochs=1", "train.sample_checkpoints=true",
                 f"evaluation.residency={args.residency}"]
    if args.dataset is not None:
        overrides.append(f"dataset.path={args.dataset}")
    config = load_config(args.config, overrides)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    found = estimate(config, device.type)
    peaks: dict[str, int] = {}

    class Measured(Residency):
        """The policy under test, reading each phase's peak when the next one starts."""

        phase: str | None = None

        def enter(self, phase: str, models=None, optimizer=None) -> None:  # type: ignore[no-untyped-def]
            if cuda and self.phase is not None:
                torch.cuda.synchronize()
                peaks[self.phase] = max(peaks.get(self.phase, 0), torch.cuda.max_memory_allocated())
            super().enter(phase, models, optimizer)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.phase = phase

    residency = Measured(args.residency, device)
    evaluator = Evaluator(config, references=load_references(config), show_progress=False)
    evaluator.load()

    def score(info) -> None:  # type: ignore[no-untyped-def]
        residency.enter("score")
        evaluator.score(info.samples)

    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", on_checkpoint=score, residency=residency)
    residency.enter("train")  # closes the score phase's measurement
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (nothing measured)'}; residency {args.residency}; "
          f"config {args.config}")
    print(f"{'phase':<8}{'estimate GiB':>14}{'measured GiB':>14}{'ratio':>8}")
    for phase in PHASES:
        est = found.phase(phase, args.residency)
        got = peaks.get(phase)
        ratio = f"{est / got:.2f}" if got else "–"
        print(f"{phase:<8}{est / GIB:>14.2f}{(got or 0) / GIB:>14.2f}{ratio:>8}")


if __name__ == "__main__":
    main()
