"""Device and dtype choice: CUDA when present, else Apple MPS, else CPU; the config can force one."""

from __future__ import annotations

from typing import Any

from loratune.errors import LoratuneError


def pick_device(preference: str = "auto") -> Any:
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise LoratuneError("evaluation.device: 'cuda' requested but no CUDA device is available")
    return torch.device(preference)


def torch_dtype(name: str, device: Any | None = None) -> Any:
    """Map a config dtype name to torch; half precision on CPU falls back to float32 (CPU kernels are fp32).

    ``auto``: bfloat16 on a CUDA device that supports it (half the memory and time of float32, float32's range so
    nothing overflows), else float32.
    """
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name == "auto":
        cuda = device is not None and getattr(device, "type", str(device)) == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if name not in dtypes:
        raise LoratuneError(f"unknown dtype {name!r} (choose auto, float32, float16 or bfloat16)")
    if device is not None and getattr(device, "type", str(device)) == "cpu" and name == "float16":
        return torch.float32
    return dtypes[name]
