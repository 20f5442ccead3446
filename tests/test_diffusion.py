import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamlet.checkpoint import UserError
from dreamlet.config import updated
from dreamlet.models import get_family
from dreamlet.models.diffusion import PRESETS, DiffusionConfig, TextToImageDiffusion
from dreamlet.models.diffusion.denoiser import DETAIL_TIME, Condition, Denoiser, dynamic_threshold
from dreamlet.models.diffusion.sampling import SAMPLERS
from dreamlet.models.diffusion.schedule import alpha_sigma, sampling_times
from dreamlet.pipeline import Pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "diffusion-v1"


def tiny(size=32):
    return updated(DiffusionConfig(), dict(PRESETS["tiny"], image_size=size,
                                           text=dict(PRESETS["tiny"]["text"], vocab_size=64)))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_model_output_shapes(size):
    torch.manual_seed(0)
    model = TextToImageDiffusion(tiny(size))
    x, t = torch.randn(2, 3, size, size), torch.rand(2)
    ids = torch.randint(4, 64, (2, 24))
    assert model.denoiser.velocity(x, t, model.condition(ids)).shape == (2, 3, size, size)
    loss = model.loss(x, ids, ids[:1], torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_recover_a_perfect_denoiser(name):
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    out = SAMPLERS[name](lambda x, t: target, torch.randn(2, 3, 8, 8), sampling_times(10))
    assert torch.allclose(out, target, atol=1e-5)


def randomized(model):
    """Leave the zero-initialised starting point (which predicts 0 for any input), so inputs matter."""
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def velocity(model, x, t, ids):
    return model.denoiser.velocity(x, t, model.condition(ids))


def test_caption_layout_is_a_caption_dependent_bias_that_reaches_the_output():
    model = randomized(TextToImageDiffusion(tiny(16)))
    cond = model.condition(torch.randint(4, 64, (2, 24)))
    assert cond.bias.shape == (2, 4 * 4, 32) and not torch.allclose(cond.bias[0], cond.bias[1])
    x, t, ids = torch.randn(1, 3, 16, 16), torch.rand(1), torch.randint(4, 64, (1, 24))
    with_layout = velocity(model, x, t, ids)
    torch.nn.init.zeros_(model.preview.to_tokens.weight), torch.nn.init.zeros_(model.preview.to_tokens.bias)
    assert not torch.allclose(with_layout, velocity(model, x, t, ids))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = TextToImageDiffusion(tiny(16))
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    ids = torch.randint(4, 64, (8, 24))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):  # the same noise and timesteps every step: a pure memorisation check
        loss = model.loss(x, ids, ids[:1], torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The preview's share cannot reach 0: the tiny preset's rank-4 layout cannot hold 8 random pictures.
    with torch.no_grad():
        preview_error = torch.nn.functional.mse_loss(model.condition(ids).preview, x).item()
    denoising = losses[-1] - model.config.preview.weight * preview_error
    assert denoising < 0.1 * losses[0] and losses[-1] < 0.5 * losses[0]


def test_seeded_sampling_is_deterministic_and_guidance_and_steps_matter(tiny_run):
    pipe = Pipeline.load(tiny_run / "model")
    prompts = ["a small red circle at the top left", "a blue circle above a red square"]
    a = pipe.draw(prompts, [1, 2], steps=5)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert (a == pipe.draw(prompts, [1, 2], steps=5)).all()
    assert not (a == pipe.draw(prompts, [3, 4], steps=5)).all()
    assert not (a == pipe.draw(prompts, [1, 2], steps=5, guidance=8.0)).all()
    assert not (a == pipe.draw(prompts, [1, 2], steps=3)).all()


def test_save_load_gives_identical_samples(tiny_run, tmp_path):
    pipe = Pipeline.load(tiny_run / "model")
    pipe.save(tmp_path / "copy")
    again = Pipeline.load(tmp_path / "copy")
    prompts = ["a large green diamond at the center"]
    assert (pipe.draw(prompts, [7], steps=4) == again.draw(prompts, [7], steps=4)).all()
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tiny_run / "model").iterdir())
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["config_version"] == 4


@pytest.mark.parametrize("power", [2.0, 8.0])
def test_caption_preview_is_the_clean_estimate_at_pure_noise(power):
    """A network that predicts nothing (its zero-initialised output) still gives the caption's preview
    as its clean estimate at t = 1, sigma^power of it on the way, none at t = 0."""
    model = TextToImageDiffusion(updated(tiny(16), {"preview": {"power": power}}))
    torch.manual_seed(2)
    torch.nn.init.normal_(model.preview.to_picture.weight, std=0.5)
    ids = torch.randint(4, 64, (2, 24))
    preview = model.condition(ids).preview                                      # (2, 3, 16, 16)
    assert preview.shape == (2, 3, 16, 16) and not torch.allclose(preview[0], preview[1])
    x = torch.randn(2, 3, 16, 16)
    for t in (1.0, 0.6, 0.0):
        a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(torch.full((2,), t)))
        x0 = a * x - s * velocity(model, x, torch.full((2,), t), ids)
        assert torch.allclose(x0, a * x + s ** power * preview, atol=1e-5)


def test_without_a_preview_the_model_is_the_plain_denoiser():
    """preview.rank=0 (the ablation of docs/benchmarks.md): no preview module, no bias, no preview loss,
    and the network's velocity is the denoiser's own."""
    model = TextToImageDiffusion(updated(tiny(16), {"preview": {"rank": 0}}))
    assert model.preview is None and not any(name.startswith("preview.") for name in model.state_dict())
    ids, x, t = torch.randint(4, 64, (2, 24)), torch.randn(2, 3, 16, 16), torch.rand(2)
    cond = model.condition(ids)
    assert cond.bias is None and cond.preview is None
    torch.nn.init.normal_(model.net.head.weight)  # zero-initialised: the output would be 0 whatever was added
    assert torch.equal(model.denoiser.velocity(x, t, cond), model.net(x, t, cond.text, cond.keep, cond.pooled))
    generator = torch.Generator().manual_seed(0)
    plain = model.denoiser.loss(x, torch.full((2,), 0.5), torch.randn(x.shape, generator=generator), cond)
    assert torch.isfinite(plain) and torch.isfinite(model.loss(x, ids, ids[:1], torch.Generator().manual_seed(0)))
    pictures = model.generate(ids, ids[:1], torch.randn(2, 3, 16, 16), steps=2)
    assert pictures.shape == (2, 3, 16, 16)


def test_preview_loss_trains_the_layout_towards_the_picture():
    torch.manual_seed(0)
    model = TextToImageDiffusion(tiny(16))
    # Two captions, each always with its own picture: a bright left half, or a bright right half.
    left = -torch.ones(3, 16, 16)
    left[:, :, :8] = 1
    images = torch.stack([left, left.flip(-1)] * 2)
    ids = torch.randint(4, 64, (2, 24)).repeat(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    error = lambda: torch.nn.functional.mse_loss(model.condition(ids).preview, images).item()  # noqa: E731
    before = error()
    for _ in range(100):
        loss = model.loss(images, ids, torch.zeros(1, 24, dtype=torch.long), torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.1 * before


def test_layout_reads_the_words_and_ignores_padding():
    model = randomized(TextToImageDiffusion(tiny(16)))
    ids = torch.tensor([[1, 5, 6, 7, 2] + [0] * 19, [1, 5, 9, 7, 2] + [0] * 19])
    layout = model.preview.layout(*model.text_encoder(ids))                      # (2, N, rank)
    assert layout.shape == (2, 16, 4) and not torch.allclose(layout[0], layout[1])
    short = model.preview.layout(*model.text_encoder(ids[:1, :8]))
    assert torch.allclose(layout[:1], short, atol=1e-5)


# ----------------------------------------------------------------------------- the denoiser layer

class Scaled(torch.nn.Module):
    """A stand-in network: v = 0.1 x + the caption's mean feature, so guidance visibly matters."""

    def forward(self, x, t, text, keep, pooled, extra=None, bias=None):
        return 0.1 * x[:, :3] + pooled.mean(1).view(-1, 1, 1, 1)


def test_guidance_mixes_the_two_halves_and_one_draws_the_caption_alone():
    denoiser = Denoiser(Scaled())
    text = torch.zeros(2, 1, 4)
    cond = Condition(text, torch.ones(2, 1, dtype=torch.bool), torch.tensor([[1.0] * 4, [0.0] * 4]))
    x, t = torch.randn(1, 3, 4, 4), torch.tensor(0.5, dtype=torch.float64)
    a, s = alpha_sigma(t)
    conditional, unconditional = ((a * x - s * (0.1 * x + c)).float() for c in (1.0, 0.0))
    guided = denoiser.guided(cond, 3.0)(x, t)
    assert torch.allclose(guided, (unconditional + 3 * (conditional - unconditional)).clamp(-1, 1), atol=1e-6)
    alone = denoiser.guided(Condition(text[:1], cond.keep[:1], cond.pooled[:1]), 1.0)(x, t)
    assert torch.allclose(alone, conditional.clamp(-1, 1), atol=1e-6)


def test_guidance_keeps_its_detail_share_below_the_detail_time_only():
    """guidance_detail = 0.5 with guidance 3: scale 3 while the layout is decided (t >= 0.6), 2 below."""
    denoiser = Denoiser(Scaled())
    cond = Condition(torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool), torch.tensor([[0.5] * 4, [0.0] * 4]))
    x = torch.randn(1, 3, 4, 4) * 0.1
    for t, scale in [(0.9, 3.0), (DETAIL_TIME, 3.0), (0.59, 2.0), (0.1, 2.0)]:
        t = torch.tensor(t, dtype=torch.float64)
        a, s = alpha_sigma(t)
        conditional, unconditional = ((a * x - s * (0.1 * x + c)).float() for c in (0.5, 0.0))
        expected = (unconditional + scale * (conditional - unconditional)).clamp(-1, 1)
        assert torch.allclose(denoiser.guided(cond, 3.0, detail=0.5)(x, t), expected, atol=1e-6)
        same = (unconditional + 3.0 * (conditional - unconditional)).clamp(-1, 1)
        assert torch.allclose(denoiser.guided(cond, 3.0)(x, t), same, atol=1e-6)  # the default: constant
    model = TextToImageDiffusion(tiny(16))
    ids, empty, noise = torch.randint(4, 64, (1, 24)), torch.zeros(1, 24, dtype=torch.long), torch.randn(1, 3, 16, 16)
    model.config.guidance_detail = 1.0
    constant = model.generate(ids, empty, noise, steps=4)
    model.config.guidance_detail = 0.5
    assert not torch.equal(model.generate(ids, empty, noise, steps=4), constant)


def test_a_version_3_model_keeps_constant_guidance_and_a_new_one_guides_less_below_the_detail_time(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "model", tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config["config_version"] == 4 and config["model"]["guidance_detail"] == 0.5
    del config["model"]["guidance_detail"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config | {"config_version": 3}))
    assert Pipeline.load(tmp_path / "old").model.config.guidance_detail == 1.0
    assert DiffusionConfig().guidance_detail == 0.5


def test_dynamic_threshold_divides_overshooting_estimates_and_keeps_others():
    inside = torch.rand(2, 3, 4, 4) * 2 - 1
    assert torch.equal(dynamic_threshold(inside, 0.995), inside)
    over = inside * 3
    out = dynamic_threshold(over, 0.995)
    assert out.abs().max() <= 1 and torch.allclose(out, over / over.flatten(1).abs().max(1).values.view(-1, 1, 1, 1),
                                                   atol=1e-6)
    assert torch.equal(dynamic_threshold(over, 0.0), over.clamp(-1, 1))


def test_every_sampler_goes_through_the_denoiser(monkeypatch):
    model = TextToImageDiffusion(tiny(16))
    calls = []
    guided = Denoiser.guided
    monkeypatch.setattr(Denoiser, "guided", lambda self, *a: calls.append(a[1]) or guided(self, *a))
    for sampler in SAMPLERS:
        model.generate(torch.randint(4, 64, (1, 24)), torch.zeros(1, 24, dtype=torch.long), torch.randn(1, 3, 16, 16),
                       steps=2, guidance=2.0, sampler=sampler)
    assert calls == [2.0] * len(SAMPLERS)


# ----------------------------------------------------------------------------- saved configs

def test_a_version_1_model_directory_loads_through_the_migration_and_draws_the_same_pictures():
    """The fixture was written by dreamlet before config versions (commit d5bd8fb), with the pictures it drew."""
    pipe = Pipeline.load(FIXTURE)
    prompts = ["a large red circle at the top left", "a small blue square", "a green triangle to the left of a yellow circle"]
    drawn = np.concatenate([pipe.draw(prompts, [0, 1, 2], steps=6),
                            pipe.draw(prompts, [3, 4, 5], steps=6, sampler="ddim", guidance=1.0)])
    assert np.array_equal(drawn, np.load(FIXTURE.parent / "diffusion-v1-pictures.npy"))
    assert pipe.model.config.preview.rank == 4 and pipe.model.config.image_size == 16


@pytest.mark.parametrize("change, words", [
    ({"network": "unet"}, "network=unet"), ({"self_condition": True}, "self_condition"),
    ({"guidance_schedule": "linear"}, "guidance_schedule=linear"), ({"dit": {"text_mode": "joint"}}, "text_mode=joint"),
    ({"dit": {"layout_input": "tokens"}}, "no caption preview"), ({"dit": {"pooled_text": False}}, "pooled_text")])
def test_a_removed_experiment_is_refused_in_one_line(tmp_path, change, words):
    model = tmp_path / "model"
    shutil.copytree(FIXTURE, model)
    meta = json.loads((model / "config.json").read_text())
    for key, value in change.items():
        meta["model"][key] = meta["model"][key] | value if isinstance(value, dict) else value
    (model / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=words) as error:
        Pipeline.load(model)
    assert "\n" not in str(error.value) and "d5bd8fb" in str(error.value)


def test_a_config_from_a_newer_dreamlet_is_refused():
    with pytest.raises(UserError, match="newer dreamlet"):
        get_family("diffusion").load_config({}, 99)
