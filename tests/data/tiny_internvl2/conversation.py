"""The part of InternVL2's conversation.py that VQAScore needs: the "Hermes-2" (ChatML, MPT separator) template."""

import dataclasses


@dataclasses.dataclass
class Conversation:
    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    messages: list[list[str | None]] = dataclasses.field(default_factory=list)
    sep: str = "\n"

    def get_prompt(self) -> str:
        ret = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            ret += role + message + self.sep if message else role
        return ret

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])


conv_templates = {
    "Hermes-2": Conversation(
        name="Hermes-2",
        system_template="<|im_start|>system\n{system_message}",
        system_message="You are a helpful assistant.",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>",
    )
}


def get_conv_template(name: str) -> Conversation:
    return conv_templates[name].copy()
