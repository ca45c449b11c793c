"""Optimizers (AdamW, AdamW8bit, Prodigy, Lion) and learning-rate schedules, built from the train config.

``carry_over`` moves optimizer state onto a rebuilt optimizer when progressive rank replaced some parameters.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from loratune.errors import LoratuneError
from loratune.train.config import TrainSection

_PACKAGES = {
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "prodigy": ("prodigyopt", "prodigyopt"),
    "lion": ("lion_pytorch", "lion-pytorch"),
}


def check_optimizer(train: TrainSection) -> None:
    """Fail before any model loads when the chosen optimizer's package is missing or broken."""
    if train.optimizer not in _PACKAGES:
        return
    module, package = _PACKAGES[train.optimizer]
    if importlib.util.find_spec(module) is None:
        raise LoratuneError(f"train.optimizer: {train.optimizer} needs the '{package}' package (pip install {package})")
    if train.optimizer == "adamw8bit":
        try:
            import bitsandbytes.optim  # noqa: F401  (imports fail on unsupported platforms)
        except Exception as err:  # noqa: BLE001 - bitsandbytes raises assorted errors when its native library cannot load
            raise LoratuneError(f"train.optimizer: adamw8bit needs a working bitsandbytes ({err})") from None


def build_optimizer(train: TrainSection, groups: list[dict[str, Any]]) -> Any:
    """``groups``: torch param groups, each with its own ``lr``."""
    import torch

    kwargs: dict[str, Any] = {"weight_decay": train.weight_decay}
    if train.betas is not None:
        kwargs["betas"] = tuple(train.betas)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if train.optimizer == "adamw8bit":
        import bitsandbytes.optim

        return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
    if train.optimizer == "prodigy":
        from prodigyopt import Prodigy

        p = train.prodigy
        return Prodigy(
            groups,
            d_coef=p.d_coef,
            d0=p.d0,
            use_bias_correction=p.use_bias_correction,
            safeguard_warmup=p.safeguard_warmup,
            **kwargs,
        )
    if train.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(groups, **kwargs)
    raise LoratuneError(f"train.optimizer: unknown optimizer {train.optimizer!r}")


def build_scheduler(train: TrainSection, optimizer: Any, total_steps: int) -> Any:
    from diffusers.optimization import get_scheduler

    extra = {"num_cycles": train.lr_num_cycles} if train.lr_scheduler == "cosine_with_restarts" else {}
    return get_scheduler(
        train.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=train.lr_warmup_steps,
        num_training_steps=max(total_steps, 1),
        **extra,
    )


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """Load a scheduler's state and put its current learning rates back into the optimizer."""
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def carry_over(old: Any, new: Any, replaced: dict[int, Any]) -> None:
    """Load ``old``'s state into ``new`` whose params are ``old``'s with some replaced by larger ones.

    Moment tensors are zero-padded (a new LoRA row/column starts with no history); Prodigy's ``p0`` (the initial
    weights) is padded with the new weights. State that is not shaped like its parameter (8-bit blocks) is reset.
    """
    import torch

    state = old.state_dict()
    old_params = [p for g in old.param_groups for p in g["params"]]
    new_params = [p for g in new.param_groups for p in g["params"]]
    if len(old_params) != len(new_params):
        raise RuntimeError("optimizer rebuild changed the number of parameters")
    for index, (before, after) in enumerate(zip(old_params, new_params)):
        if replaced.get(id(before), before) is not after:
            raise RuntimeError("optimizer rebuild changed the parameter order")
        entry = state["state"].get(index)
        if entry is None or before.shape == after.shape:
            continue
        padded: dict[str, Any] = {}
        for key, value in entry.items():
            if not torch.is_tensor(value) or value.dim() == 0:
                padded[key] = value
                continue
            if value.shape != before.shape:
                padded = {}
                break
            grown = after.detach().clone() if key == "p0" else torch.zeros_like(after, dtype=value.dtype)
            grown[tuple(slice(0, n) for n in value.shape)] = value
            padded[key] = grown
        if padded:
            state["state"][index] = padded
        else:
            del state["state"][index]
    new.load_state_dict(state)
