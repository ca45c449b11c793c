"""The report's dataset-audit section: ``audit.json`` as readable tables with what each number means, the flagged
images as thumbnails, and the rest of the file collapsed below."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import RunData
from loratune.report.thumbnails import thumbnail_uri


def _plain(value: Any) -> bool:
    """A value that fits one table cell: a scalar or a list of scalars."""
    return not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value))


def _render_value(value: Any, depth: int = 0) -> str:
    """Any JSON as compact HTML: plain entries of a mapping in one key/value table, nested ones as sub-sections."""
    heading = f"h{min(3 + depth, 6)}"
    if isinstance(value, dict):
        plain = {k: v for k, v in value.items() if _plain(v)}
        html = ""
        if plain:
            html = "<table style='width:auto'>" + "".join(
                f"<tr><td>{escape(str(k))}</td><td>{_cell(v)}</td></tr>" for k, v in plain.items()) + "</table>"
        return html + "".join(f"<{heading}>{escape(str(k))}</{heading}>{_render_value(v, depth + 1)}"
                              for k, v in value.items() if k not in plain)
    if isinstance(value, list):
        if not value:
            return "<span class='muted'>none</span>"
        if all(isinstance(v, dict) for v in value):
            cols: list[str] = []
            for row in value:
                cols += [k for k in row if k not in cols and _plain(row[k])]
            cols = cols[:8]
            rows = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in value[:25])
            more = f"<p class='muted'>… {len(value) - 25} more</p>" if len(value) > 25 else ""
            return (f"<table><thead><tr>{''.join(f'<th>{escape(c)}</th>' for c in cols)}</tr></thead>"
                    f"<tbody>{rows}</tbody></table>{more}")
        if all(isinstance(v, str) for v in value):
            return "<ul>" + "".join(f"<li>{escape(v)}</li>" for v in value[:50]) + "</ul>"
        return escape(", ".join(str(v) for v in value[:50])) + (" …" if len(value) > 50 else "")
    return fmt(value)


def _cell(value: Any) -> str:
    """A table cell; a list of plain values (an image's problems, a duplicate pair) reads as one line."""
    if isinstance(value, list):
        return escape("; ".join(str(v) for v in value))
    return fmt(value)


# What each audit.json summary number means, for the reader who has not read the audit's code.
_AUDIT_SUMMARY = {
    "flagged_images": "images with at least one problem (listed below with the problems)",
    "caption_problems": "images whose caption is missing, empty or unreadable",
    "long_captions": "captions longer than the text encoder reads (77 tokens); the end is cut off in training",
    "near_duplicate_pairs": "pairs of images that look almost the same; duplicates over-weight one pose or shot",
    "unreadable_images": "files that could not be decoded as images; training would fail on them",
    "face_rate": "share of images where a frontal face was found (dlib)",
    "alignment_mean": "mean CLIP agreement between each image and its caption (higher: captions describe the image)",
    "quality_median": "median technical quality score of the images (blur, noise, compression)",
}
_AUDIT_CHARACTER = {
    "images": "training images of this character",
    "flagged": "of which flagged",
    "reference_similarity": "mean identity similarity to the character's reference images (higher: on model)",
}
# Shown in their own tables above; the bulky per-image list and the run options stay in audit.json.
_AUDIT_SHOWN = {"dataset", "layout", "images", "stand_in", "stand_in_backends", "warnings", "summary", "flagged",
                "characters", "per_image", "options", "backends"}


def _explained(rows: dict[str, Any], explanations: dict[str, str]) -> str:
    body = "".join(f"<tr><td>{escape(str(k).replace('_', ' '))}</td><td class='num'>{fmt(v, 3)}</td>"
                   f"<td class='muted'>{escape(explanations.get(k, ''))}</td></tr>" for k, v in rows.items())
    return f"<table class='explained'><thead><tr><th>check</th><th>value</th><th>what it means</th></tr></thead>{body}</table>"


def _flagged_with_thumbnails(audit: dict[str, Any]) -> str:
    """The flagged images as a table with each image beside its problems."""
    root = Path(str(audit.get("dataset", "")))
    rows = []
    for item in audit.get("flagged", [])[:50]:
        if not isinstance(item, dict):
            continue
        file = str(item.get("file", ""))
        uri = thumbnail_uri(root / file, 64) if file and (root / file).is_file() else None
        img = f'<img class="audit-thumb" src="{uri}" alt="{escape(file)}">' if uri else ""
        problems = item.get("problems", item.get("problem", ""))
        rows.append(f"<tr><td>{img}</td><td>{escape(file)}</td><td>{_cell(problems)}</td></tr>")
    if not rows:
        return "<p class='muted'>Nothing flagged.</p>"
    return ("<table><thead><tr><th></th><th>file</th><th>problems</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def audit_section(run: RunData) -> str:
    if run.audit is None:
        body = ('<p class="muted">No <code>audit.json</code> in this run. Run <code>loratune audit DATASET</code> '
                "to check captions, near-duplicates and image quality before training.</p>")
        return f'<section class="card" id="audit"><h2>Dataset audit</h2>{body}</section>'
    audit = run.audit
    parts = [(f"<p>Dataset <code>{escape(str(audit.get('dataset', '?')))}</code> · {escape(str(audit.get('layout', '?')))}"
             f" layout · {fmt(audit.get('images'))} images. The full record, per image, is <code>audit.json</code>.</p>")]
    warnings = audit.get("warnings")
    if isinstance(warnings, list) and warnings:
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul>")
    summary = audit.get("summary")
    if isinstance(summary, dict):
        shown = {k: v for k, v in summary.items() if v is not None}
        parts.append("<h3>Summary</h3>" + _explained(shown, _AUDIT_SUMMARY))
    parts.append("<h3>Flagged images</h3>" + _flagged_with_thumbnails(audit))
    characters = audit.get("characters")
    if isinstance(characters, dict) and characters:
        head = "".join(f"<th title='{escape(_AUDIT_CHARACTER.get(c, ''))}'>{escape(c.replace('_', ' '))}</th>"
                       for c in _AUDIT_CHARACTER)
        rows = "".join(f"<tr><td>{escape(name or '(no character)')}</td>"
                       + "".join(f"<td class='num'>{fmt(info.get(c), 3)}</td>" for c in _AUDIT_CHARACTER) + "</tr>"
                       for name, info in characters.items() if isinstance(info, dict))
        legend = "; ".join(f"{c.replace('_', ' ')}: {t}" for c, t in _AUDIT_CHARACTER.items())
        parts.append(f"<h3>Per character</h3><table style='width:auto'><thead><tr><th>character</th>{head}</tr></thead>"
                     f"{rows}</table><p class='muted'>{escape(legend)}.</p>")
    other = {k: v for k, v in audit.items() if k not in _AUDIT_SHOWN and v not in (None, [], {})}
    if other:
        parts.append("<details><summary>Other audit details</summary>" + _render_value(other, 1) + "</details>")
    return f'<section class="card" id="audit"><h2>Dataset audit</h2>{"".join(parts)}</section>'
