"""Image decoding that every part shares: one place that turns any sane file into an RGB PIL image.

Valid-but-odd files are converted correctly (EXIF rotation, alpha composited on white, palette with transparency,
16-bit grayscale rescaled rather than clipped, CMYK JPEG). Broken files raise ``LoratuneError`` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from loratune.errors import LoratuneError, first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_MAX_PIXELS = 16384 * 16384


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path, recursive: bool = False, what: str = "image folder") -> list[Path]:
    """Sorted image files in ``folder``; an empty or missing folder is a user error."""
    folder = Path(folder)
    if not folder.exists():
        raise LoratuneError(f"{what} not found: {folder}")
    if folder.is_file():
        return [folder] if folder.suffix.lower() in IMAGE_EXTENSIONS else _no_images(folder, what)
    found = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if is_image_file(p))
    if not found:
        _no_images(folder, what)
    return found


def _no_images(folder: Path, what: str) -> list[Path]:
    raise LoratuneError(f"{what} has no images ({', '.join(IMAGE_EXTENSIONS)}): {folder}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB, honouring EXIF orientation and transparency."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (PIL already undoes Adobe's inverted CMYK JPEGs), YCbCr, 1-bit, L: PIL's conversion is right.
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image or raise one clear ``LoratuneError``."""
    path = Path(path)
    if not path.is_file():
        raise LoratuneError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise LoratuneError(f"{path}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > _MAX_PIXELS:
                    raise LoratuneError(f"{path}: image too large ({img.width}x{img.height})")
                img.load()
                return to_rgb(img)
    except LoratuneError:
        raise
    except UnidentifiedImageError:
        raise LoratuneError(f"{path}: not an image or an unsupported format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        reason = first_line(err)
        if "truncated" in reason.lower() or isinstance(err, (OSError, SyntaxError)):
            raise LoratuneError(f"{path}: corrupt or truncated image ({reason})") from None
        raise LoratuneError(f"{path}: cannot decode image ({reason})") from None
