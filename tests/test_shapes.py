import numpy as np
import pytest

from dreamlet.data.shapes import (COLORS, HELD_OUT, JITTER, POSITIONS, SIZES, Scene, ShapesDataset,
                                  benchmark_prompts, canonical_caption, cell_centre, coverage, paraphrase,
                                  parse_prompt, place, random_pair, random_single, render)


def test_palette_and_sizes_follow_the_spec():
    assert COLORS == {"red": (230, 30, 30), "yellow": (240, 220, 30), "green": (30, 190, 50),
                      "cyan": (30, 200, 220), "blue": (40, 70, 235), "purple": (160, 50, 220)}
    assert SIZES == {"small": 0.22, "large": 0.36}
    assert cell_centre("top left") == (1 / 6, 1 / 6) and cell_centre("bottom right") == (5 / 6, 5 / 6)
    assert cell_centre("top") == (0.5, 1 / 6) and cell_centre("left") == (1 / 6, 0.5)


@pytest.mark.parametrize("shape, fill", [("square", 1.0), ("circle", np.pi / 4), ("diamond", 0.5), ("triangle", 0.5)])
def test_shape_areas(shape, fill):
    cov = coverage(shape, 64.0, 64.0, 40.0, 128)
    assert cov.sum() == pytest.approx(fill * 40 ** 2, rel=0.02)


def test_triangle_points_up_and_diamond_is_symmetric():
    tri, dia = coverage("triangle", 32, 32, 30, 64), coverage("diamond", 32, 32, 30, 64)
    assert tri[:32].sum() < 0.4 * tri[32:].sum()  # apex at the top, base at the bottom
    assert dia[:32].sum() == pytest.approx(dia[32:].sum(), rel=0.01)


def test_render_colours_background_and_antialiasing():
    rng = np.random.default_rng(0)
    image = render(Scene((place(rng, "blue", "circle", "large", "center"),)), 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 0).all()
    assert tuple(image[16, 16]) == COLORS["blue"]
    partial = (image.max(-1) > 0) & (image.max(-1) < 200)
    assert partial.sum() > 10  # anti-aliased edge pixels


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_dataset_is_deterministic_by_seed(size):
    a, b, c = ShapesDataset(size, seed=3), ShapesDataset(size, seed=3), ShapesDataset(size, seed=4)
    images, captions = a.batch(0, 8)
    assert images.shape == (8, size, size, 3)
    again, captions_again = b.batch(0, 8)
    assert (images == again).all() and captions == captions_again
    assert not (images == c.batch(0, 8)[0]).all()


def test_held_out_pairs_never_appear_in_training():
    data = ShapesDataset(32, seed=0)
    for i in range(4000):
        scene, rng = data.scene(i)
        for o in scene.objects:
            assert (o.color, o.shape) not in HELD_OUT
        caption = data[i][1]
        for color, shape in HELD_OUT:
            assert f"{color} {shape}" not in caption


def test_scenes_follow_the_spec():
    data, kinds = ShapesDataset(32, seed=1), set()
    for i in range(2000):
        scene, _ = data.scene(i)
        kinds.add(len(scene.objects))
        for o in scene.objects:
            cx, cy = cell_centre(o.position)
            assert np.hypot(o.cx - cx, o.cy - cy) <= JITTER + 1e-9
        if scene.relation:
            a, b = scene.objects
            assert a.size == b.size == "small" and a.position != b.position and (a.color, a.shape) != (b.color, b.shape)
            holds = {"to the left of": a.cx < b.cx, "to the right of": a.cx > b.cx,
                     "above": a.cy < b.cy, "below": a.cy > b.cy}[scene.relation]
            assert holds
            # not overlapping: boxes apart along at least one axis
            gap = max(abs(a.cx - b.cx), abs(a.cy - b.cy))
            assert gap > SIZES["small"]
    assert kinds == {1, 2}


def test_captions_canonical_and_paraphrased():
    rng = np.random.default_rng(0)
    single = Scene((place(rng, "red", "circle", "small", "top left"),))
    assert canonical_caption(single) == "a small red circle at the top left"
    a, b = place(rng, "green", "circle", "small", "left"), place(rng, "red", "square", "small", "right")
    assert canonical_caption(Scene((a, b), "to the left of")) == "a green circle to the left of a red square"
    captions = ShapesDataset(32, seed=0).captions(3000, start=0)
    canonical = [c for c in captions if c.startswith("a ") and (" at the " in c or " of a " in c or " above a " in c)]
    assert 0.35 < len(canonical) / len(captions) < 0.9
    assert len(set(captions)) > 1000
    assert any("upper" in c for c in captions) and any("corner" in c for c in captions)


def test_benchmark_prompts_are_canonical_and_split():
    prompts = benchmark_prompts(60, 36, 36, seed=0)
    kinds = [p.kind for p in prompts]
    assert kinds.count("seen") == 60 and kinds.count("heldout") == 36 and kinds.count("pair") == 36
    for p in prompts:
        pairs = {(c, s) for c, s, _, _ in p.objects}
        if p.kind == "heldout":
            assert pairs <= HELD_OUT
        else:
            assert not pairs & HELD_OUT
    assert len({p.text for p in prompts}) == len(prompts)
    assert all(p.objects[0][3] in POSITIONS for p in prompts if p.kind != "pair")


def test_parse_prompt_reads_exactly_the_canonical_captions():
    # the same Prompt objects the benchmark uses, so the judge scores a typed prompt the way eval does
    for prompt in benchmark_prompts(500, 500, 3000):
        assert parse_prompt(prompt.text) == prompt
    found = parse_prompt("  A large RED circle at the top  left.")
    assert found.text == "a large red circle at the top left" and found.kind == "seen"
    assert found.objects == (("red", "circle", "large", "top left"),)
    assert parse_prompt("a small red triangle at the center").kind == "heldout"
    rng, paraphrases_read = np.random.default_rng(0), 0
    for _ in range(200):
        scene = random_pair(rng) if rng.random() < 0.5 else random_single(rng)
        prompt = parse_prompt(canonical_caption(scene))
        assert prompt is not None and prompt.relation == scene.relation
        assert [o[:2] for o in prompt.objects] == [(o.color, o.shape) for o in scene.objects]
        # a paraphrase is not read unless it happens to be canonical too (e.g. a pair told from the other side)
        parsed = parse_prompt(paraphrase(scene, rng, canonical_prob=0.0))
        paraphrases_read += parsed is not None
        assert parsed is None or {o[:2] for o in parsed.objects} == {(o.color, o.shape) for o in scene.objects}
    assert paraphrases_read < 40
    for text in ("", "a red circle", "a large red circle at the top middle", "a large pink circle at the top left",
                 "a red circle next to a blue square", "draw a large red circle at the top left"):
        assert parse_prompt(text) is None, text
