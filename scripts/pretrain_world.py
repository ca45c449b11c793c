"""Pre-train the world's base model (see ``loratune.world.pretrain``); CPU-only, deterministic, ~30 min on 2 cores.

    OMP_WAIT_POLICY=PASSIVE python scripts/pretrain_world.py OUT_DIR [--install]

``--install`` then copies it into ``src/loratune/world/weights`` with its sha256 manifest and the oracle's report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from loratune.world.pretrain import finalize, pretrain

if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    out = Path(sys.argv[1])
    if not (out / "training.json").is_file():
        pretrain(out, log=lambda entry: print(json.dumps(entry), flush=True))
    if "--install" in sys.argv[2:]:
        weights = Path(__file__).resolve().parents[1] / "src" / "loratune" / "world" / "weights"
        info = finalize(out, weights)
        print(json.dumps(info["oracle"], indent=1))
