"""``loratune dashboard``: optuna-dashboard on a run's study, served on the loopback interface only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run directory written by loratune optimize")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="port on 127.0.0.1")] = 8080,
) -> None:
    """Serve optuna-dashboard for RUN's study on http://127.0.0.1:PORT (loopback only; use an SSH tunnel remotely)."""
    from loratune.config import load_config
    from loratune.errors import LoratuneError, first_line
    from loratune.runfolder import CONFIG_FILE, RunFolder
    from loratune.search.storage import storage_url

    config_file = RunFolder(run).config
    if not config_file.is_file():
        raise LoratuneError(f"{run}: no {CONFIG_FILE}; not a loratune run directory")
    config = load_config(config_file)
    url = storage_url(run, config.search)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise LoratuneError(f"{run}: no study database yet ({url})")
    from optuna_dashboard import run_server

    from loratune.search.storage import open_storage, study_exists

    storage = open_storage(run, config.search, heartbeat=False)  # a corrupt database: one line, not a traceback
    try:
        exists = study_exists(storage)
    except Exception as err:  # noqa: BLE001 - sqlalchemy errors reading a file that is not a study database
        raise LoratuneError(f"{run}: cannot read the study ({first_line(err)})") from None
    if not exists:
        raise LoratuneError(f"{run}: the study database holds no loratune study")
    # The dashboard can edit the study (notes, trial states): never expose it beyond this machine.
    print(f"optuna-dashboard for {run} on http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    run_server(storage, host="127.0.0.1", port=port)
