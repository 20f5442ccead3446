"""The peer comparison's glue (bench/peers.py, bench/peer_runner.py) without installing any peer: a fake
peer that draws the renderer's own pictures must score ~100 % through the runner's code path, and the
table's ratios must read right."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import peer_runner  # noqa: E402
import peers  # noqa: E402

from dreamlet.data.shapes import PAIR_CELLS, POSITIONS, Scene, parse_prompt, place, render  # noqa: E402


def renderer_peer(texts, seeds):
    """A perfect 'peer': the renderer's picture of each canonical prompt."""
    pictures = []
    for text, seed in zip(texts, seeds):
        prompt, rng = parse_prompt(text), np.random.default_rng(seed)
        if prompt.relation is None:
            color, shape, size, position = prompt.objects[0]
            scene = Scene((place(rng, color, shape, size, position),))
        else:
            (ca, sa, _, _), (cb, sb, _, _) = prompt.objects
            a, b = PAIR_CELLS[prompt.relation][rng.integers(len(PAIR_CELLS[prompt.relation]))]
            scene = Scene((place(rng, ca, sa, "small", POSITIONS[a]), place(rng, cb, sb, "small", POSITIONS[b])),
                          prompt.relation)
        pictures.append(render(scene, 32))
    # through the peers' tensor format and back, as a real peer's output goes
    return peer_runner.to_uint8(peer_runner.to_tensor(np.stack(pictures)))


def test_a_perfect_peer_scores_near_100_percent_through_the_runner():
    report, pictures = peer_runner.judge_drawings(renderer_peer, prompts=16, seeds=2, batch=20)
    assert pictures.shape == (96, 32, 32, 3) and pictures.dtype == np.uint8
    assert report["counts"] == {"seen": 32, "heldout": 32, "pair": 32}
    assert report["seen"] >= 0.95 and report["heldout"] >= 0.95 and report["pair"] >= 0.95
    assert report["seconds_per_image"] > 0


def test_the_runner_asks_for_what_evaluate_shapes_asks_for():
    from dreamlet.data import shapes
    assert peer_runner.benchmark_jobs is shapes.benchmark_jobs  # the one list evaluate_shapes draws too
    jobs = shapes.benchmark_jobs(4, 2)
    chosen = shapes.benchmark_prompts(4, 4, 4, seed=1234)
    assert [(p.text, s) for p, s in jobs] == [(p.text, 10_000 * s + i) for s in range(2) for i, p in enumerate(chosen)]


def test_a_blank_peer_scores_zero_and_a_wrong_shape_is_refused():
    report, _ = peer_runner.judge_drawings(lambda texts, seeds: np.zeros((len(texts), 32, 32, 3), np.uint8), 4, 1)
    assert report["seen"] == report["heldout"] == report["pair"] == 0
    with pytest.raises(ValueError, match="expected"):
        peer_runner.judge_drawings(lambda texts, seeds: np.zeros((len(texts), 16, 16, 3), np.uint8), 4, 1)


def test_training_follows_dreamlets_data_stream_for_the_budget():
    seen = []
    result = peer_runner.train_for(0.3, lambda images, captions: seen.append((images, captions)) or 1.0, batch=4,
                                   log_every=0)
    assert result["steps"] == len(seen) >= 1 and result["batch"] == 4 and result["images_per_s"] > 0
    images, captions = seen[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    from dreamlet.data.shapes import ShapesDataset
    expected_images, expected_captions = ShapesDataset(32, seed=0).batch(4, 4)  # step 1 = items 4..7
    assert seen[1][1] == expected_captions
    assert np.array_equal(peer_runner.to_uint8(seen[1][0]), expected_images)


def test_the_stand_in_text_encoder_is_frozen_positional_and_masked():
    tokenizer = peer_runner.caption_tokenizer()
    text = peer_runner.FrozenTextStandIn(tokenizer, 16)
    embeds, mask = text(["a red circle to the left of a blue square", "a large red circle at the top left"])
    again, _ = peer_runner.FrozenTextStandIn(tokenizer, 16)(["a red circle to the left of a blue square",
                                                              "a large red circle at the top left"])
    assert embeds.shape[:2] == mask.shape and embeds.shape[2] == 16 and mask.dtype == torch.bool
    assert torch.equal(embeds, again)                              # the same table every run
    assert torch.all(embeds[~mask] == 0) and mask[:, 0].all()
    swapped, _ = text(["a blue square to the left of a red circle"])
    assert swapped.shape[1] == embeds.shape[1] and not torch.allclose(swapped[0], embeds[0])  # order matters
    repeated, _ = text(["red red"])
    assert not torch.allclose(repeated[0, 1], repeated[0, 2])  # the same word at two places differs


def row(name, seen, heldout, pair, rate, **extra):
    return dict(name=name, seen=seen, heldout=heldout, pair=pair, images_per_s=rate, budget_minutes=15, steps=100,
                batch=32, seconds_per_image=0.1, attributes={}, measured="2026-11-25", machine="m", command="c",
                prompts=64, seeds=2, **extra)


def test_the_table_gives_dreamlet_over_peer_ratios():
    ours = [row("diffusion", 0.9, 0.8, 0.08, 96, sampler="dpmpp_2m", sample_steps=20, params=3_000_000, source="same run"),
            row("dalle", 0.6, 0.5, 0.1, 120, source="same run"),
            row("diffusion", 0.5, 0.5, 0.5, 1, sampler="dpmpp_2m", sample_steps=20, source="stored")]
    theirs = [row("imagen-pytorch", 0.3, 0.2, 0.0, 48, peer="imagen", version="2.1.0", what="Imagen",
                  drawing="100 steps", nice=19, load_at_start=1.5, params=4_500_000),
              row("dalle-pytorch", 0.6, 0.25, 0.05, 240, peer="dalle", version="1.6.6", what="DALL-E", drawing="codes")]
    text = peers.table(theirs, ours)
    # ratios against the same-run rows, never the stored one
    assert "| dreamlet diffusion (same run) vs imagen-pytorch 2.1.0 | 3.00x | 4.00x | - (peer 0 %) | 2.00x | 1.00x |" in text
    assert "| dreamlet dalle (same run) vs dalle-pytorch 1.6.6 | 1.00x | 2.00x | 2.00x | 0.50x | 1.00x |" in text
    assert "imagen-pytorch 2.1.0: Imagen | 4.5 M | 15 min | 100 x 32 | 48 | 30 % | 20 % | 0 % |" in text
    assert "| **dreamlet diffusion (same run)**: " in text and "| **dreamlet diffusion (stored)**: " in text
    assert "| 3.0 M |" in text and "20 dpmpp_2m steps" in text
    assert "nice 19, load average 1.5" in text
    # with only a stored row, the ratio uses it
    assert "| dreamlet diffusion (stored) vs imagen-pytorch 2.1.0 | 1.67x |" in peers.table(theirs[:1], ours[2:])


def test_ratio_reads_zeros_plainly():
    assert peers.ratio(0.5, 0.25) == "2.00x" and peers.ratio(0.9, 0.05) == "18x"
    assert peers.ratio(0, 0) == "- (both 0 %)" and peers.ratio(0.1, 0) == "- (peer 0 %)"
    assert peers.ratio(None, 0.1) == "-"


def test_peer_installs_pin_torch_and_every_peer_package():
    for spec in peers.PEERS.values():
        assert spec["pins"] and all("==" in pin for pin in spec["pins"])
        assert not any(dep.split("=")[0].split(">")[0].strip().lower() in ("torch", "torchvision") for dep in spec["deps"])
        assert spec["against"] in peers.DREAMLET
    assert peers.TORCH == "torch==2.13.0"
