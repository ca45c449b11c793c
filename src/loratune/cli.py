"""The ``loratune`` command line: a thin typer layer over the Python API.

Heavy imports (torch, diffusers) happen inside each command, so ``loratune --help`` answers at once. A
``LoratuneError`` becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from loratune.commands import register_all
from loratune.errors import LoratuneError

app = typer.Typer(
    name="loratune",
    help="Train → sample → score → search character LoRAs for Stable Diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
register_all(app)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True),
) -> None:
    if version:
        from loratune import __version__

        print(f"loratune {__version__}")
        raise typer.Exit()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    # A ray/tokenizers fork after a tokenizer ran warns loudly; Ray asks for usage stats: neither helps our users.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        # Standalone mode: usage errors print click's message and exit 2, --help exits 0.
        app(args=argv, prog_name="loratune")
    except LoratuneError as err:
        print(f"loratune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("loratune: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
