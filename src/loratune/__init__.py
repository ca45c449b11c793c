"""loratune: train → sample → score → search for character LoRAs."""
__version__ = "0.1.0"
