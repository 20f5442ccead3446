"""Captioned datasets by name. Every dataset yields (uint8 image (S, S, 3), caption) by index."""
from __future__ import annotations

from ..checkpoint import UserError
from .shapes import SUPPORTED_SIZES, ShapesDataset

DATASETS = {"shapes": ShapesDataset}


def get_dataset(name: str, size: int, seed: int = 0):
    if name not in DATASETS:
        raise UserError(f"unknown --data {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "shapes" and size not in SUPPORTED_SIZES:
        raise UserError(f"--size {size} is not available for shapes; choose one of: "
                        f"{', '.join(map(str, SUPPORTED_SIZES))}")
    return DATASETS[name](size=size, seed=seed)
