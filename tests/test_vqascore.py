"""VQAScore and trait checks on the factory's tiny native InternVL, checked against an independent Yes/No softmax."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.internvl2_remote import dynamic_preprocess
from loratune.metrics.registry import create_backend
from loratune.metrics.vlm_models import load_vlm
from loratune.metrics.vlm_pixels import batched_pixels

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


@functools.cache
def _reference_model(folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def _reference_p_yes(folder: Path, image: Image.Image, question: str) -> tuple[float, float]:
    """Yes/No softmax from the model's own next-token logits, without loratune's code path."""
    processor, model = _reference_model(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with torch.no_grad():
        logits = model(**processor(images=[image], text=[text], return_tensors="pt")).logits[0, -1].double()
    tok = processor.tokenizer

    def single(words: list[str]) -> list[int]:
        encoded = [tok.encode(w, add_special_tokens=False) for w in words]
        return sorted({ids[0] for ids in encoded if len(ids) == 1})

    yes, no = single(["Yes", " Yes", "yes", " yes"]), single(["No", " No", "no", " no"])
    probs = torch.softmax(logits, dim=-1)
    pair = probs[yes].sum() / (probs[yes].sum() + probs[no].sum())
    return float(pair), float(probs[yes].sum())


def _backend(name: str, model: Path, axis: str, **options):
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=2)
    backend = create_backend(BackendConfig(name=name, model=str(model), **options), runtime, axis)
    backend.load()
    return backend


def test_vqascore_equals_independent_yes_no_softmax(tiny_models) -> None:
    images = _images(2)
    prompts = ["a boy on a beach", None]
    backend = _backend("vqascore", tiny_models.vlm, "alignment")
    backend.setup(References())
    backend.update([EvalImage(Path(f"{i}.png"), img, prompt=p) for i, (img, p) in enumerate(zip(images, prompts))])
    result = backend.compute()

    expected, expected_full = _reference_p_yes(tiny_models.vlm, images[0], QUESTION.format(prompts[0]))
    assert result.per_image[1] is None  # no prompt: not scored, not 0
    assert result.per_image[0] == pytest.approx(expected, abs=1e-5)
    assert result.value == pytest.approx(expected, abs=1e-5)
    assert result.stand_in and result.details["normalise"] == "pair"

    full = _backend("vqascore", tiny_models.vlm, "alignment", normalise="softmax")
    full.setup(References())
    full.update([EvalImage(Path("0.png"), images[0], prompt=prompts[0])])
    assert full.compute().value == pytest.approx(expected_full, abs=1e-6)


def test_trait_checks_in_details_and_as_consistency_backend(tiny_models) -> None:
    images = _images(1)
    traits = {"luca": ["curly brown hair", "a teal shirt"]}
    items = [
        EvalImage(Path(f"{i}.png"), img, prompt="luca on a beach", character="luca") for i, img in enumerate(images)
    ]
    items.append(EvalImage(Path("x.png"), images[0], prompt="someone else", character=None))

    vqa = _backend("vqascore", tiny_models.vlm, "alignment")
    vqa.setup(References(traits=traits))
    vqa.update(items)
    summary = vqa.compute().details["traits"]["luca"]
    assert set(summary) == set(traits["luca"])
    question = "Does this figure show {}? Please answer yes or no."
    for trait, row in summary.items():
        probs = [_reference_p_yes(tiny_models.vlm, img, question.format(trait))[0] for img in images]
        assert row["images"] == 1
        assert row["mean_probability"] == pytest.approx(probs[0], abs=1e-5)
        assert row["pass_rate"] == float(probs[0] > 0.5)

    consistency = _backend("traits", tiny_models.vlm, "consistency")
    consistency.setup(References(traits=traits))
    consistency.update(items)
    result = consistency.compute()
    assert result.per_image[1] is None
    means = [row["mean_probability"] for row in summary.values()]
    assert result.value == pytest.approx(sum(means) / len(means), abs=1e-5)

    empty = _backend("traits", tiny_models.vlm, "consistency")
    empty.setup(References())
    empty.update(items[1:])
    assert empty.compute().value is None


def _vision_rows(backend, items: list[EvalImage]):
    """The backend's result on ``items`` and how many image tiles went through the vision tower (forward hook)."""
    rows: list[int] = []
    tower = backend.vlm.model.model.vision_tower
    hook = tower.register_forward_hook(
        lambda _m, _a, kwargs, _o: rows.append(len(kwargs["pixel_values"])), with_kwargs=True
    )
    try:
        backend.reset()
        backend.update(items)
        return backend.compute(), sum(rows)
    finally:
        hook.remove()


def test_questions_about_one_image_share_its_vision_pass(tiny_models) -> None:
    # Image 0 is tiled (13 tiles), image 1 has no prompt, image 2's character has one trait: uneven question counts.
    images = [*_images(2), _images(1)[0].resize((64, 64))]
    traits = {"luca": ["curly brown hair", "a teal shirt"], "alberto": ["spiky black hair"]}
    items = [
        EvalImage(Path("0.png"), images[0], prompt="luca on a beach", character="luca"),
        EvalImage(Path("1.png"), images[1], prompt=None, character="luca"),
        EvalImage(Path("2.png"), images[2], prompt="alberto in a town", character="alberto"),
    ]
    runs = {}
    for reuse in (False, True):
        backend = _backend("vqascore", tiny_models.vlm, "alignment", reuse_vision=reuse)
        backend.setup(References(traits=traits))
        runs[reuse] = _vision_rows(backend, items)
    processor, _ = _reference_model(tiny_models.vlm)
    tiles = [len(processor(images=[img], text=["<IMG_CONTEXT>"])["pixel_values"]) for img in images]
    questions = [1 + 2, 0 + 2, 1 + 1]
    (before, before_rows), (after, after_rows) = runs[False], runs[True]
    assert before_rows == sum(t * q for t, q in zip(tiles, questions))  # one vision pass per question
    assert after_rows == sum(tiles)  # one per image
    assert after.per_image[1] is None
    assert after.per_image == pytest.approx(before.per_image, abs=1e-5)
    for character, rows in before.details["traits"].items():
        for trait, row in rows.items():
            assert after.details["traits"][character][trait]["mean_probability"] == pytest.approx(
                row["mean_probability"], abs=1e-5
            )

    consistency = _backend("traits", tiny_models.vlm, "consistency")
    consistency.setup(References(traits=traits))
    result, rows = _vision_rows(consistency, items)
    assert rows == sum(tiles)
    luca = after.details["traits"]["luca"]
    assert result.per_image[1] == pytest.approx(
        sum(_reference_p_yes(tiny_models.vlm, images[1], f"Does this figure show {t}? Please answer yes or no.")[0]
            for t in luca) / 2, abs=1e-5)  # fmt: skip


def test_batched_pixels_are_the_processors_and_score_alike(tiny_models) -> None:
    # Two tiled images of one size (13 tiles each) and two untiled: each size's pixels in one batched call.
    rng = np.random.default_rng(2)
    groups = [[Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for _ in range(2)]
              for shape in ((48, 64, 3), (64, 64, 3))]  # fmt: skip
    processor, _ = _reference_model(tiny_models.vlm)
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=2)
    backends = {}
    for reuse in (False, True):
        config = BackendConfig(name="vqascore", model=str(tiny_models.vlm), reuse_vision=reuse)
        backends[reuse] = create_backend(config, runtime, "alignment")
        backends[reuse].load()
        backends[reuse].setup(References(traits={"luca": ["a teal shirt"]}))
    vlm = backends[True].vlm
    for images, tiles in zip(groups, (13, 1)):
        expected = processor(images=images, text=["<IMG_CONTEXT>"] * 2, return_tensors="pt")["pixel_values"]
        batched = batched_pixels(vlm.processor, images)
        assert batched.shape == expected.shape == (2 * tiles, 3, 448, 448)
        assert (batched - expected).abs().max() <= 1e-6  # the processor's own resize and normalise, batched
        assert vlm.layout(images[0]).batched

    items = [EvalImage(Path(f"{i}.png"), img, prompt="luca on a beach", character="luca")
             for i, img in enumerate(groups[0] + groups[1])]  # fmt: skip
    before, after = (_vision_rows(backends[reuse], items) for reuse in (False, True))
    assert after[1] == 2 * 13 + 2  # one vision pass per image
    assert after[0].per_image == pytest.approx(before[0].per_image, abs=1e-5)
    for trait, row in before[0].details["traits"]["luca"].items():
        assert after[0].details["traits"]["luca"][trait]["mean_probability"] == pytest.approx(
            row["mean_probability"], abs=1e-5
        )


def test_remote_code_needs_permission(tmp_path: Path) -> None:
    folder = tmp_path / "InternVL2-1B"
    folder.mkdir()
    auto_map = {"AutoModel": "modeling_internvl_chat.InternVLChatModel"}
    (folder / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"], "auto_map": auto_map}))
    with pytest.raises(LoratuneError, match="trust_remote_code"):
        load_vlm(str(folder), "auto", "cpu", torch.float32, False, "evaluation.backends.alignment.model")
    with pytest.raises(LoratuneError, match="trust_remote_code"):
        load_vlm("OpenGVLab/InternVL2-2B", "auto", "cpu", torch.float32, False, "evaluation.backends.alignment.model")


def test_dynamic_preprocess_matches_upstream_tiling() -> None:
    wide = Image.new("RGB", (1000, 500))
    tiles = dynamic_preprocess(wide, max_num=12, image_size=448, use_thumbnail=True)
    assert len(tiles) == 2 * 1 + 1 and all(t.size == (448, 448) for t in tiles)  # 2x1 grid + thumbnail
    assert len(dynamic_preprocess(Image.new("RGB", (448, 448)), use_thumbnail=True)) == 1
    assert len(dynamic_preprocess(Image.new("RGB", (1800, 900)), max_num=12)) == 8  # 4x2: large images get more tiles


REMOTE_CODE = Path(__file__).parent / "data" / "tiny_internvl2"


@pytest.fixture(scope="module")
def internvl2_folder(tiny_models, tmp_path_factory) -> Path:
    """A tiny remote-code checkpoint laid out like OpenGVLab/InternVL2-*: config.json's auto_map names .py files."""
    import shutil

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("InternVL2-tiny")
    for source in REMOTE_CODE.glob("*.py"):
        shutil.copy(source, folder / source.name)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_models.vlm / name, folder / name)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    llm = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    }
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["InternVLChatModel"],
                "model_type": "internvl_chat",
                "llm_config": llm,
                "auto_map": {
                    "AutoConfig": "configuration_tiny_internvl.InternVLChatConfig",
                    "AutoModel": "modeling_tiny_internvl.InternVLChatModel",
                },
            }
        )
    )
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(folder)
    return folder


def test_internvl2_remote_code_scores_like_upstream_prompt_and_tiling(internvl2_folder: Path) -> None:
    import torchvision.transforms as T
    from transformers import AutoModel, AutoTokenizer

    square = _images(1)[0].resize((448, 448))
    wide = _images(2)[1].resize((896, 448))  # closest grid 2x1: two tiles + a thumbnail
    question = QUESTION.format("a boy on a beach")
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=2, trust_remote_code=True)
    backend = create_backend(
        BackendConfig(name="vqascore", model=str(internvl2_folder), traits=False), runtime, "alignment"
    )
    backend.load()
    backend.setup(References())
    backend.update(
        [
            EvalImage(Path("a.png"), square, prompt="a boy on a beach"),
            EvalImage(Path("b.png"), wide, prompt="a boy on a beach"),
        ]
    )
    result = backend.compute()

    # Independently: upstream's prompt (Hermes-2 template, <img> + 256 context tokens per tile + </img>) and tiles.
    model = AutoModel.from_pretrained(internvl2_folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(internvl2_folder)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    norm = T.Compose(
        [
            T.Resize((448, 448), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    tiles = {"a": [square], "b": [wide.crop((0, 0, 448, 448)), wide.crop((448, 0, 896, 448)), wide.resize((448, 448))]}
    yes = [
        tok.encode(w, add_special_tokens=False)[0]
        for w in ("Yes", " Yes", "yes", " yes")
        if len(tok.encode(w, add_special_tokens=False)) == 1
    ]
    no = [
        tok.encode(w, add_special_tokens=False)[0]
        for w in ("No", " No", "no", " no")
        if len(tok.encode(w, add_special_tokens=False)) == 1
    ]
    expected = []
    for key in ("a", "b"):
        image_tokens = "<img>" + "<IMG_CONTEXT>" * 256 * len(tiles[key]) + "</img>"
        prompt = (
            f"<|im_start|>system\nYou are a helpful assistant.<|im_end|><|im_start|>user\n{image_tokens}\n{question}"
            "<|im_end|><|im_start|>assistant\n"
        )
        ids = tok(prompt, return_tensors="pt")
        pixels = torch.stack([norm(t) for t in tiles[key]])
        with torch.no_grad():
            logits = (
                model(
                    pixel_values=pixels,
                    input_ids=ids["input_ids"],
                    attention_mask=ids["attention_mask"],
                    image_flags=torch.ones(len(pixels), 1, dtype=torch.long),
                )
                .logits[0, -1]
                .double()
            )
        probs = torch.softmax(logits, -1)
        expected.append(
            float(probs[sorted(set(yes))].sum() / (probs[sorted(set(yes))].sum() + probs[sorted(set(no))].sum()))
        )
    assert result.per_image == pytest.approx(expected, abs=1e-5)

    guarded = Runtime(device=torch.device("cpu"), dtype=torch.float32, trust_remote_code=False)
    with pytest.raises(LoratuneError, match="trust_remote_code"):
        create_backend(BackendConfig(name="vqascore", model=str(internvl2_folder)), guarded, "alignment").load()


def _chatml(image_markup: str) -> str:
    return (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        + image_markup
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _tiny_llava(folder: Path, vlm: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = AutoTokenizer.from_pretrained(vlm)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 56, "patch_size": 14, "projection_dim": 32}  # fmt: skip
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
    image_token = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token, image_seq_length=16)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=_chatml("<image>\n"),
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def _tiny_qwen2_vl(folder: Path, vlm: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = AutoTokenizer.from_pretrained(vlm)
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    start, end, image, video = (tok.convert_tokens_to_ids(t) for t in specials)
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "rope_parameters": rope, "bos_token_id": None,
            "eos_token_id": None}  # fmt: skip
    config = Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        vision_start_token_id=start,
        vision_end_token_id=end,
        image_token_id=image,
        video_token_id=video,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=_chatml("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build", [_tiny_llava, _tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_native_loader_batches_other_vlm_families(build, tiny_models, tmp_path: Path) -> None:
    folder = build(tmp_path / "vlm", tiny_models.vlm)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (60 + 30 * i, 90, 3), dtype=np.uint8)) for i in range(2)]
    prompts = ["a cat", "a very long prompt with many more words than the other one"]
    backend = _backend("vqascore", folder, "alignment", traits=False)
    backend.setup(References())
    backend.update([EvalImage(Path(f"{i}.png"), img, prompt=p) for i, (img, p) in enumerate(zip(images, prompts))])
    result = backend.compute()  # one left-padded batch of two prompts of different lengths
    expected = [_reference_p_yes(folder, img, QUESTION.format(p))[0] for img, p in zip(images, prompts)]
    assert result.per_image == pytest.approx(expected, abs=1e-5)

    # Several questions per image: LLaVA reuses the vision features, Qwen2-VL (grid sizes in the text pass) may not;
    # both give the per-question answers.
    traits = References(traits={"luca": ["a cat", "curly brown hair", "a teal shirt"]})
    items = [EvalImage(Path(f"{i}.png"), img, character="luca") for i, img in enumerate(images)]
    scores = []
    for reuse in (False, True):
        checks = _backend("traits", folder, "consistency", reuse_vision=reuse)
        checks.setup(traits)
        checks.update(items)
        scores.append(checks.compute().per_image)
    assert scores[1] == pytest.approx(scores[0], abs=1e-5)
    question = "Does this figure show a cat? Please answer yes or no."
    expected_cat = _reference_p_yes(folder, images[1], question)[0]
    assert checks.tally.probs["luca"]["a cat"][1] == pytest.approx(expected_cat, abs=1e-5)


def test_missing_or_unloadable_model_is_a_one_line_error(tmp_path: Path) -> None:
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32)
    for name, axis in (("vqascore", "alignment"), ("traits", "consistency")):
        missing = BackendConfig(name=name, model=str(tmp_path / "missing"))
        with pytest.raises(LoratuneError, match=rf"^evaluation\.backends\.{axis}\.model: model path not found"):
            create_backend(missing, runtime, axis)  # before anything loads
    not_a_model = create_backend(BackendConfig(name="vqascore", model=str(tmp_path)), runtime, "alignment")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: cannot load vision-language"):
        not_a_model.load()


def test_vlm_captioner_decodes_remote_internvl2_greedily_from_forward(internvl2_folder: Path, tiny_models) -> None:
    """Remote-code InternVL2 has no working ``generate``: the captioner appends the argmax of ``forward()``'s last
    logits, step by step — each step's token must be the one VQAScore's own logits pick for that prefix."""
    from loratune.caption.registry import create_captioner
    from loratune.config import load_config

    config = load_config(tiny_models.config, ["caption.backend=vlm", f"caption.model={internvl2_folder}",
                                              "caption.max_new_tokens=4", "evaluation.trust_remote_code=true"])
    captioner = create_captioner(config)
    captioner.load()
    image = _images(1)[0]
    vlm = captioner.vlm
    pixels, enc = vlm.inputs([image], [captioner.options.question])
    ids, mask, steps = enc["input_ids"], enc["attention_mask"], []
    with torch.inference_mode():
        for _ in range(4):
            token = vlm.last_logits(pixels, ids, mask).argmax(-1)
            steps.append(int(token))
            if int(token) == vlm.tokenizer.eos_token_id:
                break
            ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    expected = vlm.tokenizer.decode(steps, skip_special_tokens=True).strip()
    assert captioner.describe([image]) == [expected]
