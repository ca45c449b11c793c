"""Prompts from a kohya ``--sample_prompts`` text file (read into ``sampling.prompts`` by ``sampling.prompts_file``)."""

from __future__ import annotations

from typing import Any

from loratune.errors import LoratuneError

# kohya's sample-prompt options (sd-scripts ``library/train_util.py`` ``line_to_prompt_dict``): the option letter
# and the Prompt field it sets.
_KOHYA_PROMPT_OPTIONS = {"n": "negative_prompt", "s": "steps", "l": "cfg", "scale": "cfg", "d": "seed", "w": "width",
                         "h": "height"}


def parse_kohya_prompts(text: str, source: str) -> list[dict[str, Any]]:
    """Prompts from a kohya ``--sample_prompts`` text file: one prompt a line, options after `` --``
    (``--n`` negative prompt, ``--s`` steps, ``--l`` CFG scale, ``--d`` seed, ``--w``/``--h`` size); blank lines and
    ``#`` comments skipped. ``--ss`` (kohya's sampler) is not per prompt here: ``sampling.scheduler`` applies.

    >>> parse_kohya_prompts("luca boy, beach --n lowres --s 20 --l 6.5 --d 42 --w 512 --h 768", "p.txt")
    [{'text': 'luca boy, beach', 'negative_prompt': 'lowres', 'steps': 20, 'cfg': 6.5, 'seed': 42, 'width': 512, \
'height': 768}]
    """
    prompts: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text_part, *options = line.split(" --")
        prompt: dict[str, Any] = {"text": text_part.strip()}
        for option in options:
            key, _, value = option.strip().partition(" ")
            if key == "ss":
                continue
            field = _KOHYA_PROMPT_OPTIONS.get(key)
            if field is None:
                known = ", ".join(f"--{k}" for k in _KOHYA_PROMPT_OPTIONS)
                raise LoratuneError(f"{source}:{n}: unknown option --{key} (loratune reads {known} and ignores --ss)")
            value = value.strip()
            try:
                prompt[field] = (value if field == "negative_prompt" else float(value) if field == "cfg"
                                 else int(value))
            except ValueError:
                raise LoratuneError(f"{source}:{n}: --{key} needs a number (got {value!r})") from None
        if not prompt["text"]:
            raise LoratuneError(f"{source}:{n}: a line with options but no prompt")
        prompts.append(prompt)
    if not prompts:
        raise LoratuneError(f"{source}: no prompts in this file")
    return prompts
