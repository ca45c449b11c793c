"""LoRA files: kohya <-> peft/diffusers conversion (``kohya``) and merging (``merge``)."""
