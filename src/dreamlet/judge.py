"""The exact judge for the shapes benchmark: pixel analysis only, no learned model.

It reads objects out of a picture (colour by nearest palette entry, connected components,
size and centre from the soft extent, shape by matching rendered templates) and scores a prompt
the way the spec says: a single prompt is correct when the largest object has the asked colour,
shape, size and position and nothing else is 30 % as large; a pair prompt when the two largest
objects are the two asked for and their centres stand in the asked relation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .data.shapes import COLORS, POSITIONS, SHAPES, SIZES, Prompt, coverage

_PALETTE = np.asarray(list(COLORS.values()), np.float32)  # (6, 3)
_NAMES = list(COLORS)
# Between the two box sizes on a log scale: sqrt(0.22 * 0.36).
_SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])


@dataclass
class Found:
    color: str
    shape: str
    size: str
    position: str
    area: float     # in pixels (soft coverage)
    cx: float       # centre, fraction of the canvas side
    cy: float
    extent: float   # box side, fraction of the canvas side


def find_objects(image: np.ndarray, min_area: float = 1.0, most: int | None = None) -> list[Found]:
    """Objects in an (S, S, 3) uint8 picture, largest first; with `most`, only the `most` largest. (A noisy
    picture has a hundred specks or more, and describing each one was nearly all of the judge's time.)"""
    size = image.shape[0]
    pix = image.astype(np.float32)                                        # (S, S, 3)
    # Opacity of each palette colour at each pixel, and how well that colour explains the pixel.
    alpha = np.clip(pix @ _PALETTE.T / (_PALETTE ** 2).sum(1), 0, 1)       # (S, S, 6)
    residual = np.linalg.norm(pix[:, :, None, :] - alpha[..., None] * _PALETTE, axis=-1)
    best = residual.argmin(-1)                                            # (S, S)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]

    def whole(near, patch):  # a region's coverage on the whole canvas
        soft = np.zeros_like(best_alpha)
        soft[near] = patch
        return soft

    regions = []
    for k, name in enumerate(_NAMES):
        mine = best == k
        labels, _ = ndimage.label(mine & (best_alpha >= 0.5))
        for index, box in enumerate(ndimage.find_objects(labels), 1):
            # The soft edge: neighbouring pixels of the same colour with partial coverage, one pixel around the core.
            near = tuple(slice(max(side.start - 1, 0), side.stop + 1) for side in box)
            region = ndimage.binary_dilation(labels[near] == index) & mine[near] & (best_alpha[near] > 0.05)
            patch = np.where(region, best_alpha[near], 0.0)
            area = float(whole(near, patch).sum())  # summed over the whole canvas, as it always was: the same floats
            if area >= min_area:
                regions.append((area, name, near, patch))
    regions.sort(key=lambda region: -region[0])
    return [_describe(name, whole(near, patch), area, size) for area, name, near, patch in regions[:most]]


def _describe(color: str, soft: np.ndarray, area: float, size: int) -> Found:
    cols, rows = soft.max(0), soft.max(1)  # how covered each column / row is at its fullest
    (left, right, cut_left, cut_right), (top, bottom, cut_top, cut_bottom) = _edges(cols), _edges(rows)
    width, height = right - left, bottom - top
    # An object cut by the canvas edge keeps its true side along the other axis.
    if (cut_left or cut_right) and not (cut_top or cut_bottom):
        extent = height
    elif (cut_top or cut_bottom) and not (cut_left or cut_right):
        extent = width
    else:
        extent = max(width, height)
    cx = right - extent / 2 if cut_left and not cut_right else left + extent / 2 if cut_right else (left + right) / 2
    cy = bottom - extent / 2 if cut_top and not cut_bottom else top + extent / 2 if cut_bottom else (top + bottom) / 2
    # The soft extent is off by up to a pixel, so each shape may take the best of a few box sides.
    scores = []
    for shape in SHAPES:
        best = 0.0
        for scale in (0.85, 1.0, 1.15):
            template = coverage(shape, cx, cy, extent * scale, size, supersample=4)
            iou = np.minimum(template, soft).sum() / max(np.maximum(template, soft).sum(), 1e-6)
            best = max(best, float(iou))
        scores.append(best)
    shape = SHAPES[int(np.argmax(scores))]
    col, row = min(int(cx / size * 3), 2), min(int(cy / size * 3), 2)
    size_name = "small" if extent / size < _SIZE_SPLIT else "large"
    return Found(color, shape, size_name, POSITIONS[3 * row + col], area, cx / size, cy / size, extent / size)


def _edges(profile: np.ndarray) -> tuple[float, float, bool, bool]:
    """Sub-pixel start and end of a coverage profile, and whether it runs into either canvas edge."""
    nonzero = np.flatnonzero(profile > 0.05)
    first, last = int(nonzero[0]), int(nonzero[-1])
    start, end = first + 1 - float(profile[first]), last + float(profile[last])
    return start, end, first == 0 and profile[0] > 0.3, last == len(profile) - 1 and profile[-1] > 0.3


def relation_holds(relation: str, a: Found, b: Found) -> bool:
    """Whether a stands in `relation` to b, comparing centres."""
    return {"to the left of": a.cx < b.cx, "to the right of": a.cx > b.cx,
            "above": a.cy < b.cy, "below": a.cy > b.cy}[relation]


def judge(image: np.ndarray, prompt: Prompt) -> dict:
    """Score one picture against one benchmark prompt: {"correct": bool, attribute: bool, ...}."""
    objects = find_objects(image, most=3)  # what a verdict reads: the largest, the next (alone?), three in `found`
    if prompt.relation is None:
        color, shape, size, position = prompt.objects[0]
        if not objects:
            return dict(correct=False, color=False, shape=False, size=False, position=False, found=[])
        top = objects[0]
        alone = all(o.area < 0.3 * top.area for o in objects[1:])
        scores = dict(color=top.color == color, shape=top.shape == shape,
                      size=top.size == size, position=top.position == position)
        scores["correct"] = alone and all(scores.values())
        return scores | dict(found=[_brief(o) for o in objects[:3]])
    wanted = [(c, s) for c, s, _, _ in prompt.objects]
    two = objects[:2]
    got = [(o.color, o.shape) for o in two]
    both = len(two) == 2 and sorted(got) == sorted(wanted)
    relation = False
    if both:
        first = two[0] if got[0] == wanted[0] else two[1]
        second = two[1] if first is two[0] else two[0]
        relation = relation_holds(prompt.relation, first, second)
    scores = dict(color=sorted(c for c, _ in got) == sorted(c for c, _ in wanted),
                  shape=sorted(s for _, s in got) == sorted(s for _, s in wanted),
                  relation=relation, both_objects=both)  # the two largest are the two asked for
    scores["correct"] = both and relation
    return scores | dict(found=[_brief(o) for o in objects[:3]])


def _brief(o: Found) -> str:
    return f"{o.size} {o.color} {o.shape} at the {o.position}"


def summarize(results: list[tuple[Prompt, dict]]) -> dict:
    """Accuracy per prompt kind and per attribute, from (prompt, judge result) pairs."""
    out = {}
    for kind in ("seen", "heldout", "pair"):
        rows = [r for p, r in results if p.kind == kind]
        if rows:
            out[kind] = sum(r["correct"] for r in rows) / len(rows)
    attributes = {}
    for name in ("color", "shape", "size", "position"):
        rows = [r[name] for p, r in results if p.kind in ("seen", "heldout")]
        if rows:
            attributes[name] = sum(rows) / len(rows)
    rows = [r["relation"] for p, r in results if p.kind == "pair"]
    if rows:
        attributes["relation"] = sum(rows) / len(rows)
    out["attributes"] = attributes
    out["counts"] = {kind: sum(p.kind == kind for p, _ in results) for kind in ("seen", "heldout", "pair")}
    return out
