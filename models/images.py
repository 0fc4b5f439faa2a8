"""Checking and decoding image files. PIL and numpy only (no torch), so import stays cheap."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A product photo has a few megapixels; more than this is a decompression bomb or a mistake.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 100 * 1024 * 1024
# Strict decoding: a truncated file is an error, never half an image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def read_image_bytes(path: Path | str) -> bytes:
    """The file's bytes, refusing empty and oversized files before reading them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageError("empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"too large ({size / 2**20:.0f} MiB > {MAX_FILE_BYTES / 2**20:.0f} MiB)")
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def inspect_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check encoded image bytes: the header gives size and mode, then every pixel is decoded,
    which is what catches truncated files."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"decompression bomb: {w}x{h} pixels > limit {max_pixels}")
                if w < 1 or h < 1:
                    raise ImageError(f"degenerate size {w}x{h}")
                info = ImageInfo(w, h, im.mode, im.format or "")
                im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "premature" in msg.lower():
            raise ImageError(f"truncated image: {msg}") from None
        raise ImageError(f"cannot decode: {msg}") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
    return info


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB for the network, whatever the file held: EXIF rotation applied, alpha composited on
    white (product shots are cut out on white), 16-bit scaled, CMYK and palettes converted."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 65535.0 if hi > 255 else 255.0
        im = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def load_rgb(path: Path | str, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an RGB image, raising `ImageError` with the reason if it cannot."""
    return _decode(path, max_pixels, None)


def load_thumbnail(path: Path | str, side: int, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB copy of ``path`` that fits in ``side`` x ``side`` pixels, decoded at reduced size where
    the format allows (JPEG's DCT scaling: a page of thumbnails costs a fraction of full decodes).
    Raises `ImageError` with the reason when the file cannot be read."""
    out = _decode(path, max_pixels, side)
    out.thumbnail((side, side), Image.Resampling.BILINEAR)
    return out


def _decode(path: Path | str, max_pixels: int, draft: int | None) -> Image.Image:
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > max_pixels:
                    raise ImageError(f"decompression bomb: {im.size[0]}x{im.size[1]} pixels")
                if draft is not None:
                    im.draft("RGB", (draft, draft))
                im.load()
                return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
