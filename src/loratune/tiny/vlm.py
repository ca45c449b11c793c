"""A tiny native InternVL (the ``-hf`` layout of OpenGVLab/InternVL3-*-hf) for VQAScore and trait-check tests.

Loads exactly like the real checkpoints::

    processor = AutoProcessor.from_pretrained(path)              # InternVLProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)    # InternVLForConditionalGeneration

Vision tower: InternViT at width 32, 2 layers, 448-px input, 14-px patches → 32×32 patches, pixel-shuffled by 0.5 to
256 image tokens (``image_seq_length`` must equal (448/14)² × 0.25). Language model: a 2-layer Qwen2 at width 32.
Tokenizer: a byte-level BPE trained here with ``tokenizers`` on a small corpus that makes "Yes", " Yes", "No", " No"
(and lower case) single tokens, with the InternVL special tokens and a Qwen-style chat template that writes
``<IMG_CONTEXT>\\n`` for each image (the processor expands it to ``<img>`` + 256 × ``<IMG_CONTEXT>`` + ``</img>``).
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE = 0.5
IMAGE_SEQ_LENGTH = int((IMAGE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE**2)  # 256
VOCAB_SIZE = 600

SPECIAL_TOKENS = {
    "eos": "<|im_end|>",
    "pad": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
ANSWER_WORDS = ("Yes", " Yes", "yes", " yes", "No", " No", "no", " no")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from loratune.tiny.dataset import BACKGROUNDS, CHARACTERS

    lines = [
        'Does this figure show "a photo of a cat"? Please answer yes or no.',
        "Yes. No. Yes, it does. No, it does not. yes no yes no",
        "Answer: Yes\nAnswer: No\nanswer yes\nanswer no",
    ]
    for look in CHARACTERS:
        for place in BACKGROUNDS.values():
            lines.append(f'Does this figure show "{look.token}, {look.description}, {place}"? Please answer yes or no.')
        for trait in look.traits:
            lines.append(f"Does this figure show {trait}? Please answer yes or no.")
    # Each answer word as its own text, many times: its merges then win even in a tiny vocabulary.
    return lines + list(ANSWER_WORDS) * 50


def build_vlm_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        model_max_length=4096,
        padding_side="left",
        extra_special_tokens={
            "start_image_token": SPECIAL_TOKENS["start_image_token"],
            "end_image_token": SPECIAL_TOKENS["end_image_token"],
            "context_image_token": SPECIAL_TOKENS["context_image_token"],
            "video_token": SPECIAL_TOKENS["video_token"],
        },
        chat_template=CHAT_TEMPLATE,
    )
    for word in ANSWER_WORDS:
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # the corpus above guarantees it; fail loudly if tokenizers ever changes its merges
            raise RuntimeError(f"tiny VLM tokenizer: {word!r} is not a single token ({ids})")
    return fast


def build_vlm(folder: Path, seed: int = 0) -> None:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tokenizer = build_vlm_tokenizer()
    vocab = len(tokenizer)
    vision = InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["context_image_token"]),
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    # For the VLM captioner: a random decoder tends to end at once or repeat one token.
    model.generation_config.min_new_tokens = 6
    model.generation_config.no_repeat_ngram_size = 1
    model.save_pretrained(str(folder), safe_serialization=True)
    # The real -hf checkpoints' preprocessing: 448-px tiles, ImageNet normalisation, up to 12 tiles (+ thumbnail).
    image_processor = GotOcr2ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    video_processor = InternVLVideoProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=IMAGE_SEQ_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(folder))
