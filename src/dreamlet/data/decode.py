"""Turning what users have into clean training pairs: one image decoder and one caption cleaner.

Every problem becomes a `Skip` with a short reason; the cache counts reasons, and `dreamlet data
inspect` prints them. Nothing here lets a bad file stop a run.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000  # a picture larger than this is treated as a decompression bomb, not decoded
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


class Skip(Exception):
    """A record that cannot be used; str(skip) is the reason it is counted under."""


def decode_image(data: bytes, size: int, max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, centre-cropped and resized, and the
    original (width, height). Raises Skip for empty files, non-images, truncated or corrupt data,
    decompression bombs."""
    if not data:
        raise Skip("empty file")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels or MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Skip("decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise Skip("not an image") from None
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError ... for truncated or corrupt data
        raise Skip("corrupt or truncated image") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    original = image.size
    return resize_square(to_rgb(image), size), original


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16-bit and float greys rescaled, CMYK converted, palette and
    alpha composited onto the background."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255, 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P" or image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, BACKGROUND)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.LANCZOS if side > size else Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def clean_caption(raw: str | bytes | None) -> str:
    """A caption as text with its whitespace collapsed; Skip for a missing, empty or non-UTF-8 one."""
    if raw is None:
        raise Skip("no caption")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Skip("caption not UTF-8") from None
    if not isinstance(raw, str):
        raise Skip("caption not text")
    text = " ".join(raw.replace("\ufeff", "").split())
    if not text:
        raise Skip("empty caption")
    return text
