"""A tiny Florence-2 (the transformers-native layout of florence-community/Florence-2-*) for the prose captioner.

Loads exactly like the real checkpoints::

    processor = AutoProcessor.from_pretrained(path)              # Florence2Processor
    model = AutoModelForImageTextToText.from_pretrained(path)    # Florence2ForConditionalGeneration

Vision: a 4-stage DaViT at widths 16-32 on 64-px images (2×2 = 4 patch tokens + 1 pooled). Language: a 1-layer BART
at width 32. Tokenizer: a byte-level BPE trained here on scene words, with BART's special tokens and ``<image>``.
A random decoder tends to end at once or repeat one token, so the stand-in's generation config asks for at least six
tokens, none repeated.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 64
VOCAB_SIZE = 400


def _corpus() -> list[str]:
    from loratune.tiny.dataset import BACKGROUNDS

    return [
        "What does the image describe?", "Describe in detail what is shown in the image.",
        "Describe with a paragraph what is shown in the image.",
        "A boy standing, sitting, running, smiling, looking at the viewer, full body, upper body, close-up.",
        "He is wearing a shirt and shorts.", *BACKGROUNDS.values(),
    ]


def build_florence2(folder: Path, seed: int = 0) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        BartConfig,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
        GenerationConfig,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # Only the corpus's own characters: a random decoder then writes scene words, not stray bytes.
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<image>"],
                                  show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                        model_max_length=1024)
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(16, 16, 32, 32), num_heads=(2, 2, 2, 2),
                                   num_groups=(2, 2, 2, 2), window_size=2, projection_dim=32, drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(
        Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    ).eval()
    model.generation_config = GenerationConfig.from_model_config(model.config)
    model.generation_config.min_new_tokens = 6
    model.generation_config.no_repeat_ngram_size = 1
    model.save_pretrained(str(folder), safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    # (64 / 32)² patch tokens + the pooled one, as the real 768-px model's 577 = 24² + 1.
    image_processor.image_seq_length = (IMAGE_SIZE // 32) ** 2 + 1
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                       post_processor_config={"pure_text": {}}).save_pretrained(str(folder))
