"""A stand-in for kohya's train_network.py: writes per-epoch kohya LoRA files, light imports only.

Usage: fake_kohya_trainer.py --template T --output_dir D --output_name N --max_train_epochs E --network_dim R
[--learning_rate LR] [--hang] — each epoch writes template tensors scaled by epoch; epoch 1 carries ss_epoch
metadata, later epochs only their NAME-00000E name. --hang starts a child process and then sleeps forever.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file, save_file

parser = argparse.ArgumentParser()
parser.add_argument("--template", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--output_name", default="last")
parser.add_argument("--max_train_epochs", type=int, default=2)
parser.add_argument("--network_dim", type=int, required=True)
parser.add_argument("--learning_rate", type=float, default=1e-4)
parser.add_argument("--hang", action="store_true")
parser.add_argument("--child_pid_file")
args = parser.parse_args()

if args.hang:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(args.child_pid_file).write_text(str(child.pid))
    time.sleep(600)

template = load_file(args.template)
out = Path(args.output_dir)
out.mkdir(parents=True, exist_ok=True)
for epoch in range(1, args.max_train_epochs + 1):
    tensors = {k: (v * epoch if k.endswith("lora_up.weight") else v) for k, v in template.items()}
    meta = {"ss_epoch": str(epoch), "ss_network_dim": str(args.network_dim)} if epoch == 1 else {}
    save_file(tensors, str(out / f"{args.output_name}-{epoch:06d}.safetensors"), metadata=meta)
    print(f"epoch {epoch} lr {args.learning_rate}", flush=True)
    time.sleep(0.3)
