"""A diffusion model draws the best of its candidates by its own judgement (Pipeline.best_of without a CLIP)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.images import to_tensor
from dreamlet.models.diffusion.model import MATCH_TIMES
from dreamlet.models.diffusion.schedule import alpha_sigma

PROMPT = "a small red circle at the top left"


def test_match_is_minus_the_denoising_loss_at_its_noise_levels(tiny_run):
    model = dreamlet.load(tiny_run / "model")
    pictures = to_tensor(model.draw([PROMPT, "a blue square above a green triangle"], [0, 1], steps=2))
    ids, noise = model.tokenizer([PROMPT, PROMPT]), torch.randn(2, 3, 32, 32)
    match = model.model.match(pictures, ids, None, noise)
    with torch.no_grad():
        cond = model.model.condition(ids)
        for i in range(2):
            loss = sum(model.model.denoiser.loss(pictures[i:i + 1], torch.tensor([t]), noise[i:i + 1],
                                                 cond.__class__(**{k: None if v is None else v[i:i + 1]
                                                                   for k, v in vars(cond).items()}))
                       for t in MATCH_TIMES)
            assert torch.allclose(match[i], -loss, rtol=1e-4)
    assert alpha_sigma(torch.tensor(min(MATCH_TIMES)))[1] > 0.7  # only noise levels where the layout is open


def test_the_default_draws_the_best_of_four_and_its_seed_draws_it_again(tiny_run, tmp_path):
    pipe = dreamlet.load(tiny_run / "model")
    assert pipe.default_rerank() == pipe.model.config.rerank == 4
    drawn = pipe(PROMPT, seed=3, steps=2, output="numpy")
    assert drawn.seeds == [3] and drawn.settings["candidates"] == 4 and drawn.settings["chosen_by"] == "model"
    assert drawn.scores == [None]  # a CLIP score only when a CLIP chose
    candidates = pipe.draw([PROMPT] * 4, [12, 13, 14, 15], steps=2)
    match, _ = pipe.own_chooser()(candidates, PROMPT, 3)
    assert np.abs(drawn.images[0].astype(int) - candidates[int(match.argmax())]).max() <= 1
    assert np.array_equal(pipe(PROMPT, seed=3, steps=2, output="numpy").images, drawn.images)
    alone = pipe(PROMPT, seed=3, steps=2, rerank=1, output="numpy")
    assert "candidates" not in alone.settings
    # The CLI draws the same, and a PNG it wrote draws itself again.
    out = tmp_path / "cli"
    assert main(["sample", "--model", str(tiny_run / "model"), "--prompt", PROMPT, "--seed", "3", "--steps", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "index.jsonl").read_text())
    assert record["seed"] == 3 and record["candidates"] == 4 and record["chosen_by"] == "model"
    written = np.asarray(Image.open(out / record["file"]))
    assert np.array_equal(written, drawn.images[0])
    assert main(["sample", "--from-png", str(out / record["file"]), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "index.jsonl").read_text())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / again["file"])), written)


def test_the_judge_reports_how_it_drew(tiny_run, tmp_path):
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_run / "model"), "--prompts", "2", "--seeds", "1", "--steps", "2",
                 "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["rerank"] == 4
    assert main(["eval", "--model", str(tiny_run / "model"), "--prompts", "2", "--seeds", "1", "--steps", "2",
                 "--rerank", "1", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["rerank"] == 1


def test_a_model_saved_before_draws_one_picture_and_others_need_a_clip(tmp_path):
    from pathlib import Path
    old = dreamlet.load(Path(__file__).parent / "fixtures" / "diffusion-v1")
    assert old.model.config.rerank == 1 and old.default_rerank() == 1 and old.model.config.guidance_detail == 1.0
    run = tmp_path / "gan"
    assert main(["train", "--model", "gan", "--size", "16", "--steps", "1", "--out", str(run), "--set", "g_width=32",
                 "--set", "d_width=8", "--batch-size", "4"]) == 0
    gan = dreamlet.load(run / "model")
    assert gan.default_rerank() == 1
    with pytest.raises(UserError, match="a gan model cannot judge its own pictures: rerank with a CLIP"):
        gan("a red circle", rerank=2)
