"""The run's study: created by the first worker to start, joined by every other.

With a database server (``search.storage``) every machine runs the same ``loratune optimize CONFIG --run RUN``. The
first to take the study lock creates the study (and, on a fresh database, its tables), enqueues the baseline and
writes RUN/config.yaml; the others, started at the same instant or hours later, find it and join. The study keeps the
config it runs (user attr ``config``): a worker started with another config is refused, so no machine searches a
different space under the same study. SQLite in the run folder belongs to one machine: a second start there is refused
as before (``--resume`` continues a run, ``--workers N`` adds workers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import yaml

from loratune.atomic import atomic_write_text
from loratune.config import Config, dump_config
from loratune.errors import LoratuneError
from loratune.runfolder import STUDY_NAME, RunFolder
from loratune.search.claims import held
from loratune.search.storage import directions, open_storage, study_exists


def is_server(search_storage: str | None) -> bool:
    """Whether the study lives in a database server (shared by machines), not in a SQLite file."""
    return bool(search_storage) and not str(search_storage).startswith("sqlite")


def create_or_join(run: RunFolder, config: Config, say: Callable[[str], None] | None = None,
                   sources: Sequence[Mapping[str, Any]] = ()) -> bool:
    """Create the run's study, or join the one a worker started with the same config; True when it joined. A new
    study takes in its warm-start ``sources`` (``search.warm_start``'s runs, ``warm.read_sources``: their best
    settings enqueued before the baseline)."""
    server = is_server(config.search.storage)
    if not server and run.config.exists():
        raise LoratuneError(f"{run.root}: already holds a run; pass --resume to continue it (or choose another --run)")
    with held(run, config.search.storage):  # a fresh database's tables and the study are made once
        storage = open_storage(run.root, config.search)
        if study_exists(storage):
            if not server:
                raise LoratuneError(f"search.storage: a study named {STUDY_NAME!r} already exists there; use --resume")
            check_same_config(optuna.load_study(study_name=STUDY_NAME, storage=storage), config)
            return True
        if run.config.exists():
            raise LoratuneError(f"{run.root}: already holds a run whose study is not in {config.search.storage}; "
                                "pass --resume with its own storage (or choose another --run)")
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=directions(config.search))
        study.set_user_attr("directions", config.search.directions or {"composite": "maximize"})
        record_config(study, config)
        if sources:
            from loratune.search.warm import seed_study

            seed_study(study, config, sources, say)
        if config.search.phases.baseline:
            from loratune.search.local import enqueue_baseline

            enqueue_baseline(study, config)
        atomic_write_text(run.config, dump_config(config))
    return False


def record_config(study: optuna.Study, config: Config) -> None:
    """The config the study runs (RUN/config.yaml's text), for workers that join it later."""
    study.set_user_attr("config", dump_config(config))


def check_same_config(study: optuna.Study, config: Config) -> None:
    stored = study.user_attrs.get("config")
    if stored is None or stored == dump_config(config):
        return  # a study made before the config was recorded: RUN/config.yaml is the reference
    key = first_difference(yaml.safe_load(stored), yaml.safe_load(dump_config(config))) or "?"
    raise LoratuneError(f"search.storage: the study there runs another config ({key} differs); start this worker "
                        "with the run's config, or give another search.storage for a new study")


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two nested mappings, or None when they are equal.

    >>> first_difference({"train": {"rank": 8, "lr": 1}}, {"train": {"rank": 16, "lr": 1}})
    'train.rank'
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")
