"""A worker process of ``loratune optimize --workers N``: joins the run's existing study and works through it.

``python -m loratune.search.worker RUN [--index I] [--backend module:factory]``. The study must already exist
(``run_optimize`` creates it before starting workers).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loratune import chatter
from loratune.errors import LoratuneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loratune-worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from loratune.config import load_config
    from loratune.runfolder import RunFolder
    from loratune.search.local import Worker
    from loratune.search.runner import quiet_optuna
    from loratune.search.trials import load_backend

    quiet_optuna()
    if not chatter.verbose():
        chatter.quiet_libraries()
    try:
        config = load_config(RunFolder(args.run_dir).config)
        Worker(args.run_dir.resolve(), config, load_backend(args.backend), index=args.index).run()
    except LoratuneError as err:
        print(f"loratune worker {args.index}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
