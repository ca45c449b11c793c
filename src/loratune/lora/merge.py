"""Merging kohya-format LoRAs: parameter average, exact rank concatenation, SVD to a target rank.

A kohya LoRA holds, per module ``M``, ``M.lora_down.weight`` (r x in [x kh x kw]), ``M.lora_up.weight``
(out x r [x 1 x 1]) and ``M.alpha``; the module's weight delta is ``(alpha / r) * up @ down``.

- ``concat`` stacks the (weighted, scale-folded) factors: rank = sum of ranks, and the merged delta is exactly
  ``sum_i w_i * delta_i`` for every module, so the merged LoRA computes the weighted sum of the inputs' functions.
- ``svd`` takes that exact sum and keeps its best rank-k approximation (Eckart–Young): the error is the norm of the
  discarded singular values, the least any rank-k LoRA can achieve.
- ``avg`` averages up and down factors separately (all inputs need the same rank). It is the cheap classic merge;
  it equals the averaged function only when the inputs share their down projections — prefer concat or svd.

Default weights are 1/n (an average). Modules missing from an input count as a zero delta for it.

>>> import torch
>>> a = {"m.lora_down.weight": torch.ones(1, 3), "m.lora_up.weight": torch.ones(2, 1), "m.alpha": torch.tensor(1.0)}
>>> merged = merge_loras([a, a], method="concat")
>>> torch.allclose(module_delta(merged, "m"), module_delta(a, "m"))
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from loratune.errors import LoratuneError, first_line

Method = Literal["avg", "concat", "svd"]
METHODS: tuple[str, ...] = ("avg", "concat", "svd")
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def modules(state: Mapping[str, torch.Tensor], name: str = "LoRA") -> list[str]:
    """Module prefixes of a kohya state dict; anything that is not plain LoRA (LoHa, DoRA, ...) is refused."""
    found: list[str] = []
    for key in state:
        if key.endswith(_DOWN):
            found.append(key[: -len(_DOWN)])
        elif not key.endswith((_UP, _ALPHA)):
            raise LoratuneError(f"{name}: key {key!r} is not a plain kohya LoRA tensor (lora_down/lora_up/alpha)")
    for m in found:
        if m + _UP not in state:
            raise LoratuneError(f"{name}: {m} has lora_down but no lora_up")
    if not found:
        raise LoratuneError(f"{name}: no kohya LoRA modules (keys ending in {_DOWN})")
    return sorted(found)


def _factors(state: Mapping[str, torch.Tensor], module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up as out x r, down as r x in*k*k, scale alpha/r) in float64."""
    down = state[module + _DOWN].double()
    up = state[module + _UP].double()
    rank = down.shape[0]
    alpha = float(state[module + _ALPHA]) if module + _ALPHA in state else float(rank)
    return up.reshape(up.shape[0], -1), down.reshape(rank, -1), alpha / rank


def module_delta(state: Mapping[str, torch.Tensor], module: str) -> torch.Tensor:
    """The weight delta ``(alpha/r) * up @ down`` of one module (flattened to 2-D for conv layers), float64."""
    up, down, scale = _factors(state, module)
    return scale * (up @ down)


def _down_shape(state: Mapping[str, torch.Tensor], module: str, rank: int) -> tuple[int, ...]:
    return (rank, *state[module + _DOWN].shape[1:])


def _up_shape(state: Mapping[str, torch.Tensor], module: str, rank: int) -> tuple[int, ...]:
    shape = state[module + _UP].shape
    return (shape[0], rank, *shape[2:])


def merge_loras(
    states: Sequence[Mapping[str, torch.Tensor]],
    method: Method = "concat",
    weights: Sequence[float] | None = None,
    rank: int | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Merge kohya LoRA state dicts; see the module docstring for what each method guarantees."""
    if method not in METHODS:
        raise LoratuneError(f"--method: unknown merge method {method!r} (use {', '.join(METHODS)})")
    if len(states) < 1:
        raise LoratuneError("ensemble: need at least one LoRA")
    names = list(names or [f"LoRA {i + 1}" for i in range(len(states))])
    ws = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
    if len(ws) != len(states):
        raise LoratuneError(f"--weights: {len(ws)} weights for {len(states)} LoRAs")
    if rank is not None and rank < 1:
        raise LoratuneError(f"--rank: must be >= 1 (got {rank})")
    per_input = [set(modules(s, n)) for s, n in zip(states, names)]
    all_modules = sorted(set().union(*per_input))
    dtype = next(iter(states[0].values())).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    out: dict[str, torch.Tensor] = {}
    for module in all_modules:
        holders = [i for i, mods in enumerate(per_input) if module in mods]
        ref = states[holders[0]]
        shapes = {(states[i][module + _UP].shape[0], states[i][module + _DOWN].shape[1:]) for i in holders}
        if len(shapes) > 1:
            raise LoratuneError(f"ensemble: {module} has different layer shapes across inputs (different base models?)")
        if method == "avg":
            up, down, alpha = _average(states, holders, ws, module, names)
        elif method == "concat":
            up, down, alpha = _concat(states, holders, ws, module)
        else:
            up, down, alpha = _svd(states, holders, ws, module, rank)
        r = down.shape[0]
        out[module + _DOWN] = down.reshape(_down_shape(ref, module, r)).to(dtype).contiguous()
        out[module + _UP] = up.reshape(_up_shape(ref, module, r)).to(dtype).contiguous()
        out[module + _ALPHA] = torch.tensor(alpha, dtype=dtype)
    return out


def _average(states, holders, ws, module, names):  # type: ignore[no-untyped-def]
    ranks = {states[i][module + _DOWN].shape[0] for i in holders}
    if len(ranks) > 1:
        raise LoratuneError(
            f"ensemble --method avg: {module} has ranks {sorted(ranks)} across {', '.join(names[i] for i in holders)}; "
            "avg needs equal ranks (use concat or svd)"
        )
    r = ranks.pop()
    up_sum = 0.0
    down_sum = 0.0
    # Scales differ when alphas differ: fold each input's scale into its up factor, write alpha = r (scale 1).
    for i in holders:
        up, down, scale = _factors(states[i], module)
        up_sum = up_sum + ws[i] * scale * up
        down_sum = down_sum + ws[i] * down
    # sum(w) over all inputs normalises the two separate averages back to one product-average.
    total = sum(ws)
    if total == 0:
        raise LoratuneError("--weights: must not sum to 0 for avg")
    return up_sum / total, down_sum, float(r)


def _concat(states, holders, ws, module):  # type: ignore[no-untyped-def]
    ups, downs = [], []
    for i in holders:
        up, down, scale = _factors(states[i], module)
        ups.append(ws[i] * scale * up)
        downs.append(down)
    up = torch.cat(ups, dim=1)
    down = torch.cat(downs, dim=0)
    return up, down, float(down.shape[0])  # alpha = rank: scale 1, the factors already carry it


def _svd(states, holders, ws, module, rank):  # type: ignore[no-untyped-def]
    up, down, _ = _concat(states, holders, ws, module)
    delta = up @ down
    k = rank or max(states[i][module + _DOWN].shape[0] for i in holders)
    k = max(1, min(k, *delta.shape))
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:k].sqrt()
    return u[:, :k] * root, root[:, None] * vh[:k], float(k)


def load_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise LoratuneError(f"{path}: LoRA file not found")
    if path.suffix != ".safetensors":
        raise LoratuneError(f"{path}: expected a .safetensors LoRA")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta  # noqa: SIM118  safe_open has no __iter__
    except (SafetensorError, OSError) as err:
        raise LoratuneError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def merge_files(
    paths: Sequence[str | Path],
    out: str | Path,
    method: Method = "concat",
    weights: Sequence[float] | None = None,
    rank: int | None = None,
) -> Path:
    """Merge LoRA files into ``out`` (written atomically), keeping the first input's ``ss_*`` metadata and recording
    the merge (method, weights, sources) under ``loratune_merge``."""
    from safetensors.torch import save_file

    from loratune.atomic import atomic_path

    loaded = [load_lora(p) for p in paths]
    merged = merge_loras([s for s, _ in loaded], method=method, weights=weights, rank=rank,
                         names=[str(p) for p in paths])
    meta = {k: v for k, v in loaded[0][1].items() if k.startswith(("ss_", "modelspec."))}
    ranks = sorted({int(t.shape[0]) for k, t in merged.items() if k.endswith(_DOWN)})
    # Every merged module has alpha = rank (scale 1), so network alpha = network dim.
    meta["ss_network_dim"] = str(ranks[-1])
    meta["ss_network_alpha"] = str(ranks[-1])
    meta.pop("sshs_model_hash", None)
    meta["loratune_merge"] = json.dumps(
        {"method": method, "weights": list(weights) if weights is not None else [1.0 / len(paths)] * len(paths),
         "rank": rank, "sources": [Path(p).name for p in paths]}
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(merged, str(tmp), metadata=meta)
    return out
