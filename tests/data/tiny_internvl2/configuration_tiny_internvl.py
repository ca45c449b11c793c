"""A tiny InternVLChatConfig: upstream's fields that the VQAScore loader reads, and a Qwen2 language model."""

from transformers import PretrainedConfig, Qwen2Config


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(
        self,
        llm_config=None,
        vision_hidden=16,
        force_image_size=448,
        patch_size=14,
        downsample_ratio=0.5,
        template="Hermes-2",
        max_dynamic_patch=6,
        use_thumbnail=True,
        dynamic_image_size=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.llm_config = llm_config if isinstance(llm_config, Qwen2Config) else Qwen2Config(**(llm_config or {}))
        self.vision_hidden = vision_hidden
        self.force_image_size = force_image_size
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.max_dynamic_patch = max_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.dynamic_image_size = dynamic_image_size

    def to_dict(self):
        output = super().to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
