"""Image helpers: tensors <-> uint8 arrays, PNG writing, captioned grids (Pillow + NumPy only)."""
from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [-1, 1] -> (B, S, S, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def captioned_grid(images: np.ndarray, captions: list[str], columns: int = 6, cell: int = 128) -> Image.Image:
    """A grid of images, each scaled to `cell` pixels (nearest, so pixels stay honest) with its caption."""
    font = ImageFont.load_default()
    text_height = 40
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=cell // 6)[:3]
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines), fill="black", font=font, spacing=1)
    return grid
