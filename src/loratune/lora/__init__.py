"""LoRA files: kohya <-> diffusers conversion and merging."""
