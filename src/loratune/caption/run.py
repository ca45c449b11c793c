"""``caption_dataset``: write the missing captions of a training set with the configured captioner.

Which images: those whose caption is missing or empty (every one with ``overwrite``; captions that come from a
``metadata.jsonl`` are never rewritten, since a sidecar file would not override them). Every image to caption is
decoded and its trigger found before the model loads, so a corrupt image or an unknown character stops the run with
nothing written. Each caption file is written atomically as soon as its batch is done: an interrupted run keeps what
it wrote, and the next run captions only the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loratune.audit.scan import DatasetEntry, scan_for_audit
from loratune.caption.compose import prose_caption, tag_caption
from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.images import load_image

Action = Literal["written", "overwritten", "kept", "would write"]


@dataclass
class CaptionRow:
    file: str  # relative to the dataset folder
    action: Action
    caption: str | None
    note: str = ""


@dataclass
class CaptionResult:
    dataset: Path
    backend: str
    model: str
    stand_in: bool
    rows: list[CaptionRow] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(r.action in ("written", "overwritten") for r in self.rows)


def trigger_for(entry: DatasetEntry, config: Config, trigger: str | None) -> tuple[str, list[str]]:
    """(trigger words, traits) of a training image: ``trigger`` when given, else its config character's (by kohya
    folder or caption), else its kohya folder's words, else the config's only character."""
    from loratune.audit.run import _character_of

    characters = config.dataset.characters
    name = _character_of(entry, config)
    if name is None and entry.token is None and len(characters) == 1:
        name = next(iter(characters))
    traits = list(characters[name].traits) if name else []
    if trigger:
        return trigger, traits
    if name:
        return characters[name].token, traits
    if entry.token:
        return entry.token, traits
    raise LoratuneError(f"{entry.image}: no trigger words for it: put it in a kohya folder named N_<trigger>, define "
                        "dataset.characters in the config, or pass --trigger")


def caption_dataset(
    dataset: str | Path,
    config: Config,
    overwrite: bool = False,
    trigger: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CaptionResult:
    """Caption the images of ``dataset`` that need it; returns what was written (or, ``dry_run``, would be).

    >>> result = caption_dataset("my-character/train", load_config("loratune.yaml"))  # doctest: +SKIP
    >>> result.written  # doctest: +SKIP
    12
    """
    from loratune.atomic import atomic_write_text
    from loratune.caption.registry import create_captioner

    root = Path(dataset)
    extension = config.dataset.caption_extension
    _, entries = scan_for_audit(root, extension)
    captioner = create_captioner(config)
    result = CaptionResult(root, captioner.spec.name, captioner.model_id, stand_in=False)
    todo: list[tuple[DatasetEntry, CaptionRow, str, list[str]]] = []
    for entry in entries:
        sidecar = entry.image.with_suffix(extension)
        relative = entry.image.relative_to(root).as_posix()
        from_metadata = entry.caption_state == "ok" and not sidecar.is_file()
        if from_metadata:
            result.rows.append(CaptionRow(relative, "kept", entry.caption, "from metadata.jsonl"))
        elif entry.caption_state in ("missing", "empty") or overwrite:
            words, traits = trigger_for(entry, config, trigger)
            action: Action = "would write" if dry_run else ("overwritten" if entry.caption_state == "ok" else "written")
            row = CaptionRow(relative, action, None)
            result.rows.append(row)
            todo.append((entry, row, words, traits))
        else:
            note = "not UTF-8; --overwrite replaces it" if entry.caption_state == "unreadable" else ""
            result.rows.append(CaptionRow(relative, "kept", entry.caption, note))
    if not todo:
        return result
    images = [load_image(entry.image) for entry, *_ in todo]  # a corrupt image stops the run before any write
    captioner.load()
    result.stand_in = captioner.stand_in
    compose = prose_caption if captioner.spec.kind == "prose" else tag_caption
    max_tokens = config.caption.max_tokens
    step = captioner.runtime.batch_size
    for start in range(0, len(todo), step):
        said = captioner.describe(images[start : start + step])
        for (entry, row, words, traits), observed in zip(todo[start : start + step], said):
            row.caption = compose(words, observed, traits, max_tokens)
            if row.caption == words:
                row.note = "the captioner saw nothing but the character"
            if not dry_run:
                atomic_write_text(entry.image.with_suffix(extension), row.caption + "\n")
        if progress is not None:
            progress(min(start + step, len(todo)), len(todo))
    return result
