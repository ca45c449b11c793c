"""LoRA training: the built-in diffusers+peft trainer and the external-command adapter."""
