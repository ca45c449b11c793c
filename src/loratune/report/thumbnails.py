"""Sample images as small inline thumbnails (``data:`` URIs), so the report is one file that opens offline."""

from __future__ import annotations

import base64
import io
from pathlib import Path


def thumbnail_uri(path: Path, size: int = 160, quality: int = 80) -> str | None:
    """A WebP thumbnail of ``path`` (longest side ``size`` px) as a data URI; None when the file cannot be read.

    WebP keeps a 160-px sample near 5 kB where PNG needs ~40 kB; every browser that runs plotly.js decodes it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            thumb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    # Smaller samples (the demo renders 64 px) stay as they are; the page's CSS scales every thumbnail to one width.
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
