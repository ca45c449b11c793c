"""Who is on the device in each phase of a trial: the residency policy.

``keep`` leaves everything where it is. ``swap`` moves, at each phase boundary, what the next phase does not need off
the device: while training, every scoring model; while sampling, the optimizer's state; while scoring, the base model
and the optimizer's state. Each move is recorded (``moves``), so a test can assert the order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def scorer_modules() -> list[Any]:
    """Every torch module held by the process-wide model cache (the loaded scorers), found one level into the objects
    the cache holds (a loader wraps its model)."""
    import torch

    from loratune.metrics.cache import _models

    found: dict[int, Any] = {}

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, torch.nn.Module):
            found.setdefault(id(obj), obj)
        elif depth and isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item, depth - 1)
        elif depth and hasattr(obj, "__dict__") and not isinstance(obj, type):
            for item in vars(obj).values():
                visit(item, depth - 1)

    for value in list(_models.values()):
        visit(value, 2)
    return list(found.values())


def _move_optimizer_state(optimizer: Any, device: Any) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    for state in inner.state.values():
        for key, value in state.items():
            if hasattr(value, "to") and getattr(value, "device", None) is not None:
                state[key] = value.to(device)


@dataclass
class Residency:
    """The policy in force for a worker: ``enter(phase)`` at each boundary (``train``, ``sample``, ``score``)."""

    mode: str  # "keep" or "swap"
    device: Any
    models: Any = None  # loratune.train.model.Models of the running trial
    optimizer: Any = None
    moves: list[tuple[str, str, str]] = field(default_factory=list)  # (phase, what, where)

    def enter(self, phase: str, models: Any = None, optimizer: Any = None) -> None:
        self.models = models if models is not None else self.models
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        if self.mode != "swap":
            return
        on, off = self.device, "cpu"
        trainer = [] if self.models is None else [("denoiser", self.models.denoiser), ("vae", self.models.vae),
                                                  *((f"text_encoder_{i}", m) for i, m in
                                                    enumerate(self.models.text_encoders))]
        plan = {
            "train": [("scorers", off), ("trainer", on), ("optimizer", on)],
            "sample": [("scorers", off), ("optimizer", off), ("trainer", on)],
            "score": [("optimizer", off), ("trainer", off), ("scorers", on)],
        }[phase]
        for what, where in plan:
            if what == "scorers":
                for module in scorer_modules():
                    module.to(where)
            elif what == "trainer":
                for _, module in trainer:
                    module.to(where)
            elif self.optimizer is not None:
                _move_optimizer_state(self.optimizer, where)
            self.moves.append((phase, what, str(where)))
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def preflight(config: Any, say: Any = print) -> Residency:
    """Print the estimate, choose the residency and stop with one line when even ``swap`` cannot fit."""
    from loratune.device import pick_device
    from loratune.errors import LoratuneError
    from loratune.residency.estimate import choose, describe, estimate, free_memory

    device = pick_device(config.train.device)
    try:
        found = estimate(config, device.type)
    except LoratuneError:
        raise
    except Exception as err:  # noqa: BLE001  (an estimate that cannot be made must not stop a run that can)
        from loratune.errors import first_line

        mode = "keep" if config.evaluation.residency == "auto" else config.evaluation.residency
        say(f"device memory not estimated ({first_line(err)}); evaluation.residency -> {mode}")
        return Residency(mode, device)
    chosen, stop = choose(found, config.evaluation.residency, free_memory(device))
    free = free_memory(device)
    if free is None and not stop:  # the CPU: no device memory to plan, nothing worth a screen of numbers
        return Residency(chosen, device)
    for line in describe(found):
        say(line)
    say(f"evaluation.residency {config.evaluation.residency} -> {chosen}"
        + (f" ({free / 2**30:.1f} GiB free on {device})" if free is not None else f" (no device limit on {device})"))
    if stop:
        raise LoratuneError(stop)
    return Residency(chosen, device)
