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
FITS = ("crop", "pad")  # how a picture that is not square becomes a square one (see fit_square)
BORDER_TOLERANCE = 24  # a border pixel within this of the median colour, in every channel, counts as background
BORDER_SHARE = 0.5     # the median is the padding colour when at least this share of the border is background


class Skip(Exception):
    """A record that cannot be used; str(skip) is the reason it is counted under."""


def decode_image(data: bytes, size: int, max_pixels: int | None = None,
                 fit: str = "crop") -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, made square by `fit` (see fit_square), and
    the original (width, height). Raises Skip for empty files, non-images, truncated or corrupt data,
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
    except MemoryError:  # the machine is out of memory, not the picture at fault: the run must hear of it
        raise
    except Exception:  # the bytes are in memory, so this is the data: Pillow's decoders raise OSError,
        raise Skip("corrupt or truncated image") from None  # SyntaxError, ValueError, struct.error ... for damage
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return fit_square(image, size, fit), image.size


def fit_square(image: Image.Image, size: int, fit: str = "crop") -> np.ndarray:
    """A picture of any mode and shape -> (size, size, 3) uint8 RGB.

    crop: the largest centred square is cut out and resized (a wide banner loses its ends).
    pad:  the longer side is scaled to `size`, keeping the aspect ratio, and the picture is centred on
          a square of its background colour. The background colour is:
          - for a picture with transparent pixels (RGBA, LA, a palette with a transparent entry): white,
            the colour its transparent pixels are composited onto, so they and the padding are one colour;
          - for an opaque picture: the median colour of the edges the padding touches (top and bottom
            rows of a wide picture, left and right columns of a tall one), when at least half of those
            pixels are within 24 levels of it in every channel (a flat background, JPEG noise allowed);
          - otherwise (a photo, a busy border): white if those edges are light on average, else black.
    A square picture gives exactly the same pixels with either fit."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    w, h = image.size
    if fit == "crop":
        return resize_square(to_rgb(image), size)
    colour = BACKGROUND if has_transparency(image) else None
    image = to_rgb(image)
    colour = colour or border_colour(image)
    longer = max(w, h)
    width, height = max(1, round(w * size / longer)), max(1, round(h * size / longer))
    image = image.resize((width, height), Image.LANCZOS if longer > size else Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(image, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def has_transparency(image: Image.Image) -> bool:
    """Whether any pixel is (partly) transparent, in the modes whose alpha to_rgb composites."""
    if image.mode in ("P", "RGBA", "LA", "PA", "La", "RGBa"):
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The padding colour of an opaque RGB picture that is not square (the rule in fit_square)."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.width > image.height:  # padded above and below
        border = np.concatenate([pixels[0], pixels[-1]])
    else:                           # padded left and right
        border = np.concatenate([pixels[:, 0], pixels[:, -1]])
    median = np.median(border, axis=0)
    if (np.abs(border - median) <= BORDER_TOLERANCE).all(axis=1).mean() >= BORDER_SHARE:
        return tuple(int(c) for c in np.round(median))
    luminance = border.mean(axis=0) @ np.array([0.299, 0.587, 0.114])
    return (255, 255, 255) if luminance >= 128 else (0, 0, 0)


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
