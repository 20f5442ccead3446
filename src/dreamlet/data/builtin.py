"""The built-in real sets, made offline from installed packages: emoji (Debian's Noto Color Emoji
font, named by the `emoji` package) and handwritten digits (scikit-learn's bundled 8 x 8 set).
Both are readers like those in formats.py and go through the same cache."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import UserError
from .cache import Record, in_heldout
from .decode import BACKGROUND, resize_square

EMOJI_FONTS = ["/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", "/usr/share/fonts/noto/NotoColorEmoji.ttf",
               "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf", "/System/Library/Fonts/Apple Color Emoji.ttc"]
EMOJI_HELDOUT = 0.05  # share of emoji (chosen by name, fixed) kept out of training for evaluation
DIGITS_HELDOUT = 0.1
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def emoji_font() -> Path:
    candidates = [os.environ["DREAMLET_EMOJI_FONT"]] if os.environ.get("DREAMLET_EMOJI_FONT") else EMOJI_FONTS
    for path in map(Path, candidates):
        if path.is_file():
            return path
    raise UserError("the emoji set needs the Noto Color Emoji font: `sudo apt-get install fonts-noto-color-emoji` "
                    "(or set DREAMLET_EMOJI_FONT to a NotoColorEmoji.ttf)")


def _with_article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou8' else 'a'} {name}"


def emoji_captions(name: str, aliases: list[str]) -> list[str]:
    """The emoji's Unicode name in a few phrasings, plus its aliases ("thumbs up", "+1")."""
    out = [name, f"{_with_article(name)} emoji", f"an emoji of {_with_article(name)}", f"the {name} emoji",
           f"an icon of {_with_article(name)}"]
    return out + [a for a in aliases if a != name]


def _emoji_name(code: str) -> str:
    return code.strip(":").replace("_", " ").strip()


def read_emoji(size: int) -> Iterator[Record]:
    """Every fully-qualified emoji the font draws, on a white background, captioned from its name."""
    try:
        import emoji
    except ImportError:
        raise UserError("the emoji set needs the `emoji` package: pip install emoji") from None
    font = ImageFont.truetype(str(emoji_font()), 109)  # the only size Noto's colour bitmaps come in
    for char, info in sorted(emoji.EMOJI_DATA.items(), key=lambda item: item[1]["en"]):
        if info["status"] != emoji.STATUS["fully_qualified"]:
            continue
        name = _emoji_name(info["en"])
        aliases = [_emoji_name(a) for a in info.get("alias", [])]
        yield Record(name, lambda char=char: _render_emoji(char, font, size), emoji_captions(name, aliases),
                     heldout=in_heldout(name, EMOJI_HELDOUT))


def _render_emoji(char: str, font, size: int) -> np.ndarray:
    from .decode import Skip
    canvas = Image.new("RGBA", (4 * 136, 160))
    ImageDraw.Draw(canvas).text((8, 8), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    # A sequence the font has no glyph for comes out empty or as its parts side by side.
    if box is None or (box[2] - box[0]) > 1.4 * (box[3] - box[1]):
        raise Skip("not in the font")
    glyph = canvas.crop(box)
    side = int(max(glyph.size) * 1.15)  # a margin, so the picture is the emoji and not a crop of it
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2), glyph)
    return resize_square(square, size)


def emoji_fingerprint() -> list:
    import emoji
    font = emoji_font()
    return [str(font), font.stat().st_size, getattr(emoji, "__version__", "?")]


def read_digits(size: int) -> Iterator[Record]:
    """scikit-learn's 1,797 handwritten digits (8 x 8, 17 grey levels), upsampled, dark ink on white."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits set needs scikit-learn: pip install 'dreamlet[data]'") from None
    digits = load_digits()
    for i, (grid, label) in enumerate(zip(digits.images, digits.target)):
        ink = Image.fromarray((255 - grid / 16 * 255).round().astype(np.uint8), "L").resize((size, size), Image.BICUBIC)
        word = NUMBER_WORDS[int(label)]
        captions = [f"a handwritten {word}", f"the digit {label}", f"a handwritten {label}",
                    f"the number {word} written by hand", f"a digit {word}"]
        yield Record(f"digit {i}", np.asarray(ink.convert("RGB")), captions,
                     heldout=in_heldout(f"digit {i}", DIGITS_HELDOUT))
