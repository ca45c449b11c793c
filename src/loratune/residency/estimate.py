"""The estimated peak device memory of each phase of a trial — training, sampling, scoring — with everything kept on
the device (``keep``) and with the phases taking turns (``swap``).

Weights are exact: every model is built on the meta device from its config (``components``) and counted in the dtype
it runs in (the base's denoiser and text encoders in the training precision, the VAE in float32, the LoRA, its
gradients and the optimizer's state in float32, the scorers in ``evaluation.dtype``). Activations are rough: the
family's per-image constants at its native size (``Family.train_activation_bytes`` & co.), scaled by the pixels and
the batch; ``benchmarks/gpu_memory.py`` measures the real peaks beside this estimate on a CUDA machine, to check and
recalibrate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loratune.residency.components import (
    Part,
    base_configs,
    build_part,
    lora_numel,
    part,
    quantized_part,
    scorer_parts,
)

if TYPE_CHECKING:
    from loratune.config import Config

GIB = 1024**3
PHASES = ("train", "sample", "score")
# Optimizer state per trained element (bytes): AdamW/Prodigy keep float32 moments (Prodigy two more vectors), Lion one,
# bitsandbytes' AdamW8bit two 8-bit moments.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "prodigy": 16, "lion": 4, "adamw8bit": 2}
PHASE_VERBS = {"train": "training", "sample": "sampling", "score": "scoring"}
# What lowers each phase's peak, for the line that stops a run.
FIXES = {
    "train": "lower train.batch_size or dataset.resolution, turn on train.gradient_checkpointing, or set "
             "model.quantize (fp8 / nf4, CUDA)",
    "sample": "draw fewer sampling.seeds at once or at a smaller sampling.width / height, or set model.quantize",
    "score": "choose smaller scorers or a lower evaluation.batch_size",
}
SCORE_ACT_PER_IMAGE = 0.25 * GIB  # a VLM forward on a few 448-px tiles without a KV cache, bf16


@dataclass
class Estimate:
    """Bytes per phase; ``parts`` lists every model counted."""

    base: list[Part]
    lora: list[Part]
    scorers: list[Part]
    activations: dict[str, int]
    not_estimated: list[str] = field(default_factory=list)

    def weights(self, group: str) -> int:
        return sum(p.bytes for p in getattr(self, group))

    def phase(self, phase: str, residency: str) -> int:
        """Peak of ``phase`` under ``keep`` (everything resident) or ``swap`` (only what the phase needs)."""
        base, lora, scorers = self.weights("base"), self.weights("lora"), self.weights("scorers")
        if residency == "keep":
            return base + lora + scorers + self.activations[phase]
        needs = {
            "train": base + lora,
            "sample": base + sum(p.bytes for p in self.lora if p.name == "LoRA weights"),
            "score": scorers,
        }[phase]
        return needs + self.activations[phase]

    def peak(self, residency: str) -> int:
        return max(self.phase(p, residency) for p in PHASES)


def dtype_bytes(name: str) -> int:
    return {"float32": 4, "bf16": 2, "fp16": 2, "bfloat16": 2, "float16": 2, "no": 4}[name]


def estimate(config: Config, device_type: str = "cuda") -> Estimate:
    """The estimate for ``config`` as it would run on a ``device_type`` device (``auto`` precisions resolved for it).

    >>> e = estimate(load_config("examples/sd15.yaml"))  # doctest: +SKIP
    >>> e.peak("swap") / 2**30  # doctest: +SKIP
    6.1
    """
    from loratune.families import get_family

    t, family = config.train, get_family(config.model.family)
    mixed = t.mixed_precision if t.mixed_precision != "auto" else ("bf16" if device_type == "cuda" else "no")
    weight = dtype_bytes(mixed)
    ev_dtype = config.evaluation.dtype
    scorer_bytes = 2 if (ev_dtype == "auto" and device_type == "cuda") else dtype_bytes(
        "float32" if ev_dtype == "auto" else ev_dtype)

    configs, source = base_configs(config.model.base, family.name, config.model.config)
    trained_encoders = {family.text_encoders[i].subfolder for i in family.trainable_text_encoders}
    base: list[Part] = []
    lora = 0
    for sub, (component, conf) in configs.items():
        model = build_part(component, conf)
        if sub == family.denoiser.subfolder:
            lora += lora_numel(model, t.target_modules or family.lora_targets, t.rank)
            if config.model.quantize:
                base.append(quantized_part(sub, model, config.model.quantize, source))
                continue
        elif sub in trained_encoders and t.train_text_encoder:
            lora += lora_numel(model, t.text_encoder_target_modules, t.rank)
        base.append(part(sub, model, 4 if sub == family.vae.subfolder else weight, source))
    state = OPTIMIZER_STATE_BYTES[t.optimizer]
    lora_parts = [Part("LoRA weights", lora, 4, "target modules × rank"),
                  Part("LoRA gradients", lora, 4, "target modules × rank"),
                  Part(f"{t.optimizer} state", lora, state, "per trained element")]
    scorers, skipped = scorer_parts(config, scorer_bytes)

    native = family.native_resolution
    plain, checkpointed = family.train_activation_bytes
    train_act = int(t.batch_size * (config.dataset.resolution / native) ** 2
                    * (checkpointed if t.gradient_checkpointing else plain) * weight / 2)
    sample_scale = (config.sampling.width * config.sampling.height) / native**2
    sample_act = int(max(1, len(config.sampling.seeds)) * sample_scale * family.sample_activation_bytes)
    score_act = int(config.evaluation.batch_size * SCORE_ACT_PER_IMAGE * scorer_bytes / 2)
    return Estimate(base, lora_parts, scorers, {"train": train_act, "sample": sample_act, "score": score_act},
                    skipped)


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


def describe(e: Estimate) -> list[str]:
    """The lines printed before the first trial."""
    lines = ["estimated peak device memory (weights exact from the configs, activations rough):",
             f"  {'phase':<8}{'keep':>10}{'swap':>10}"]
    lines += [f"  {p:<8}{gib(e.phase(p, 'keep')):>10}{gib(e.phase(p, 'swap')):>10}" for p in PHASES]
    for item in [*e.base, *e.lora, *e.scorers]:
        size = f"{item.numel / 1e6:,.1f} M" + (f" × {item.dtype_bytes} B" if item.dtype_bytes else " stored")
        lines.append(f"  {item.name}: {size} = {gib(item.bytes)}"
                     + (f" [{item.source}]" if "published" in item.source else ""))
    if e.not_estimated:
        lines.append(f"  not estimated: {', '.join(e.not_estimated)}")
    return lines


def choose(e: Estimate, residency: str, free: int | None) -> tuple[str, str | None]:
    """(the residency to use, None or the one-line reason to stop): ``auto`` keeps everything when it fits in
    ``free`` bytes (None: no limit, e.g. the CPU), else swaps; a stop when even ``swap`` does not fit."""
    if free is None:
        return ("keep" if residency == "auto" else residency), None
    chosen = residency if residency != "auto" else ("keep" if e.peak("keep") <= free else "swap")
    if e.peak(chosen) > free:
        hint = "" if chosen == "swap" else " (evaluation.residency: swap would need " + gib(e.peak("swap")) + ")"
        phase = max(PHASES, key=lambda p: e.phase(p, chosen))
        return chosen, (f"estimated peak device memory {gib(e.peak(chosen))} with evaluation.residency {chosen} "
                        f"exceeds the {gib(free)} free{hint}, at its highest while {PHASE_VERBS[phase]}; "
                        f"{FIXES[phase]}")
    return chosen, None


def free_memory(device: Any) -> int | None:
    """Free bytes on a CUDA device; None elsewhere (no limit the estimate could act on)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])
