"""The libraries' own chatter (progress bars, info lines, offline notices): off by default, on with ``loratune -v``.

One place for every command and the demo. Library loggers are quietened two ways: by name for those that set their own
level, and through the root logger for everything else, so a library that starts logging at WARNING on import (the
``kernels`` package that transformers 5.25 pulls in says "Skipping publisher trust check … offline mode") stays quiet
without a release of ours. loratune's own logger keeps WARNING.
"""

from __future__ import annotations

import logging
import os
import warnings

# The libraries' own switches for their progress bars and info lines. Environment variables (rather than calls) so
# search workers in other processes are quiet too. TQDM_DISABLE covers diffusers' "Loading pipeline components" bar,
# which has no switch of its own but reads tqdm's.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
VERBOSE_ENV = "LORATUNE_VERBOSE"
# Loggers that set a level of their own (so the root's level does not reach them) or that we know speak on load.
QUIET_LOGGERS = ("bitsandbytes", "timm", "open_clip", "pyiqa", "accelerate", "peft", "kernels", "diffusers",
                 "transformers", "huggingface_hub", "onnxruntime", "insightface", "optuna")


def verbose() -> bool:
    """True when the user asked for the libraries' own output (``loratune -v``), in this process or a parent."""
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries(*, all_warnings: bool = False) -> None:
    """Silence library chatter in this process (and, through the environment, in workers it starts).

    ``all_warnings`` also drops Python warnings raised from loratune's own modules (the demo, whose live display
    they would tear up); otherwise every warning a library raises from its own code is dropped (torchvision's
    "'pretrained' is deprecated" when lpips builds its backbone, say), and FutureWarnings wherever they point.

    >>> import logging
    >>> quiet_libraries()
    >>> logging.getLogger("kernels._internals.hf_hub").isEnabledFor(logging.WARNING)
    False
    >>> logging.getLogger("loratune.train").isEnabledFor(logging.WARNING)
    True
    """
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger().setLevel(logging.ERROR)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("loratune").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module=r"(?!loratune\b)")  # a library's own modules: not loratune's
    if all_warnings:
        warnings.filterwarnings("ignore")
