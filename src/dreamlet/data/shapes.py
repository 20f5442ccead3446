"""The built-in procedural shapes set (spec: shared/specs/shapes.md).

Scenes are drawn by code with anti-aliased edges, so every picture and caption is generated on
the fly and is deterministic by (seed, index). Four colour-shape pairs are held out of training
entirely (`HELD_OUT`) to measure compositional generalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "yellow": (240, 220, 30),
    "green": (30, 190, 50),
    "cyan": (30, 200, 220),
    "blue": (40, 70, 235),
    "purple": (160, 50, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.22, "large": 0.36}  # box side E as a fraction of the canvas side S
# The 3 x 3 grid, row-major: POSITIONS[3 * row + col], row 0 at the top.
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
RELATIONS = ("to the left of", "to the right of", "above", "below")
INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of",
           "above": "below", "below": "above"}
HELD_OUT = frozenset({("red", "triangle"), ("yellow", "circle"), ("blue", "square"),
                      ("purple", "diamond")})
SEEN_OBJECTS = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT)
JITTER = 0.05  # largest move of an object's centre from its cell centre, as a fraction of S
SUPPORTED_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str       # "small" | "large"
    position: str   # one of POSITIONS
    cx: float       # centre in units of the canvas side (0..1), jitter included
    cy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str | None = None  # pair scenes: objects[0] {relation} objects[1]


# ----------------------------------------------------------------------------- rendering

def coverage(shape: str, cx: float, cy: float, extent: float, size: int, supersample: int = 8):
    """Fraction of each pixel covered by the shape: (size, size) float32 in [0, 1].

    Pixel (i, j) spans [j, j+1] x [i, i+1]; all arguments are in pixels. Coverage is estimated
    on a supersample x supersample grid inside each pixel, only within the shape's box.
    """
    out = np.zeros((size, size), np.float32)
    half = extent / 2
    x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)), size)
    y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)), size)
    if x0 >= x1 or y0 >= y1:
        return out
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets).reshape(-1) - cx  # (W*k,)
    ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1) - cy  # (H*k,)
    dx, dy = np.abs(xs)[None, :], ys[:, None]
    if shape == "circle":
        inside = dx ** 2 + dy ** 2 <= half ** 2
    elif shape == "square":
        inside = (dx <= half) & (np.abs(dy) <= half)
    elif shape == "diamond":
        inside = dx + np.abs(dy) <= half
    elif shape == "triangle":  # apex at the top middle of the box, base along its bottom edge
        t = (dy + half) / extent  # 0 at the apex row, 1 at the base
        inside = (t >= 0) & (t <= 1) & (dx <= t * half)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    k = supersample
    cov = inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
    out[y0:y1, x0:x1] = cov
    return out


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Draw a scene on a black canvas: (size, size, 3) uint8."""
    canvas = np.zeros((size, size, 3), np.float32)
    for obj in scene.objects:
        cov = coverage(obj.shape, obj.cx * size, obj.cy * size, SIZES[obj.size] * size, size)
        color = np.asarray(COLORS[obj.color], np.float32)
        canvas = canvas * (1 - cov[..., None]) + cov[..., None] * color
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scenes

def cell_centre(position: str) -> tuple[float, float]:
    index = POSITIONS.index(position)
    row, col = divmod(index, 3)
    return (2 * col + 1) / 6, (2 * row + 1) / 6


def place(rng: np.random.Generator, color: str, shape: str, size: str, position: str) -> ShapeObject:
    """An object at its cell centre, moved by at most JITTER (uniform in a disc)."""
    cx, cy = cell_centre(position)
    radius, angle = JITTER * math.sqrt(rng.random()), 2 * math.pi * rng.random()
    return ShapeObject(color, shape, size, position, cx + radius * math.cos(angle),
                       cy + radius * math.sin(angle))


def random_single(rng: np.random.Generator, objects=SEEN_OBJECTS) -> Scene:
    color, shape = objects[rng.integers(len(objects))]
    size = ("small", "large")[rng.integers(2)]
    return Scene((place(rng, color, shape, size, POSITIONS[rng.integers(9)]),))


def pair_cells(relation: str) -> list[tuple[int, int]]:
    """Cell index pairs (first, second) where the relation holds along its own axis and the
    separation along that axis is larger than across it, so the relation is the scene's obvious one."""
    cells = []
    for a in range(9):
        for b in range(9):
            (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
            along, across = {"to the left of": (cb - ca, rb - ra), "to the right of": (ca - cb, rb - ra),
                             "above": (rb - ra, cb - ca), "below": (ra - rb, cb - ca)}[relation]
            if along > 0 and abs(across) < along:
                cells.append((a, b))
    return cells


PAIR_CELLS = {r: pair_cells(r) for r in RELATIONS}


def random_pair(rng: np.random.Generator, objects=SEEN_OBJECTS) -> Scene:
    """Two different small objects in two different cells; the first stands in `relation` to the second."""
    i = rng.integers(len(objects))
    j = (i + 1 + rng.integers(len(objects) - 1)) % len(objects)
    relation = RELATIONS[rng.integers(4)]
    cells = PAIR_CELLS[relation]
    a, b = cells[rng.integers(len(cells))]
    first = place(rng, *objects[i], "small", POSITIONS[a])
    second = place(rng, *objects[j], "small", POSITIONS[b])
    return Scene((first, second), relation)


# ----------------------------------------------------------------------------- captions

def canonical_caption(scene: Scene) -> str:
    if scene.relation is None:
        o = scene.objects[0]
        return f"a {o.size} {o.color} {o.shape} at the {o.position}"
    a, b = scene.objects
    return f"a {a.color} {a.shape} {scene.relation} a {b.color} {b.shape}"


# Other ways to name each cell (the canonical "at the {position}" is added separately).
_WHERE = {
    "top left": ["at the upper left", "in the top-left corner", "in the top left", "in the upper left corner"],
    "top": ["at the top", "at the top middle", "in the upper middle", "at the top center"],
    "top right": ["at the upper right", "in the top-right corner", "in the top right", "in the upper right corner"],
    "left": ["on the left", "at the left side", "in the middle left", "at the center left"],
    "center": ["in the center", "in the middle", "at the centre", "in the centre"],
    "right": ["on the right", "at the right side", "in the middle right", "at the center right"],
    "bottom left": ["at the lower left", "in the bottom-left corner", "in the bottom left", "in the lower left corner"],
    "bottom": ["at the bottom", "at the bottom middle", "in the lower middle", "at the bottom center"],
    "bottom right": ["at the lower right", "in the bottom-right corner", "in the bottom right",
                     "in the lower right corner"],
}
_RELATION_WORDS = {
    "to the left of": ["to the left of", "left of", "on the left of"],
    "to the right of": ["to the right of", "right of", "on the right of"],
    "above": ["above", "over", "on top of"],
    "below": ["below", "under", "beneath", "underneath"],
}


def paraphrase(scene: Scene, rng: np.random.Generator, canonical_prob: float = 0.5) -> str:
    """A training caption: the canonical one with probability `canonical_prob`, else a paraphrase.

    Paraphrases change word order, the names of places and relations, or leave out the size or the
    position (the picture still has one; the model learns to choose)."""
    if rng.random() < canonical_prob:
        return canonical_caption(scene)
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    if scene.relation is None:
        o = scene.objects[0]
        where = pick([f"at the {o.position}"] + _WHERE[o.position])
        thing = f"{o.color} {o.shape}"
        templates = [
            f"a {o.size} {thing} {where}",
            f"{where}, a {o.size} {thing}",
            f"there is a {o.size} {thing} {where}",
            f"a {thing} {where}",                      # size left out
            f"a {o.size} {thing}",                     # position left out
            f"a {thing}, {o.size}, {where}",
            f"{o.size} {thing} {where}",
            f"a {thing} that is {o.size} {where}",
        ]
        return pick(templates)
    a, b = scene.objects
    first, second, relation = f"{a.color} {a.shape}", f"{b.color} {b.shape}", scene.relation
    if rng.random() < 0.5:  # describe it from the second object's side
        first, second, relation = second, first, INVERSE[relation]
    word = pick(_RELATION_WORDS[relation])
    templates = [
        f"a {first} {word} a {second}",
        f"{first} {word} {second}",
        f"there is a {first} {word} a {second}",
        f"a {first} is {word} a {second}",
    ]
    if relation in ("to the left of", "to the right of"):
        side, other = ("left", "right") if relation == "to the left of" else ("right", "left")
        templates.append(f"a {first} on the {side} and a {second} on the {other}")
    else:
        side, other = ("top", "bottom") if relation == "above" else ("bottom", "top")
        templates.append(f"a {first} at the {side} and a {second} at the {other}")
    return pick(templates)


# ----------------------------------------------------------------------------- the dataset

class ShapesDataset:
    """An endless, seeded stream of (image, caption): item i is the same for the same seed.

    Training scenes never contain a held-out colour-shape pair. `pair_fraction` of scenes hold two
    objects. Images are (S, S, 3) uint8."""

    def __init__(self, size: int = 32, seed: int = 0, pair_fraction: float = 0.4, canonical_prob: float = 0.5):
        if size not in SUPPORTED_SIZES:
            raise ValueError(f"shapes size must be one of {SUPPORTED_SIZES}, got {size}")
        self.size, self.seed = size, seed
        self.pair_fraction, self.canonical_prob = pair_fraction, canonical_prob

    def scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        scene = random_pair(rng) if rng.random() < self.pair_fraction else random_single(rng)
        return scene, rng

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        scene, rng = self.scene(index)
        return render(scene, self.size), paraphrase(scene, rng, self.canonical_prob)

    def batch(self, start: int, count: int) -> tuple[np.ndarray, list[str]]:
        """Items start..start+count-1 as a (count, S, S, 3) uint8 array and their captions."""
        items = [self[i] for i in range(start, start + count)]
        return np.stack([im for im, _ in items]), [c for _, c in items]

    def progress_prompts(self, count: int = 12) -> list[str]:
        """Canonical prompts to watch during training: seen, held-out and pair, in turn."""
        return [p.text for p in benchmark_prompts(count // 3, count // 3, count - 2 * (count // 3), seed=1)]

    def captions(self, count: int, start: int = 10**9) -> list[str]:
        """Captions only (for training a tokenizer), from a range disjoint from early training items."""
        return [paraphrase(*self.scene(i), self.canonical_prob) for i in range(start, start + count)]


# ----------------------------------------------------------------------------- benchmark prompts

@dataclass(frozen=True)
class Prompt:
    text: str
    kind: str                # "seen" | "heldout" | "pair"
    objects: tuple[tuple[str, str, str | None, str | None], ...]  # (color, shape, size, position)
    relation: str | None = None


def benchmark_prompts(seen: int = 60, heldout: int = 36, pairs: int = 36, seed: int = 0) -> list[Prompt]:
    """Canonical prompts for the judge: seen singles, held-out singles and pairs of seen objects.

    Each category is a seeded sample without repetition of every possible canonical prompt, taken
    in a stratified order so that small counts still cover every colour, shape and position."""
    rng = np.random.default_rng(seed)
    singles = [(c, s, z, p) for c in COLORS for s in SHAPES for z in SIZES for p in POSITIONS]
    seen_all = [o for o in singles if (o[0], o[1]) not in HELD_OUT]
    held_all = [o for o in singles if (o[0], o[1]) in HELD_OUT]
    pair_all = [(a, b, r) for a in SEEN_OBJECTS for b in SEEN_OBJECTS if a != b for r in RELATIONS]

    def choose(options, count):
        order = rng.permutation(len(options))
        return [options[i] for i in order[:min(count, len(options))]]

    out = []
    for kind, options, count in (("seen", seen_all, seen), ("heldout", held_all, heldout)):
        for c, s, z, p in choose(options, count):
            out.append(Prompt(f"a {z} {c} {s} at the {p}", kind, ((c, s, z, p),)))
    for (ca, sa), (cb, sb), r in choose(pair_all, pairs):
        out.append(Prompt(f"a {ca} {sa} {r} a {cb} {sb}", "pair",
                          ((ca, sa, None, None), (cb, sb, None, None)), r))
    return out


# The judge's two prompt sets, drawn from the same spec with their own seeds (for prompts, and an offset for
# the pictures): design choices are made on "validation", figures are reported on "evaluation" (what
# `dreamlet eval` has always judged), so a default is never tuned on the prompts it is reported on.
PROMPT_SETS = {"evaluation": (1234, 0), "validation": (5678, 500_000)}


def benchmark_jobs(per_kind: int, seeds: int, prompt_set: str = "evaluation") -> list[tuple[Prompt, int]]:
    """The judge's (prompt, seed) pairs: `per_kind` prompts of each kind, each drawn with `seeds` seeds. Every
    script that scores a model the way `dreamlet eval` does draws exactly these."""
    prompt_seed, offset = PROMPT_SETS[prompt_set]
    chosen = benchmark_prompts(per_kind, per_kind, per_kind, seed=prompt_seed)
    return [(p, offset + 10_000 * s + i) for s in range(seeds) for i, p in enumerate(chosen)]


@cache
def _canonical_prompts() -> dict[str, Prompt]:
    """Every canonical caption (2,736 of them) and its benchmark Prompt: looking a text up here is exact
    where a grammar would have to be kept in step with `canonical_caption` by hand."""
    out = {}
    for c in COLORS:
        for s in SHAPES:
            kind = "heldout" if (c, s) in HELD_OUT else "seen"
            for z in SIZES:
                for p in POSITIONS:
                    text = f"a {z} {c} {s} at the {p}"
                    out[text] = Prompt(text, kind, ((c, s, z, p),))
    objects = [(c, s) for c in COLORS for s in SHAPES]
    for ca, sa in objects:
        for cb, sb in objects:
            for r in RELATIONS:
                text = f"a {ca} {sa} {r} a {cb} {sb}"
                out[text] = Prompt(text, "pair", ((ca, sa, None, None), (cb, sb, None, None)), r)
    return out


def parse_prompt(text: str) -> Prompt | None:
    """The benchmark Prompt of a canonical caption (case, spacing and a final full stop aside), so the judge
    can score a picture drawn from it; None for anything else (paraphrases included: their meaning is the
    same, but the benchmark is defined on canonical captions)."""
    return _canonical_prompts().get(" ".join(text.lower().strip().removesuffix(".").split()))
