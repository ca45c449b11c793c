"""Pre-train the world's base model (see ``loratune.world.pretrain``); CPU-only, deterministic, ~30 min on 2 cores.

    OMP_WAIT_POLICY=PASSIVE python scripts/pretrain_world.py OUT_DIR [SETTING=VALUE ...] [--install]

SETTING=VALUE overrides a field of ``Settings`` (e.g. ``unet_steps=3000``); a VAE trained in OUT_DIR with the same
VAE settings is reused. ``--install`` then copies it into ``src/loratune/world/weights`` with its sha256 manifest and the oracle's report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from loratune.world.pretrain import Settings, finalize, pretrain

if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    out = Path(sys.argv[1])
    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:] if "=" in arg)
    fields = Settings.__dataclass_fields__
    settings = Settings(**{k: type(getattr(Settings(), k))(v) for k, v in overrides.items() if k in fields})
    if not (out / "training.json").is_file() or overrides:
        pretrain(out, settings, log=lambda entry: print(json.dumps(entry), flush=True))
    if "--install" in sys.argv[2:]:
        weights = Path(__file__).resolve().parents[1] / "src" / "loratune" / "world" / "weights"
        info = finalize(out, weights)
        print(json.dumps(info["oracle"], indent=1))
