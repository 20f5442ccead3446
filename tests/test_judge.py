import numpy as np
import pytest

from dreamlet.data.shapes import PAIR_CELLS, POSITIONS, Prompt, Scene, benchmark_prompts, place, render
from dreamlet.judge import find_objects, judge, summarize


def draw(prompt: Prompt, size: int, rng) -> np.ndarray:
    if prompt.relation is None:
        color, shape, scale, position = prompt.objects[0]
        return render(Scene((place(rng, color, shape, scale, position),)), size)
    (ca, sa, _, _), (cb, sb, _, _) = prompt.objects
    cells = PAIR_CELLS[prompt.relation]
    a, b = cells[rng.integers(len(cells))]
    objects = (place(rng, ca, sa, "small", POSITIONS[a]), place(rng, cb, sb, "small", POSITIONS[b]))
    return render(Scene(objects, prompt.relation), size)


@pytest.mark.parametrize("size", [32, 64])
def test_judge_scores_the_renderer_near_100_percent(size):
    rng = np.random.default_rng(size)
    prompts = benchmark_prompts(120, 72, 120, seed=5)
    report = summarize([(p, judge(draw(p, size, rng), p)) for p in prompts])
    assert report["seen"] >= 0.97 and report["heldout"] >= 0.97 and report["pair"] >= 0.97
    assert min(report["attributes"].values()) >= 0.97


def test_judge_rejects_wrong_pictures():
    rng = np.random.default_rng(0)
    red_circle = render(Scene((place(rng, "red", "circle", "large", "top left"),)), 32)
    ask = lambda text, *obj: Prompt(text, "seen", (obj,))  # noqa: E731
    assert judge(red_circle, ask("", "red", "circle", "large", "top left"))["correct"]
    for wrong in [("blue", "circle", "large", "top left"), ("red", "square", "large", "top left"),
                  ("red", "circle", "small", "top left"), ("red", "circle", "large", "top right")]:
        assert not judge(red_circle, ask("", *wrong))["correct"]
    assert not judge(np.zeros((32, 32, 3), np.uint8), ask("", "red", "circle", "large", "center"))["correct"]


def test_judge_rejects_a_second_large_object_and_a_reversed_relation():
    rng = np.random.default_rng(1)
    a, b = place(rng, "green", "circle", "small", "left"), place(rng, "red", "square", "small", "right")
    image = render(Scene((a, b), "to the left of"), 32)
    pair = lambda r: Prompt("", "pair", (("green", "circle", None, None), ("red", "square", None, None)), r)  # noqa: E731
    assert judge(image, pair("to the left of"))["correct"]
    reversed_relation = judge(image, pair("to the right of"))
    assert not reversed_relation["correct"] and reversed_relation["both_objects"]  # right objects, wrong places
    other_shape = Prompt("", "pair", (("green", "triangle", None, None), ("red", "square", None, None)), "to the left of")
    assert not judge(image, other_shape)["both_objects"]
    single = Prompt("", "seen", (("green", "circle", "small", "left"),))
    assert not judge(image, single)["correct"]  # a second object as large as the first


def test_find_objects_reads_size_and_centre():
    rng = np.random.default_rng(2)
    obj = place(rng, "cyan", "triangle", "large", "bottom")
    found = find_objects(render(Scene((obj,)), 64))
    assert len(found) == 1
    f = found[0]
    assert (f.color, f.shape, f.size, f.position) == ("cyan", "triangle", "large", "bottom")
    assert abs(f.cx - obj.cx) < 0.02 and abs(f.cy - obj.cy) < 0.02


def test_the_judge_describes_only_the_largest_objects_it_needs():
    """A noisy picture (an early model's, a poor reconstruction) has a hundred specks or more; the judge reads
    the three largest, and they are the same as when every speck is described."""
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    every = find_objects(noisy)
    assert len(every) > 50 and find_objects(noisy, most=3) == every[:3]
    assert [o.area for o in every] == sorted((o.area for o in every), reverse=True)


def test_the_validation_prompts_are_another_draw_of_the_same_spec():
    from collections import Counter
    from dreamlet.data.shapes import benchmark_jobs
    evaluation, validation = benchmark_jobs(64, 2), benchmark_jobs(64, 2, "validation")
    assert evaluation == benchmark_jobs(64, 2, "evaluation")  # what `dreamlet eval` has always judged
    kinds = lambda jobs: Counter(p.kind for p, _ in jobs)  # noqa: E731
    assert kinds(evaluation) == kinds(validation) == {"seen": 128, "heldout": 128, "pair": 128}
    assert not {s for _, s in evaluation} & {s for _, s in validation}  # other pictures
    shared = {p.text for p, _ in evaluation if p.kind == "pair"} & {p.text for p, _ in validation if p.kind == "pair"}
    assert len(shared) < 8  # pairs come from thousands: nearly all other prompts


def test_eval_judges_the_validation_set_when_asked(tiny_run, tmp_path):
    import json
    from dreamlet.cli import main
    for prompt_set in ("validation", "evaluation"):
        out = tmp_path / prompt_set
        assert main(["eval", "--model", str(tiny_run / "model"), "--prompts", "2", "--seeds", "1", "--steps", "1",
                     "--prompt-set", prompt_set, "--out", str(out)]) == 0
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["prompt_set"] == prompt_set and f"of the {prompt_set} set" in out.with_suffix(".md").read_text()
    first = lambda name: json.loads((tmp_path / name).with_suffix(".json").read_text())["failures"][0]  # noqa: E731
    assert first("validation") != first("evaluation")
