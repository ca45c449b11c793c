"""The ``loratune`` command line: a thin typer layer over the Python API.

Heavy imports (torch, diffusers) happen inside each command, so ``loratune --help`` answers at once. A
``LoratuneError`` becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from loratune import chatter
from loratune.commands import register_all
from loratune.errors import LoratuneError

# What the Makefile exports, set for runs outside it too; read when torch/tokenizers/Ray load, so set before any
# command imports them. A value the user set wins.
RUNTIME_ENV = {
    # torch's OpenMP threads spin while waiting: on a busy CPU a tiny training run went from 174 s to over 10 min.
    "OMP_WAIT_POLICY": "PASSIVE",
    # A fork after a tokenizer ran warns loudly; Ray asks for usage stats: neither helps our users.
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}
app = typer.Typer(
    name="loratune",
    help="Train → sample → score → search character LoRAs for Stable Diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: flags without type placeholders, paragraphs rewrapped to the terminal, no rich import.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
register_all(app)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the libraries' own progress bars, info lines and warnings."
    ),
) -> None:
    if verbose:
        os.environ[chatter.VERBOSE_ENV] = "1"
    elif not chatter.verbose():
        chatter.quiet_libraries()
    if version:
        from loratune import __version__

        print(f"loratune {__version__}")
        raise typer.Exit()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    for name, value in RUNTIME_ENV.items():
        os.environ.setdefault(name, value)
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
