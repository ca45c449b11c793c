"""The opt-in quantised base (``model.quantize``): the denoiser's frozen weights kept in 4 or 8 bits on a CUDA GPU,
so that FLUX.1's 12-billion-parameter transformer trains a LoRA on a 24 GB card. Through maintained libraries only:

- ``nf4``: bitsandbytes' 4-bit NormalFloat (QLoRA's scheme), loaded through diffusers' ``BitsAndBytesConfig``;
  peft puts the LoRA on bitsandbytes' ``Linear4bit`` layers, computing in bf16.
- ``fp8``: diffusers' layerwise casting: weights stored as ``float8_e4m3fn``, each layer upcast to bf16 for its own
  forward pass (``ModelMixin.enable_layerwise_casting``; norms and embeddings stay in bf16).

Text encoders, VAE and the LoRA itself are not quantised. Both are refused off CUDA: on a CPU they would only be
slower, and bitsandbytes' 4-bit path needs a GPU.
"""

from __future__ import annotations

from typing import Any

QUANTIZATIONS = ("fp8", "nf4")


def check_quantize_device(quantize: str | None, device_type: str) -> None:
    """``ValueError`` naming ``model.quantize`` unless the run's device is CUDA."""
    if quantize and device_type != "cuda":
        raise ValueError(f"model.quantize: {quantize} needs a CUDA GPU and this run is on {device_type}; "
                         "remove model.quantize (or set train.device: cuda on a machine with one)")


def load_kwargs(quantize: str | None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for the denoiser: bf16 for what is not quantised, and for nf4 a diffusers
    ``BitsAndBytesConfig``."""
    if quantize is None:
        return {}
    import torch

    kwargs: dict[str, Any] = {"torch_dtype": torch.bfloat16}
    if quantize == "nf4":
        from diffusers import BitsAndBytesConfig

        from loratune.errors import LoratuneError

        try:
            import bitsandbytes  # noqa: F401 - diffusers needs it to quantise
        except ImportError:
            raise LoratuneError("model.quantize: nf4 needs bitsandbytes (pip install 'loratune[gpu]')") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return kwargs


def after_load(denoiser: Any, quantize: str | None) -> None:
    """fp8: store the loaded denoiser's weights in float8, computing in bf16 layer by layer."""
    if quantize == "fp8":
        import torch

        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
