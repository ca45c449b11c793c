"""What a model family is: the one interface train, sampling, export, metadata and the tiny models ask.

A family declares its parts as a table (``Component``: the diffusers folder's subfolder and the class that loads it),
so loading, building the pipeline and saving the diffusers LoRA are written once here. What really differs between
families is a handful of methods: how captions become conditioning, the training objective, the pipeline's call
arguments, kohya's module names, and the settings the family cannot honour. Importing a family must stay light (no
torch): the config validates ``model.family`` against the registry.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loratune.errors import LoratuneError, first_line

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.train.config import TrainSection
    from loratune.train.encode import TextCondition
    from loratune.train.model import Models

GIB = 2**30


@dataclass(frozen=True)
class Component:
    """One part of a diffusers folder: its subfolder (also the pipeline's argument name) and its class.

    ``weights``: a model with weights (takes the folder's ``variant``, counts towards memory); tokenizers and
    schedulers have none.
    """

    subfolder: str
    loader: str  # "diffusers.AutoencoderKL", "transformers.CLIPTextModel", …
    weights: bool = True

    def load_class(self) -> Any:
        module, name = self.loader.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def load(self, base: str, variant: str | None = None, **extra: Any) -> Any:
        """``from_pretrained`` of this part from a hub id or a local diffusers folder; a failure names the part."""
        kwargs = ({"variant": variant} if variant and self.weights else {}) | extra
        try:
            return self.load_class().from_pretrained(base, subfolder=self.subfolder, **kwargs)
        except (OSError, ValueError) as err:
            raise LoratuneError(f"model.base: cannot load {self.subfolder} from {base}: {first_line(err)}") from None


class Family(ABC):
    """A model family. Subclasses set the class attributes and implement the methods marked "each family".

    >>> from loratune.families import get_family
    >>> get_family("sdxl").denoiser.subfolder
    'unet'
    """

    name: ClassVar[str]
    label: ClassVar[str]  # for people: "Stable Diffusion 1.5"
    pipeline_class: ClassVar[str]  # the diffusers pipeline over these parts
    denoiser: ClassVar[Component]  # the network the LoRA trains (UNet, transformer)
    vae: ClassVar[Component] = Component("vae", "diffusers.AutoencoderKL")
    text_encoders: ClassVar[tuple[Component, ...]]
    tokenizers: ClassVar[tuple[Component, ...]]  # one per text encoder, same order
    # The scheduler the training objective draws noise levels from (may differ from the one the pipeline samples with).
    noise_scheduler: ClassVar[Component]
    lora_targets: ClassVar[list[str] | str]  # peft target_modules on the denoiser when train.target_modules is unset
    trainable_text_encoders: ClassVar[tuple[int, ...]]  # which encoders train.train_text_encoder puts a LoRA on
    kohya_model_version: ClassVar[str]  # the ``ss_base_model_version`` sd-scripts writes
    modelspec_implementation: ClassVar[str]
    default_steps: ClassVar[int]
    default_cfg: ClassVar[float]

    # The reference model: where a one-file base's component configs, tokenizers and scheduler come from (its Hugging
    # Face cache) unless model.config names a folder, and the shape the memory estimate assumes for it offline.
    default_repo: ClassVar[str]
    # {subfolder: config} of default_repo's parts with weights, as published (``families/published.py``): the memory
    # estimate builds them on the meta device when the configs themselves are not on this machine.
    published_configs: ClassVar[dict[str, dict[str, Any]]]
    # What of default_repo a one-file base reads (``hf download --include`` patterns): configs and tokenizers for a
    # file that holds every part, also the other parts' weights for one that holds the denoiser only.
    single_file_fetch: ClassVar[tuple[str, ...]] = ("*.json", "*.txt")
    # Key prefixes only this family's original-layout checkpoint has (any one identifies it); empty: the family takes
    # no one-file base.
    single_file_keys: ClassVar[tuple[str, ...]] = ()

    # The memory estimate's activations (``loratune.residency.estimate``): rough per-image bytes at the native size in
    # bf16, scaled there by pixels, batch and precision; ``benchmarks/gpu_memory.py`` measures them on a CUDA machine.
    native_resolution: ClassVar[int]
    train_activation_bytes: ClassVar[tuple[float, float]]  # (plain, with gradient checkpointing)
    sample_activation_bytes: ClassVar[float]

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # -- parts -------------------------------------------------------------------------------------------------------

    def components(self) -> tuple[Component, ...]:
        """Every part, in loading order: what ``load`` reads, what a memory estimate sums (the parameter bytes of the
        parts with ``weights``) and what a single-file loader fills (diffusers' ``from_single_file`` of the
        denoiser's class, the other parts from the family's reference folder)."""
        return (self.denoiser, self.vae, *self.text_encoders, *self.tokenizers, self.noise_scheduler)

    def load(self, base: str, variant: str | None = None, quantize: str | None = None,
             config: str | None = None) -> Models:
        """All parts in float32 on the CPU, frozen; the trainer moves and casts them. ``quantize``
        (``model.quantize``, CUDA only) keeps the denoiser's weights in 8 or 4 bits (``loratune.train.quantize``).
        ``base`` may be one checkpoint file, whose parts take their configs from ``config`` (``model.config``)."""
        from loratune.singlefile.load import is_single_file
        from loratune.train.quantize import after_load, load_kwargs

        if is_single_file(base):
            if quantize:
                raise LoratuneError("model.quantize: not available for a one-file base yet; give a diffusers folder")
            return self.load_single_file(base, config)
        denoiser = self.denoiser.load(base, variant, **load_kwargs(quantize))
        after_load(denoiser, quantize)
        return self.around(denoiser, base, variant, quantize)

    def around(self, denoiser: Any, folder: str, variant: str | None = None, quantize: str | None = None) -> Models:
        """The loaded ``denoiser`` with every other part from the diffusers folder (or hub id) ``folder``; frozen."""
        from loratune.train.model import Models

        vae = self.vae.load(folder, variant)
        encoders = [c.load(folder, variant) for c in self.text_encoders]
        tokenizers = [c.load(folder) for c in self.tokenizers]
        scheduler = self.noise_scheduler.load(folder)
        for module in [denoiser, vae, *encoders]:
            module.requires_grad_(False)
        return Models(self, denoiser, vae, encoders, tokenizers, scheduler, quantize=quantize)

    def load_single_file(self, path: str, config: str | None) -> Models:
        """Every part from one checkpoint file in the original layout (``single_file_keys``), through the family
        pipeline's ``from_single_file`` (``loratune.singlefile.load``); the training noise schedule from the config
        folder. A family whose files hold the denoiser only overrides this."""
        from loratune.singlefile.load import config_folder, load_pipeline
        from loratune.train.model import Models

        pipe = load_pipeline(path, self, config)
        denoiser, vae = getattr(pipe, self.denoiser.subfolder), getattr(pipe, self.vae.subfolder)
        encoders = [getattr(pipe, c.subfolder) for c in self.text_encoders]
        tokenizers = [getattr(pipe, c.subfolder) for c in self.tokenizers]
        scheduler = self.noise_scheduler.load(config_folder(self.name, config))
        for module in [denoiser, vae, *encoders]:
            module.requires_grad_(False)
        return Models(self, denoiser, vae, encoders, tokenizers, scheduler)

    def single_file_tensors(self, folder: Path) -> dict[str, Any]:
        """Every tensor of a diffusers folder of this family under its name in the family's original one-file layout,
        the file ``load_single_file`` reads (``tiny-models`` and ``world`` write their bases this way)."""
        raise NotImplementedError(f"{self.label} has no one-file layout")

    def pipeline(self, models: Models, scheduler: Any) -> Any:
        """The diffusers text-to-image pipeline over the loaded parts (no second copy of the weights)."""
        import diffusers

        parts: dict[str, Any] = {
            self.denoiser.subfolder: models.denoiser,
            self.vae.subfolder: models.vae,
            "scheduler": scheduler,
        }
        parts |= {c.subfolder: m for c, m in zip(self.text_encoders, models.text_encoders)}
        parts |= {c.subfolder: t for c, t in zip(self.tokenizers, models.tokenizers)}
        pipe = getattr(diffusers, self.pipeline_class)(**parts, **self.pipeline_extras())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_extras(self) -> dict[str, Any]:
        """Constructor arguments the pipeline needs beyond the parts."""
        return {}

    # -- each family: settings, conditioning, objective, sampling ----------------------------------------------------

    @abstractmethod
    def check(self, config: Config) -> None:
        """Raise ``ValueError`` naming the field for a setting this family cannot honour (run at config validation,
        before any model loads). Flow-matching settings are refused on noise-prediction families and the reverse."""

    @abstractmethod
    def encode_text(self, models: Models, captions: list[str], device: Any) -> TextCondition:
        """What the denoiser reads for these captions (hidden states, and a pooled embedding where it takes one)."""

    @abstractmethod
    def loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int], train: TrainSection,
             generator: Any) -> Any:
        """The training objective for one batch of VAE latents: a scalar tensor."""

    def validation_loss(self, models: Models, latents: Any, cond: TextCondition, bucket: tuple[int, int],
                        level: float, noise: Any) -> Any:
        """Each sample's plain (unweighted) loss at the fixed noise level ``level`` in (0, 1) — a timestep that far
        through the schedule, or that sigma — and the given noise: the deterministic validation loss
        (``loratune.train.validation``). A family without one has no validation loss."""
        raise NotImplementedError(f"{self.label} has no validation loss yet")

    @abstractmethod
    def call_kwargs(self, models: Models, *, lora_scale: float, width: int, height: int,
                    negative_prompt: str | None) -> dict[str, Any]:
        """The pipeline call's family-specific arguments (LoRA scale, negative prompt, size conditioning, …)."""

    def sampling_defaults(self, models: Models) -> tuple[int, float]:
        """(steps, cfg) when ``sampling.steps`` / ``sampling.cfg`` are unset."""
        return self.default_steps, self.default_cfg

    # -- each family: formats -----------------------------------------------------------------------------------------

    @abstractmethod
    def to_kohya(self, denoiser: dict[str, Any], alpha: float, text_encoders: tuple[dict[str, Any], ...] = (),
                 denoiser_config: Any = None) -> dict[str, Any]:
        """kohya sd-scripts tensors from peft state dicts (unprefixed module paths, as ``get_peft_model_state_dict``
        gives); ``text_encoders`` in the family's order, empty dicts for frozen ones."""

    @abstractmethod
    def modelspec(self, models: Models, train: TrainSection) -> dict[str, str]:
        """``modelspec.architecture`` and ``modelspec.prediction_type`` (where the family has one) for a LoRA."""

    def kohya_extra(self, train: TrainSection) -> dict[str, str]:
        """Family-specific ``ss_*`` keys sd-scripts writes beside the common ones."""
        return {}

    def save_diffusers_lora(self, folder: Path, weight_name: str, denoiser: dict[str, Any],
                            denoiser_metadata: dict[str, Any], text_encoders: dict[int, tuple[dict[str, Any],
                                                                                              dict[str, Any]]]) -> None:
        """The diffusers/peft twin via the pipeline's own ``save_lora_weights`` (``text_encoders``: index ->
        (state dict, adapter config))."""
        import diffusers

        kwargs: dict[str, Any] = {
            f"{self.denoiser.subfolder}_lora_layers": denoiser,
            f"{self.denoiser.subfolder}_lora_adapter_metadata": denoiser_metadata,
        }
        for index, (tensors, metadata) in text_encoders.items():
            name = self.text_encoders[index].subfolder
            kwargs[f"{name}_lora_layers"] = tensors
            kwargs[f"{name}_lora_adapter_metadata"] = metadata
        getattr(diffusers, self.pipeline_class).save_lora_weights(
            folder, weight_name=weight_name, safe_serialization=True, **kwargs
        )

    def load_lora(self, pipe: Any, path: Path, adapter_name: str) -> None:
        """Load a LoRA file of either format onto ``pipe`` (diffusers converts kohya files itself)."""
        # Folder + file name: diffusers 0.35 reads a lone file path as a hub id and refuses it offline.
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)

    # -- each family: the offline stand-in ----------------------------------------------------------------------------

    @abstractmethod
    def build_tiny(self, folder: Path, seed: int) -> None:
        """Write a randomly initialised, correctly shaped diffusers folder of this family (``loratune tiny-models``)."""


# Settings only one training objective reads. Each family refuses the other objective's, so no setting is silently
# ignored: a config moved from SD1.5 to Flux (or back) says what no longer applies.
NOISE_PREDICTION_SETTINGS = ("prediction_type", "min_snr_gamma", "noise_offset")
FLOW_MATCHING_SETTINGS = ("timestep_sampling", "discrete_flow_shift", "guidance_scale")


def refuse_train_settings(train: TrainSection, names: tuple[str, ...], family: str, why: str) -> None:
    """``ValueError`` naming the first of ``names`` set in ``train`` (non-default) for ``family``."""
    for name in names:
        value = getattr(train, name)
        if value not in (None, 0, 0.0):
            raise ValueError(f"train.{name}: {why}; {family} does not read it (got {value!r})")
