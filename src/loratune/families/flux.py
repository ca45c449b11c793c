"""Flux.1 (dev and schnell): a rectified-flow transformer over packed 2×2 latent patches, conditioned on T5's hidden
states and CLIP-L's pooled embedding, and (dev) on an embedded guidance value.

Training follows kohya's ``flux_train_network.py`` with its recommended settings (``docs/flux_train_network.md``):
noise levels sigma drawn by ``timestep_sampling`` (default ``shift``: sigmoid of a standard normal, shifted by
``discrete_flow_shift`` 3.1582), the noisy latent ``(1 - sigma)·x + sigma·noise``, the raw prediction regressed on
``noise - x``, guidance 1.0 for dev. LoRA goes on every linear layer of the double- and single-stream blocks (kohya's
default set). Sampling uses ``FluxPipeline`` with the family's defaults: 28 steps at guidance 3.5 (dev), 4 steps
(schnell, which has no guidance embedding). Negative prompts, SD's schedulers and SD's noise settings are refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loratune.families import published
from loratune.families.base import GIB, NOISE_PREDICTION_SETTINGS, Component, Family, refuse_train_settings
from loratune.families.flux_kohya import DEFAULT_TARGETS

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.train.config import TrainSection
    from loratune.train.encode import TextCondition
    from loratune.train.model import Models

# kohya's recommended Flux LoRA settings (sd-scripts docs/flux_train_network.md, "Recommended Settings").
TIMESTEP_SAMPLING = "shift"
DISCRETE_FLOW_SHIFT = 3.1582
TRAINING_GUIDANCE = 1.0


def flow_sigmas(method: str, batch: int, generator: Any, shift: float, image_seq_len: int,
                scheduler_config: Any) -> Any:
    """Noise levels in (0, 1) for one batch, as sd-scripts' ``get_noisy_model_input_and_timesteps`` draws them.

    ``uniform``: U(0, 1). ``sigmoid``: sigmoid(N(0, 1)) (x-flux, ai-toolkit). ``shift``: that, then
    ``shift·s / (1 + (shift - 1)·s)``. ``flux_shift``: that with the resolution-dependent shift FLUX.1-dev samples
    with, ``exp(mu)`` for ``mu`` linear in the number of packed latent tokens (the scheduler's base/max shift and
    sequence lengths: 0.5 at 256 tokens, 1.15 at 4096).
    """
    import torch

    if method == "uniform":
        return torch.rand((batch,), generator=generator)
    sigmas = torch.randn((batch,), generator=generator).sigmoid()
    if method == "shift":
        return sigmas * shift / (1 + (shift - 1) * sigmas)
    if method == "flux_shift":
        x1, x2 = scheduler_config.get("base_image_seq_len", 256), scheduler_config.get("max_image_seq_len", 4096)
        y1, y2 = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
        mu = y1 + (y2 - y1) / (x2 - x1) * (image_seq_len - x1)
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return sigmas


class Flux(Family):
    name = "flux"
    label = "Flux.1"
    pipeline_class = "FluxPipeline"
    denoiser = Component("transformer", "diffusers.FluxTransformer2DModel")
    text_encoders = (
        Component("text_encoder", "transformers.CLIPTextModel"),
        Component("text_encoder_2", "transformers.T5EncoderModel"),
    )
    tokenizers = (
        Component("tokenizer", "transformers.CLIPTokenizer", weights=False),
        Component("tokenizer_2", "transformers.T5TokenizerFast", weights=False),
    )
    noise_scheduler = Component("scheduler", "diffusers.FlowMatchEulerDiscreteScheduler", weights=False)
    lora_targets: ClassVar[list[str] | str] = DEFAULT_TARGETS
    trainable_text_encoders = (0,)  # CLIP-L, as kohya trains it; T5-XXL stays frozen
    kohya_model_version = "flux1"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    default_steps = 28
    default_cfg = 3.5
    default_repo = "black-forest-labs/FLUX.1-dev"
    published_configs = published.FLUX1_DEV
    # BFL's flux1-dev.safetensors and the fine-tunes on model sites hold the transformer only; ComfyUI's all-in-one
    # files hold it under model.diffusion_model.
    single_file_keys = ("double_blocks.", "model.diffusion_model.double_blocks.")
    # A one-file base is the transformer: the other parts' weights come from the repository too (not its 24 GB
    # transformer).
    single_file_fetch = ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "text_encoder/*",
                         "text_encoder_2/*", "vae/*", "transformer/config.json")
    # Rough, from the transformer's shape at 1024 px (4,096 image + 512 text tokens at width 3072 through 57 blocks):
    # ~0.5 GiB of saved activations per block without checkpointing, the blocks' inputs plus one block's recompute
    # with it; sampling: the VAE's float32 decode (SDXL's decoder with 16 latent channels) plus a forward pass.
    native_resolution = 1024
    train_activation_bytes = (28.0 * GIB, 4.0 * GIB)
    sample_activation_bytes = 5.5 * GIB

    @staticmethod
    def guidance_distilled(models: Models) -> bool:
        """dev embeds the guidance value (and is trained with one); schnell does not."""
        return bool(models.denoiser.config.guidance_embeds)

    def check(self, config: Config) -> None:
        refuse_train_settings(config.train, NOISE_PREDICTION_SETTINGS, self.name,
                              "a noise-prediction setting (SD1.5, SDXL); Flux trains by flow matching")
        if config.sampling.scheduler != "default":
            raise ValueError(f"sampling.scheduler: {config.sampling.scheduler!r} is a Stable Diffusion sampler; Flux "
                             "samples with its own flow-matching scheduler (leave it 'default')")
        negatives = [("sampling.negative_prompt", config.sampling.negative_prompt)]
        negatives += [(f"sampling.prompts.{i}.negative_prompt", p.negative_prompt)
                      for i, p in enumerate(config.sampling.prompts)]
        for field, value in negatives:
            if value:
                raise ValueError(f"{field}: Flux.1 is guidance-distilled and draws without a negative prompt; "
                                 f"remove it (got {value!r})")

    def max_sequence_length(self, models: Models) -> int:
        """T5 tokens per caption: 512 for dev, 256 for schnell (kohya's t5xxl_max_token_length), at most the
        tokenizer's own length."""
        limit = 512 if self.guidance_distilled(models) else 256
        return min(limit, int(models.tokenizers[1].model_max_length))

    def encode_text(self, models: Models, captions: list[str], device: Any) -> TextCondition:
        """T5's last hidden states (the transformer's text tokens) and CLIP's pooled output (its vector input)."""
        from loratune.train.encode import TextCondition, tokenize

        clip, t5 = models.text_encoders
        pooled = clip(tokenize(models.tokenizers[0], captions).to(device), output_hidden_states=False).pooler_output
        ids = models.tokenizers[1](
            captions, padding="max_length", max_length=self.max_sequence_length(models), truncation=True,
            return_tensors="pt",
        ).input_ids
        return TextCondition(t5(ids.to(device), output_hidden_states=False)[0], pooled)

    def loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int], train: TrainSection,
             generator: Any) -> Any:
        """Flow matching: regress the transformer's raw output on ``noise - latents`` at a drawn noise level."""
        import torch

        b, _c, h, w = latents.shape
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        sigmas = flow_sigmas(
            train.timestep_sampling or TIMESTEP_SAMPLING, b, generator, train.discrete_flow_shift or DISCRETE_FLOW_SHIFT,
            (h // 2) * (w // 2), models.noise_scheduler.config,
        ).to(latents)
        guidance_scale = TRAINING_GUIDANCE if train.guidance_scale is None else train.guidance_scale
        return self._loss_at(models, latents, cond, sigmas, noise, guidance_scale).mean()

    def validation_loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int],
                        level: float, noise: Any) -> Any:
        """The flow-matching MSE per sample at sigma = ``level`` (guidance at the training default)."""
        import torch

        sigmas = torch.full((latents.shape[0],), level, device=latents.device, dtype=latents.dtype)
        return self._loss_at(models, latents, cond, sigmas, noise, TRAINING_GUIDANCE)

    def _loss_at(self, models: Models, latents: Any, cond: TextCondition, sigmas: Any, noise: Any,
                 guidance_scale: float) -> Any:
        """Each sample's flow-matching loss at the given noise levels and noise."""
        import torch
        import torch.nn.functional as F
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        guidance = None
        if self.guidance_distilled(models):
            guidance = torch.full((b,), guidance_scale, device=latents.device, dtype=torch.float32)
        pred = models.denoiser(
            hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w),
            timestep=sigmas,  # the pipeline passes sigma·1000 / 1000; the transformer scales by 1000 itself
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.hidden,
            txt_ids=torch.zeros(cond.hidden.shape[1], 3, device=latents.device, dtype=latents.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype),
            return_dict=False,
        )[0]
        # Unpacking takes pixel sizes: a latent of h×w is an image of h·f × w·f for the VAE's factor f.
        factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
        pred = FluxPipeline._unpack_latents(pred, h * factor, w * factor, factor)
        return F.mse_loss(pred.float(), (noise - latents).float(), reduction="none").mean(dim=[1, 2, 3])

    def sampling_defaults(self, models: Models) -> tuple[int, float]:
        return (self.default_steps, self.default_cfg) if self.guidance_distilled(models) else (4, 0.0)

    def call_kwargs(self, models: Models, *, lora_scale: float, width: int, height: int,
                    negative_prompt: str | None) -> dict[str, Any]:
        return {"joint_attention_kwargs": {"scale": lora_scale}, "max_sequence_length": self.max_sequence_length(models)}

    def to_kohya(self, denoiser: dict[str, Any], alpha: float, text_encoders: tuple[dict[str, Any], ...] = (),
                 denoiser_config: Any = None) -> dict[str, Any]:
        from loratune.families import flux_kohya
        from loratune.lora.kohya import peft_modules, text_encoder_kohya

        if len(text_encoders) > 1 and text_encoders[1]:
            raise ValueError("flux: only CLIP-L (text encoder 0) takes a LoRA; got one for T5")
        out = flux_kohya.to_kohya(peft_modules(denoiser), alpha, denoiser_config or {})
        if text_encoders and text_encoders[0]:
            out |= text_encoder_kohya("lora_te1", text_encoders[0], alpha)
        return out

    def load_lora(self, pipe: Any, path: Path, adapter_name: str) -> None:
        """Our kohya files (and any whose names all match this transformer) are split here, at the model's own
        widths; any other file goes to diffusers' loader."""
        from safetensors.torch import load_file

        from loratune.families.flux_kohya import from_kohya

        tensors = load_file(str(path))
        converted = None
        if any(k.endswith(".lora_down.weight") for k in tensors):
            converted = from_kohya(tensors, pipe.transformer, pipe.text_encoder)
        if converted is None:
            super().load_lora(pipe, path, adapter_name)
        else:
            pipe.load_lora_weights(converted, adapter_name=adapter_name)

    def modelspec(self, models: Models, train: TrainSection) -> dict[str, str]:
        # sd-scripts' sai_model_spec: flux-1-dev / flux-1-schnell, and no prediction type for Flux.
        variant = "dev" if self.guidance_distilled(models) else "schnell"
        return {"architecture": f"flux-1-{variant}/lora", "implementation": self.modelspec_implementation}

    def kohya_extra(self, train: TrainSection) -> dict[str, str]:
        """The keys flux_train_network.py adds (``update_metadata``), with the values this run trained with."""
        return {
            "ss_model_type": "flux",
            "ss_guidance_scale": str(TRAINING_GUIDANCE if train.guidance_scale is None else train.guidance_scale),
            "ss_timestep_sampling": train.timestep_sampling or TIMESTEP_SAMPLING,
            "ss_sigmoid_scale": "1.0",
            "ss_model_prediction_type": "raw",
            "ss_discrete_flow_shift": str(train.discrete_flow_shift or DISCRETE_FLOW_SHIFT),
        }

    def load_single_file(self, path: str, config: str | None) -> Models:
        """The transformer from the file (the original layout, ``flux_original``), every other part from
        ``model.config`` or FLUX.1-dev in the Hugging Face cache: files on model sites hold the transformer alone
        (an all-in-one file's VAE and encoders are FLUX.1's own, read from there too)."""
        from loratune.families.flux_original import load_transformer
        from loratune.singlefile.load import config_folder

        folder = config_folder(self.name, config)
        return self.around(load_transformer(path, folder), folder)

    def single_file_tensors(self, folder: Path) -> dict[str, Any]:
        """The transformer alone in BFL's layout, as ``flux1-dev.safetensors`` holds it."""
        from loratune.families.flux_original import to_original
        from loratune.singlefile.write import folder_config, folder_weights

        return to_original(folder_weights(folder, "transformer"), folder_config(folder, "transformer"))

    def build_tiny(self, folder: Path, seed: int) -> None:
        from loratune.tiny.flux import build_flux

        build_flux(folder, seed)
