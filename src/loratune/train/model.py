"""The base model's parts for training, LoRA injection, and the state dicts a checkpoint saves.

Loaded part by part with diffusers/transformers ``from_pretrained`` (hub id or local folder alike). The UNet gets its
adapter through diffusers' ``add_adapter``; text encoders through ``peft.inject_adapter_in_model`` because
transformers 5's ``add_adapter`` wants a peft newer than the registry has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratune.errors import LoratuneError, first_line

ADAPTER = "default"


@dataclass
class Models:
    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    trained_text_encoders: list[int] = field(default_factory=list)


def load_models(base: str, family: str, variant: str | None = None) -> Models:
    """All parts in float32 on the CPU; the trainer moves and casts them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def part(loader: Any, subfolder: str, **kwargs: Any) -> Any:
        try:
            return loader.from_pretrained(base, subfolder=subfolder, **kwargs)
        except (OSError, ValueError) as err:
            raise LoratuneError(
                f"model.base: cannot load {subfolder} from {base}: {first_line(err)}"
            ) from None

    kwargs = {"variant": variant} if variant else {}
    unet = part(UNet2DConditionModel, "unet", **kwargs)
    vae = part(AutoencoderKL, "vae", **kwargs)
    tokenizers = [part(CLIPTokenizer, "tokenizer")]
    encoders = [part(CLIPTextModel, "text_encoder", **kwargs)]
    if family == "sdxl":
        tokenizers.append(part(CLIPTokenizer, "tokenizer_2"))
        encoders.append(part(CLIPTextModelWithProjection, "text_encoder_2", **kwargs))
    # Training always samples noise with DDPM's schedule, whatever sampler the pipeline ships (SDXL: Euler).
    noise_scheduler = part(DDPMScheduler, "scheduler")
    for module in [unet, vae, *encoders]:
        module.requires_grad_(False)
    return Models(family, unet, vae, encoders, tokenizers, noise_scheduler)


def add_lora(
    models: Models, rank: int, alpha: float, unet_targets: list[str], text_encoder_targets: list[str] | None
) -> None:
    """Inject LoRA adapters (B = 0, so the model is unchanged); text encoders only when targets are given."""
    from peft import LoraConfig, inject_adapter_in_model

    models.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(unet_targets))
    )
    if text_encoder_targets:
        for index, encoder in enumerate(models.text_encoders):
            config = LoraConfig(
                r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(text_encoder_targets)
            )
            inject_adapter_in_model(config, encoder, adapter_name=ADAPTER)
            # inject_adapter_in_model leaves no peft_config behind; keep it for metadata like add_adapter does.
            encoder.peft_config = {ADAPTER: config}
            models.trained_text_encoders.append(index)


def lora_modules(model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def trainable_parameters(model: Any) -> list[Any]:
    return [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]


def state_dict(model: Any) -> dict[str, Any]:
    """The adapter's tensors with peft's unprefixed keys (``….lora_A.weight``), detached float32 copies."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()
    }


def load_state_dict(model: Any, tensors: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, tensors, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise LoratuneError(f"checkpoint does not match the model (unexpected keys such as {unexpected[0]})")


def current_rank(model: Any) -> int:
    return int(next(m.r[ADAPTER] for _, m in lora_modules(model)))


def grow_rank(model: Any, new_rank: int, seed: int) -> dict[int, Any]:
    """Grow every adapter of ``model`` to ``new_rank`` without changing what it computes.

    Old rows of A and columns of B are kept; new A rows are random and new B columns zero, so B·A is unchanged;
    alpha grows with the rank so that the scale alpha/r stays the same. Returns {id(old param): new param} for
    carrying optimizer state over.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    replaced: dict[int, Any] = {}
    for _, module in lora_modules(model):
        old_rank = module.r[ADAPTER]
        if new_rank <= old_rank:
            continue
        old_a, old_b = module.lora_A[ADAPTER], module.lora_B[ADAPTER]
        new_a = torch.nn.Linear(old_a.in_features, new_rank, bias=False)
        new_b = torch.nn.Linear(new_rank, old_b.out_features, bias=False)
        with torch.no_grad():
            fresh = torch.randn(new_rank - old_rank, old_a.in_features, generator=generator) / new_rank
            new_a.weight.copy_(torch.cat([old_a.weight.detach().float().cpu(), fresh]))
            new_b.weight.zero_()
            new_b.weight[:, :old_rank] = old_b.weight.detach().float().cpu()
        new_a.to(device=old_a.weight.device, dtype=old_a.weight.dtype)
        new_b.to(device=old_b.weight.device, dtype=old_b.weight.dtype)
        module.lora_A[ADAPTER], module.lora_B[ADAPTER] = new_a, new_b
        scale = module.scaling[ADAPTER]
        module.r[ADAPTER] = new_rank
        module.lora_alpha[ADAPTER] = scale * new_rank
        replaced[id(old_a.weight)] = new_a.weight
        replaced[id(old_b.weight)] = new_b.weight
    config = getattr(model, "peft_config", {}).get(ADAPTER)
    if config is not None and replaced:
        scale = config.lora_alpha / config.r
        config.r, config.lora_alpha = new_rank, scale * new_rank
    return replaced


def lora_config_dict(model: Any) -> dict[str, Any]:
    """The adapter config as diffusers' ``save_lora_weights`` stores it (so alpha != rank loads back right)."""
    return model.peft_config[ADAPTER].to_dict()
