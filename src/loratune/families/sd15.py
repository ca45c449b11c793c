"""Stable Diffusion 1.5: a UNet trained to predict the noise (or v) at DDPM timesteps, one CLIP text encoder.

The noise-prediction objective here (min-SNR weighting, noise offset, epsilon or v target) is SDXL's too; SDXL
(``sdxl.py``) adds its second encoder, pooled embedding and size conditioning on top of this class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loratune.families import published
from loratune.families.base import FLOW_MATCHING_SETTINGS, GIB, Component, Family, refuse_train_settings

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.train.config import TrainSection
    from loratune.train.encode import TextCondition
    from loratune.train.model import Models


class SD15(Family):
    name = "sd15"
    label = "Stable Diffusion 1.5"
    pipeline_class = "StableDiffusionPipeline"
    denoiser = Component("unet", "diffusers.UNet2DConditionModel")
    text_encoders = (Component("text_encoder", "transformers.CLIPTextModel"),)
    tokenizers = (Component("tokenizer", "transformers.CLIPTokenizer", weights=False),)
    # Training always draws noise with DDPM's schedule, whatever sampler the pipeline ships (SDXL: Euler).
    noise_scheduler = Component("scheduler", "diffusers.DDPMScheduler", weights=False)
    lora_targets: ClassVar[list[str] | str] = ["to_q", "to_k", "to_v", "to_out.0"]
    trainable_text_encoders = (0,)
    kohya_model_version = "sd_v1"
    kohya_text_prefixes: ClassVar[tuple[str, ...]] = ("lora_te",)  # one per text encoder
    modelspec_implementation = "diffusers"
    modelspec_architecture = "stable-diffusion-v1/lora"  # sd-scripts' sai_model_spec values
    default_steps = 25
    default_cfg = 7.0
    default_repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    published_configs = published.SD15
    # The CLIP-L text encoder under cond_stage_model; SD2's OpenCLIP under cond_stage_model.model is another family.
    single_file_keys = ("cond_stage_model.transformer.",)
    # Activations from published LoRA training reports: ~4 GiB per image at 512 px without checkpointing, ~1 GiB
    # with; sampling is dominated by the VAE's float32 decode.
    native_resolution = 512
    train_activation_bytes = (4.0 * GIB, 1.0 * GIB)
    sample_activation_bytes = 1.5 * GIB

    def pipeline_extras(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def check(self, config: Config) -> None:
        refuse_train_settings(config.train, FLOW_MATCHING_SETTINGS, self.name, "a flow-matching setting (Flux)")

    def encode_text(self, models: Models, captions: list[str], device: Any) -> TextCondition:
        """The text encoder's last hidden state."""
        from loratune.train.encode import TextCondition, tokenize

        ids = tokenize(models.tokenizers[0], captions).to(device)
        return TextCondition(models.text_encoders[0](ids)[0])

    def added_conditions(self, cond: TextCondition, bucket: tuple[int, int], batch: int, device: Any) -> dict[str, Any]:
        """Keyword arguments the UNet takes beside the text (SDXL's pooled embedding and size ids)."""
        return {}

    def loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int], train: TrainSection,
             generator: Any) -> Any:
        """Noise-prediction loss at random timesteps (epsilon or v target; min-SNR weighting; noise offset)."""
        import torch

        scheduler = models.noise_scheduler
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        if train.noise_offset:
            noise = noise + train.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=generator).to(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
        return self._loss_at(models, latents, cond, bucket, timesteps, noise, train.min_snr_gamma).mean()

    def validation_loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int],
                        level: float, noise: Any) -> Any:
        """Plain MSE per sample at the DDPM timestep ``level`` of the way through the schedule."""
        import torch

        steps = models.noise_scheduler.config.num_train_timesteps
        timesteps = torch.full((latents.shape[0],), int(level * steps), dtype=torch.long, device=latents.device)
        return self._loss_at(models, latents, cond, bucket, timesteps, noise, None)

    def _loss_at(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int], timesteps: Any,
                 noise: Any, min_snr_gamma: float | None) -> Any:
        """Each sample's loss at the given timesteps and noise (training draws them; validation fixes them)."""
        import torch
        import torch.nn.functional as F
        from diffusers.training_utils import compute_snr

        scheduler = models.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        v_prediction = scheduler.config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        extra = self.added_conditions(cond, bucket, latents.shape[0], latents.device)
        pred = models.denoiser(noisy, timesteps, cond.hidden, **extra).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if min_snr_gamma:
            snr = compute_snr(scheduler, timesteps)
            clipped = torch.minimum(snr, torch.full_like(snr, min_snr_gamma))
            loss = loss * (clipped / (snr + 1) if v_prediction else clipped / snr)
        return loss

    def call_kwargs(self, models: Models, *, lora_scale: float, width: int, height: int,
                    negative_prompt: str | None) -> dict[str, Any]:
        return {"cross_attention_kwargs": {"scale": lora_scale}, "negative_prompt": negative_prompt or None}

    def kohya_unet_path(self, path: str, denoiser_config: Any) -> str:
        """The module's name in kohya's files (SD1.5: the diffusers path itself)."""
        return path

    def to_kohya(self, denoiser: dict[str, Any], alpha: float, text_encoders: tuple[dict[str, Any], ...] = (),
                 denoiser_config: Any = None) -> dict[str, Any]:
        from loratune.lora.kohya import kohya_module, peft_modules, text_encoder_kohya

        out: dict[str, Any] = {}
        for path, weights in peft_modules(denoiser).items():
            path = self.kohya_unet_path(path.removeprefix("unet."), denoiser_config)
            out |= kohya_module("lora_unet_" + path.replace(".", "_"), weights["A"], weights["B"], alpha)
        prefixes = self.kohya_text_prefixes
        if len(text_encoders) > len(prefixes):
            raise ValueError(f"{self.name} has {len(prefixes)} text encoder(s), got {len(text_encoders)} state dicts")
        for prefix, state_dict in zip(prefixes, text_encoders):
            out |= text_encoder_kohya(prefix, state_dict, alpha)
        return out

    def modelspec(self, models: Models, train: TrainSection) -> dict[str, str]:
        prediction = train.prediction_type or models.noise_scheduler.config.prediction_type
        return {
            "architecture": self.modelspec_architecture,
            "implementation": self.modelspec_implementation,
            "prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        }

    def single_file_tensors(self, folder: Path) -> dict[str, Any]:
        """The LDM layout: UNet and VAE as the SD families store them, CLIP-L under its transformers names."""
        from loratune.singlefile.ldm import clip_to_ldm, unet_vae_to_ldm
        from loratune.singlefile.write import folder_weights

        return unet_vae_to_ldm(folder) | clip_to_ldm(folder_weights(folder, "text_encoder"),
                                                     "cond_stage_model.transformer.")

    def build_tiny(self, folder: Path, seed: int) -> None:
        from loratune.tiny.sd import build_sd15

        build_sd15(folder, seed)
