"""Every model a trial puts on the device, built on the meta device from its config: parameter (and buffer) counts
exact, no weight read or downloaded.

Configs come from where the loaders would read them: a local folder, the Hugging Face cache, or, for a family's
default model, its published values (``Family.published_configs``; the scorers' in ``published``). Which parts a base
has and which class builds each, the family says (``Family.components``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loratune.errors import LoratuneError, first_line
from loratune.residency import published

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.families import Component

    PartConfigs = dict[str, tuple[Component, dict[str, Any]]]  # {subfolder: (part, its config)}


@dataclass(frozen=True)
class Part:
    """One model (or the LoRA) as the device holds it: elements and bytes per element."""

    name: str
    numel: int  # floating-point elements: they take the dtype the model runs in
    dtype_bytes: int
    source: str  # where its config came from
    fixed_bytes: int = 0  # integer buffers (position ids), which keep their own dtype

    @property
    def bytes(self) -> int:
        return self.numel * self.dtype_bytes + self.fixed_bytes


def _tensors(module: Any) -> list[Any]:
    return [*module.parameters(), *module.buffers()]


def module_numel(module: Any) -> int:
    """Floating-point elements of the parameters and buffers: what ``.to(device, dtype)`` moves and casts."""
    return sum(t.numel() for t in _tensors(module) if t.is_floating_point())


def module_fixed_bytes(module: Any) -> int:
    """Bytes of the integer buffers, which no dtype cast changes."""
    return sum(t.numel() * t.element_size() for t in _tensors(module) if not t.is_floating_point())


def part(name: str, module: Any, dtype_bytes: int, source: str) -> Part:
    return Part(name, module_numel(module), dtype_bytes, source, module_fixed_bytes(module))


def quantized_part(name: str, module: Any, quantize: str, source: str) -> Part:
    """The denoiser as ``model.quantize`` keeps it (``loratune.train.quantize``), from its meta-device build: ``fp8``
    exactly, by applying the loader's own layerwise casting to it (float8 weights, the rest in bf16); ``nf4`` from
    bitsandbytes' storage, 4 bits per Linear weight element plus a float32 scale per block of 64 (diffusers' default
    has no double quantisation), everything else in bf16."""
    import torch

    from loratune.train.quantize import after_load

    # What the loader's torch_dtype does (torch's own cast: diffusers' ModelMixin.to warns about casting after loading,
    # which this never-run copy does not mind).
    torch.nn.Module.to(module, torch.bfloat16)
    if quantize == "fp8":
        after_load(module, "fp8")
        stored = module_bytes(module)
    else:
        linear = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear)}
        stored = sum(t.numel() // 2 + t.numel() // 64 * 4 if id(t) in linear else t.numel() * t.element_size()
                     for t in _tensors(module))
    # No single bytes-per-element: the whole stored size is the part's fixed bytes.
    return Part(f"{name} ({quantize})", module_numel(module), 0, f"{source}; {quantize} storage", stored)


def module_bytes(module: Any) -> int:
    """Bytes a loaded module's parameters and buffers take, in their own dtypes (what the estimate must equal)."""
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def on_meta(build: Callable[[], Any]) -> Any:
    import torch

    with torch.device("meta"):
        return build()


# --- the base model -------------------------------------------------------------------------------------------------
def base_configs(base: str, family: str, config: str | None = None) -> tuple[PartConfigs, str]:
    """{subfolder: (component, config)} of ``base``'s parts with weights and where the configs came from: the folder or
    the hub cache (a one-file base: its config folder), else the family's published configs when ``base`` is the
    family's default repository."""
    from loratune.families import get_family
    from loratune.singlefile.load import config_folder, is_single_file

    found = get_family(family)
    if is_single_file(base):
        try:
            base = config_folder(family, config)
        except LoratuneError:
            base = found.default_repo  # the family's shape: a derivative does not change it
    parts = [c for c in found.components() if c.weights]
    try:
        return {c.subfolder: (c, read_config(c, base)) for c in parts}, base
    except Exception as err:  # noqa: BLE001  (not a folder, not cached, offline)
        if base == found.default_repo:
            return ({c.subfolder: (c, found.published_configs[c.subfolder]) for c in parts},
                    f"published config of {base} (built here)")
        from loratune.modelref import looks_like_hub_id

        fix = f"download it (`hf download {base}`)" if looks_like_hub_id(base) else "check the folder"
        raise LoratuneError(f"model.base: cannot read the configs of {base} to estimate memory ({first_line(err)}); "
                            f"{fix}") from None


def read_config(component: Component, base: str) -> dict[str, Any]:
    """A part's config as a dict, read the way its library reads it (diffusers ``load_config``, transformers
    ``AutoConfig``)."""
    if component.loader.startswith("diffusers."):
        return dict(component.load_class().load_config(base, subfolder=component.subfolder))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base, subfolder=component.subfolder).to_dict()


def build_part(component: Component, config: dict[str, Any]) -> Any:
    """The part on the meta device from its config."""
    klass = component.load_class()
    if component.loader.startswith("diffusers."):
        return on_meta(lambda: klass.from_config({k: v for k, v in config.items() if not k.startswith("_")}))
    conf = klass.config_class(**config)
    return on_meta(lambda: klass(conf))


def lora_numel(module: Any, targets: list[str] | str, rank: int) -> int:
    """Elements of a peft LoRA of ``rank`` on ``module``'s Linear layers named by ``targets`` (peft's rules: a list
    matches name suffixes, a string is a regex the whole name must match): A is rank × in, B is out × rank."""
    import re

    import torch

    def targeted(name: str) -> bool:
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in targets)

    total = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and targeted(name):
            total += rank * (sub.in_features + sub.out_features)
    return total


# --- the scorers ----------------------------------------------------------------------------------------------------
def vlm_config(ref: str) -> tuple[Any, str]:
    """A VLM's transformers config: the folder's or the cache's, else the published one of a default model."""
    from transformers import AutoConfig, InternVLConfig

    try:
        return AutoConfig.from_pretrained(ref), ref
    except Exception:
        key = ref.removesuffix("-hf") + "-hf" if ref.endswith("-hf") else ref
        if key in published.VLMS:
            return InternVLConfig(**published.VLMS[key]), f"published config of {ref} (built here)"
        raise


def build_vlm(ref: str) -> tuple[Any, str]:
    from transformers import AutoModelForImageTextToText

    config, source = vlm_config(ref)
    if getattr(config, "auto_map", None) and config.model_type not in ("internvl",):
        raise LoratuneError(f"{ref}: remote-code model; its size is not estimated here")
    return on_meta(lambda: AutoModelForImageTextToText.from_config(config)), source


def scorer_parts(config: Config, dtype_bytes: int) -> tuple[list[Part], list[str]]:
    """The scoring models the config loads (one per shared model, as the process-wide cache shares them) and the
    backends whose size is not estimated."""
    from loratune.evaluation import build_backends
    from loratune.metrics.base import Runtime
    from loratune.metrics.openclip_models import OpenClipSource

    ev = config.evaluation
    backends = build_backends(config, Runtime(batch_size=ev.batch_size, trust_remote_code=ev.trust_remote_code))
    parts: dict[str, Part] = {}
    skipped: list[str] = []
    for axis, backend in backends.items():
        name = backend.spec.name
        try:
            if name in ("vqascore", "traits"):
                ref = backend.model_id or ""
                if ref not in parts:
                    model, source = build_vlm(ref)
                    parts[ref] = part(f"{axis}: {name} {ref}", model, dtype_bytes, source)
                continue
            # The open_clip model a backend resolved at construction (its own attribute, or its spec's); HPSv2 from a
            # hub file resolves at load, but names its architecture.
            found = [v for v in vars(backend).values() if isinstance(v, OpenClipSource)]
            found += [v for a in vars(backend).values() if hasattr(a, "__dict__") and not isinstance(a, type)
                      for v in vars(a).values() if isinstance(v, OpenClipSource)]
            names = [(src.model_name, src.label) for src in found]
            if name == "hpsv2" and not names:
                names = [(backend.options.architecture, backend.options.architecture)]
            sources = names
            for model_name, label in names:
                key = f"open_clip {model_name}"
                if key not in parts:
                    import open_clip

                    model = open_clip.create_model(model_name, device="meta", load_weights=False)
                    parts[key] = part(f"{axis}: {name} {label}", model, dtype_bytes, "open_clip config")
            if name == "laion_aesthetic":
                import open_clip

                from loratune.metrics.aesthetic import AestheticMLP

                clip = open_clip.create_model(sources[0][0], device="meta", load_weights=False)
                mlp = on_meta(lambda clip=clip: AestheticMLP(clip.visual.output_dim))
                parts["laion mlp"] = part(f"{axis}: laion_aesthetic MLP", mlp, 4, "its CLIP's width")
            elif name == "musiq":
                from pyiqa.archs.musiq_arch import MUSIQ

                parts["musiq"] = part(f"{axis}: musiq", on_meta(lambda: MUSIQ(pretrained=False)), 4, "pyiqa arch")
            elif name == "lpips":
                import lpips

                net = on_meta(lambda: lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False))
                parts["lpips"] = part(f"{axis}: lpips alex", net, 4, "lpips arch")
            elif not sources and name != "piqe":
                skipped.append(f"{axis}: {name}")
        except LoratuneError as err:
            skipped.append(f"{axis}: {name} ({err})")
        except Exception as err:  # noqa: BLE001  (a config no loader here reads: the rest is still estimated)
            skipped.append(f"{axis}: {name} ({first_line(err)})")
    return list(parts.values()), skipped
