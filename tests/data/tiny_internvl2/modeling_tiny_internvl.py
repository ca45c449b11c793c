"""A tiny InternVLChatModel whose ``forward`` follows upstream's (OpenGVLab/InternVL2-*): image-context token
embeddings are replaced by the vision features of every tile, then the language model runs on the embeddings."""

from torch import nn
from transformers import PreTrainedModel, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_internvl import InternVLChatConfig
from .conversation import get_conv_template


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.num_image_token = int((config.force_image_size // config.patch_size) ** 2 * config.downsample_ratio**2)
        self.template = config.template
        self.system_message = get_conv_template(self.template).system_message
        stride = int(config.patch_size / config.downsample_ratio)  # pixel shuffle's 2x2 merge as one strided conv
        self.vision = nn.Conv2d(3, config.vision_hidden, stride, stride=stride)
        self.mlp1 = nn.Linear(config.vision_hidden, config.llm_config.hidden_size)
        self.language_model = Qwen2ForCausalLM(config.llm_config)
        self.img_context_token_id = None
        self.post_init()

    def extract_feature(self, pixel_values):
        return self.mlp1(self.vision(pixel_values).flatten(2).transpose(1, 2))

    def forward(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        image_flags=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        image_flags = image_flags.squeeze(-1)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)[image_flags == 1]
        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C)
        input_embeds = input_embeds.reshape(B, N, C)
        outputs = self.language_model(
            inputs_embeds=input_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
        )
        return CausalLMOutputWithPast(logits=outputs.logits)
