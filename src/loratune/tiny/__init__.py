"""Tiny, randomly initialised models shaped and saved exactly like the real ones, plus a procedural dataset.

``build_tiny_models(out_dir)`` writes, offline and deterministically (seeded)::

    out_dir/sd15/          StableDiffusionPipeline.from_pretrained(path)
    out_dir/sdxl/          StableDiffusionXLPipeline.from_pretrained(path)
    out_dir/flux/          FluxPipeline.from_pretrained(path)
    out_dir/single_file/sd15.safetensors, sdxl.safetensors, flux.safetensors   the same pipelines as one checkpoint
                           each in the family's original layout (LDM/SGM; Flux: BFL's transformer alone)
                           (model.base: single_file/sd15.safetensors, model.config: sd15)
    out_dir/open_clip/     open_clip.create_model_and_transforms(f"local-dir:{path}")
    out_dir/hf_clip/       CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    out_dir/aesthetic/aesthetic.pth   torch.load(path, weights_only=True): LAION MLP, public key layout (+ .safetensors)
    out_dir/arcface/arcface.onnx      insightface.model_zoo.get_model(path) -> ArcFaceONNX
    out_dir/arcface/scrfd.onnx        get_model(path) -> SCRFD (finds the dataset's faces by skin tone); the folder
                                      is a pack: insightface.app.FaceAnalysis(name=str(folder))
    out_dir/vlm/           AutoModelForImageTextToText / AutoProcessor.from_pretrained(path) (native InternVL)
    out_dir/imagereward/   THUDM/ImageReward layout: ImageReward.pt (weights_only state dict) + med_config.json + vocab.txt
    out_dir/hpsv2/         open_clip folder (local-dir:) whose .pth holds HPSv2's {"state_dict": ...} checkpoint
    out_dir/florence2/     AutoModelForImageTextToText / AutoProcessor.from_pretrained(path) (native Florence-2)
    out_dir/tagger/        model.onnx + selected_tags.csv: a WD14-style tagger for onnxruntime
    out_dir/dataset/train/10_<token>/*.png + .txt, out_dir/dataset/references/<token>/*.png
    out_dir/loratune.yaml  a config using all of the above (relative paths); loratune-sdxl.yaml: the same on SDXL

Each model folder holds a ``loratune-stand-in.json`` marker, so every score computed with it says "stand-in weights".
The folder is built under a temporary name and renamed into place; a complete build is reused unless ``force``.
"""

from loratune.tiny.factory import TinyModels, build_tiny_models

__all__ = ["TinyModels", "build_tiny_models"]
