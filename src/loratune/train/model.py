"""The base model's parts for training: loading, placement (``Precision``), LoRA injection and removal (back to the
pristine base), and the state dicts a checkpoint saves.

Loaded part by part with diffusers/transformers ``from_pretrained`` (hub id or local folder alike), as the family
declares its parts (``loratune.families``). The denoiser (UNet or transformer) gets its adapter through diffusers'
``add_adapter``; text encoders through ``peft.inject_adapter_in_model`` because transformers 5's ``add_adapter``
wants a peft newer than the registry has.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loratune.errors import LoratuneError

if TYPE_CHECKING:
    from loratune.families import Family
    from loratune.train.config import TrainSection

ADAPTER = "default"


@dataclass
class Models:
    """A loaded base: its family and parts; ``denoiser`` is the network the LoRA trains (UNet or transformer)."""

    family: Family
    denoiser: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    trained_text_encoders: list[int] = field(default_factory=list)


def load_models(base: str, family: str, variant: str | None = None) -> Models:
    """All parts in float32 on the CPU; the trainer moves and casts them."""
    from loratune.families import get_family

    return get_family(family).load(base, variant)


@dataclass(frozen=True)
class Precision:
    """Where and in what precision the base model runs, for training and for every sample drawn of a LoRA.

    Frozen weights (denoiser, text encoders) in the compute dtype, the VAE in float32 (it overflows in fp16), trained LoRA
    weights in float32, and autocast to the compute dtype under mixed precision.
    """

    device: Any
    mixed: str  # "no", "fp16" or "bf16"

    @property
    def weight_dtype(self) -> Any:
        import torch

        return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.mixed]

    def autocast(self) -> AbstractContextManager[Any]:
        """The same context accelerate's ``Accelerator.autocast`` gives for this precision."""
        import torch

        if self.mixed == "no":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.weight_dtype)


def training_precision(train: TrainSection) -> Precision:
    """``train.device`` and ``train.mixed_precision`` (auto: bf16 on CUDA, else none)."""
    from loratune.device import pick_device

    device = pick_device(train.device)
    mixed = train.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if device.type == "cuda" else "no"
    return Precision(device, mixed)


def place(models: Models, precision: Precision) -> None:
    """Move the parts onto the device; denoiser and text encoders in the compute dtype, the VAE in float32."""
    import torch

    models.vae.to(precision.device)
    for module in [models.denoiser, *models.text_encoders]:
        # dtype only when it changes: diffusers warns on every dtype cast, even a no-op one
        if precision.weight_dtype == torch.float32:
            module.to(precision.device)
        else:
            module.to(precision.device, precision.weight_dtype)


def upcast_lora(module: Any) -> None:
    """LoRA weights in float32 whatever the base's dtype: the optimizer's updates are too small for half precision."""
    for name, p in module.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()


def enable_checkpointing(models: Models) -> None:
    """Gradient checkpointing on the denoiser and on the text encoders being trained.

    Text encoders use non-reentrant checkpointing: with reentrant checkpointing (transformers 4.x's default) the
    frozen embeddings' output needs no grad, so the checkpointed layers -- and the LoRA inside them -- get none.
    """
    models.denoiser.enable_gradient_checkpointing()
    kwargs = {"use_reentrant": False}
    for i in models.trained_text_encoders:
        encoder = models.text_encoders[i]
        if hasattr(encoder, "activation_checkpointing_enable"):  # newer name; the old one warns it will go
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def remove_lora(models: Models) -> None:
    """Back to the pristine base: adapters removed, checkpointing off, eval mode, every weight frozen."""
    from diffusers.utils import recurse_remove_peft_layers

    denoiser = models.denoiser
    if getattr(denoiser, "peft_config", None):
        denoiser.unload_lora()
    if denoiser.is_gradient_checkpointing:
        denoiser.disable_gradient_checkpointing()
    for encoder in models.text_encoders:
        recurse_remove_peft_layers(encoder)
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            vars(encoder).pop(attr, None)  # instance attributes only: the class keeps its default
        if encoder.is_gradient_checkpointing:
            if hasattr(encoder, "activation_checkpointing_disable"):
                encoder.activation_checkpointing_disable()
            else:
                encoder.gradient_checkpointing_disable()
        hook = getattr(encoder, "_require_grads_hook", None)
        if hook is not None:  # transformers adds it when checkpointing starts; it would make frozen text build graphs
            hook.remove()
            del encoder._require_grads_hook
    for module in [denoiser, models.vae, *models.text_encoders]:
        module.eval()
        module.requires_grad_(False)
    models.trained_text_encoders.clear()


def add_lora(
    models: Models,
    rank: int,
    alpha: float,
    targets: list[str] | str | None,
    text_encoder_targets: list[str] | None,
) -> None:
    """Inject LoRA adapters (B = 0, so the model is unchanged): on the denoiser's ``targets`` (peft target names or
    one regex; None: the family's default set), and on the family's trainable text encoders when targets are given."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = models.family.lora_targets if targets is None else targets
    models.denoiser.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                   target_modules=targets if isinstance(targets, str) else list(targets))
    )
    if text_encoder_targets:
        for index in models.family.trainable_text_encoders:
            encoder = models.text_encoders[index]
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
