"""The report's samples section: each trial's sample grids (prompts × seeds per checkpoint, best trial first), its
scores per epoch, and the base model's grid for comparison."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from loratune.report import learning_section
from loratune.report.format import fmt
from loratune.report.rundir import EpochSamples, TrialInfo
from loratune.report.thumbnails import thumbnail_uri


def _href(path: Path, page_dir: Path) -> str:
    """A link from the page to an image file: relative, so a copied run folder keeps working."""
    from urllib.parse import quote

    try:
        return quote(Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix())
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()


def _grid(epoch: EpochSamples, thumb: int, is_best: bool, budget: list[int], page_dir: Path, merged: bool = False,
          label: str | None = None) -> str:
    prompts: list[str] = []
    seeds: list[int | None] = []
    for img in epoch.images:
        if img.prompt not in prompts:
            prompts.append(img.prompt)
        if img.seed not in seeds:
            seeds.append(img.seed)
    cells = {(img.prompt, img.seed): img for img in epoch.images}
    if len(cells) < len(epoch.images):  # no prompts/seeds known (bare image folder): one row per image
        prompts, seeds = [img.path.name for img in epoch.images], [None]
        cells = {(img.path.name, None): img for img in epoch.images}
    head = "<tr><th></th>" + "".join(f"<th class='muted'>seed {fmt(s)}</th>" for s in seeds) + "</tr>"
    rows = []
    for prompt in prompts:
        tds = []
        for seed in seeds:
            img = cells.get((prompt, seed))
            uri = None
            if img is not None and budget[0] > 0:
                uri = thumbnail_uri(img.path, thumb)
            if uri is None:
                tds.append("<td></td>")
                continue
            budget[0] -= 1
            alt = escape(f"{prompt} (seed {seed})")
            tds.append(f'<td><a href="{_href(img.path, page_dir)}" target="_blank" title="open full size">'
                       f'<img class="sample" src="{uri}" alt="{alt}" title="{alt}" loading="eager"></a></td>')
        rows.append(f"<tr><th class='prompt'>{escape(prompt)}</th>{''.join(tds)}</tr>")
    if label is None:
        label = "merged LoRA" if merged else f"epoch {epoch.epoch}" + (" ★ best epoch" if is_best else "")
    cls = "epoch best-epoch" if is_best else "epoch base" if epoch.epoch < 0 else "epoch"
    return (f'<div class="{cls}" data-epoch="{epoch.epoch}"><div class="label">{escape(label)}</div>'
            f'<table class="grid">{head}{"".join(rows)}</table></div>')


def epoch_table(info: TrialInfo) -> str:
    """The trial's scores per epoch (the runner's scores.json ``epochs``), best epoch highlighted."""
    epochs = (info.scores or {}).get("epochs")
    if not isinstance(epochs, list) or len(epochs) < 2:
        return ""
    rows = [e for e in epochs if isinstance(e, dict) and "epoch" in e]
    axes: list[str] = []
    for row in rows:
        axes += [a for a in (row.get("axes") or {}) if a not in axes]
    extra = learning_section.epoch_heads(rows)  # copy rate, CMMD, diagnosis
    head = "".join(f"<th>{escape(h)}</th>" for h in ["epoch", "composite", *axes, *extra])
    best = ' class="best-row"'
    body = "".join(
        f"<tr{best if r['epoch'] == info.best_epoch else ''}><td class='num'>{fmt(r['epoch'])}</td>"
        f"<td class='num'>{fmt(r.get('composite'))}</td>"
        + "".join(f"<td class='num'>{fmt((r.get('axes') or {}).get(a), 3)}</td>" for a in axes)
        + learning_section.epoch_cells(r, extra) + "</tr>"
        for r in rows)
    return f"<table class='epoch-scores' style='width:auto;margin-top:8px'><thead><tr>{head}</tr></thead>{body}</table>"


def samples_section(ranked: list[TrialInfo], thumb: int, all_epochs_for: int, max_images: int, page_dir: Path,
             base: EpochSamples | None = None) -> str:
    budget = [max_images]
    blocks = []
    shown_full = 0
    base_label = "base model, no LoRA"
    intro = ""
    if base is not None:
        intro = (f'<div class="epochs" id="base-samples">{_grid(base, thumb, False, budget, page_dir, label=base_label)}'
                 "</div>")
    for rank, info in enumerate(ranked, 1):
        if not info.epochs:
            continue
        best = info.best_epoch
        epochs = info.epochs
        skipped = 0
        if shown_full >= all_epochs_for:
            # Lower-ranked trials show only their best epoch, which keeps a 50-trial report a few MB.
            picked = [e for e in epochs if e.epoch == best] or epochs[-1:]
            skipped = len(epochs) - len(picked)
            epochs = picked
        shown_full += 1
        merged = info.phase == "ensemble"
        grids = "".join(_grid(e, thumb, e.epoch == best and not merged, budget, page_dir, merged) for e in epochs)
        if base is not None and rank == 1:  # the best trial beside the base: what the LoRA changed
            grids = _grid(base, thumb, False, budget, page_dir, label=base_label) + grids
        more = f'<p class="muted">{skipped} other epoch(s) not shown.</p>' if skipped else ""
        composite = info.composite
        # Named as in the trials table: its rank, then the trial's own number.
        title = (f"rank {rank} · trial #{info.number} · {info.phase} · {info.trial.state.name.lower()} · composite "
                 f"{fmt(composite)} · " + ("merged LoRA" if merged else f"best epoch {fmt(best)}"))
        opened = " open" if rank <= 3 else ""
        blocks.append(f'<details class="trial" id="trial-{info.number}"{opened}><summary>{escape(title)}</summary>'
                      f'<div class="epochs">{grids}</div>{more}{epoch_table(info)}'
                      f'{learning_section.copy_pairs(info)}</details>')
    if not blocks:
        body = '<p class="muted">No sample images found under trials/NNNN/samples/.</p>'
    else:
        body = "".join(blocks)
    if budget[0] <= 0:
        body += f'<p class="muted">Image budget of {max_images} thumbnails reached; later images are left out.</p>'
    base_note = (" The base model without any LoRA, same prompts and seeds, comes first for comparison."
                 if base is not None else "")
    return (f'<section class="card" id="samples"><h2>Samples</h2><p class="muted">Prompts × seeds per checkpoint, '
            f"best trial first; the best epoch is outlined. Click a thumbnail for the full-size image.{base_note}</p>"
            f"{intro}{body}</section>")
