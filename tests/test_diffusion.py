import numpy as np
import pytest
import torch

from dreamlet.config import updated
from dreamlet.models.diffusion import PRESETS, DiffusionConfig, TextToImageDiffusion
from dreamlet.models.diffusion.sampling import SAMPLERS
from dreamlet.models.diffusion.schedule import alpha_sigma, sampling_times
from dreamlet.pipeline import Pipeline


# Network variants: dit-plain has linear patches (no conv stem), dit-joint reads the caption in
# self-attention, dit-nolayout has no layout path, dit-pooled the layout path without attention or
# preview (the default before the seventh round); "+sc" adds self-conditioning.
NO_PREVIEW = {"layout_preview": 0.0, "preview_residual": False}
VARIANTS = {"dit-plain": {"conv_width": 0}, "dit-joint": {"text_mode": "joint"},
            "dit-nolayout": {"layout_rank": 0, **NO_PREVIEW}, "dit-pooled": {"layout_input": "pooled", **NO_PREVIEW}}


def tiny(size=32, network="dit"):
    overrides = dict(PRESETS["tiny"])
    name, self_condition = network.removesuffix("+sc"), network.endswith("+sc")
    overrides = {"network": name.split("-")[0], "unet": dict(overrides["unet"], image_size=size),
                 "dit": dict(overrides["dit"], image_size=size, **VARIANTS.get(name, {})),
                 "text": dict(overrides["text"], vocab_size=64), "self_condition": self_condition}
    return updated(DiffusionConfig(), overrides)


@pytest.mark.parametrize("network", ["unet", "dit", "dit-plain", "dit-joint", "dit-nolayout", "dit-pooled", "dit+sc",
                                     "unet+sc"])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_model_output_shapes(size, network):
    torch.manual_seed(0)
    model = TextToImageDiffusion(tiny(size, network))
    x, t = torch.randn(2, 3, size, size), torch.rand(2)
    ids = torch.randint(4, 64, (2, 24))
    assert model.velocity(x, t, ids).shape == (2, 3, size, size)
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


def preview_of(model, ids):
    """The caption's preview picture, (B, 3, S, S)."""
    return model.net.preview(model.net.layout(*model.text_encoder(ids)))


def test_layout_path_writes_a_caption_dependent_bias_that_reaches_the_output():
    model = randomized(TextToImageDiffusion(tiny(16)))
    text, _, pooled = model.text_encoder(torch.randint(4, 64, (2, 24)))
    bias = model.net.layout_in(pooled)                        # (2, grid * grid * rank)
    assert bias.shape == (2, 4 * 4 * 4) and not torch.allclose(bias[0], bias[1])
    x, t, ids = torch.randn(1, 3, 16, 16), torch.rand(1), torch.randint(4, 64, (1, 24))
    with_layout = model.velocity(x, t, ids)
    torch.nn.init.zeros_(model.net.layout_out.weight), torch.nn.init.zeros_(model.net.layout_out.bias)
    assert not torch.allclose(with_layout, model.velocity(x, t, ids))


def test_self_conditioning_uses_the_previous_estimate():
    model = randomized(TextToImageDiffusion(tiny(16, "dit+sc")))
    x, t, ids = torch.randn(1, 3, 16, 16), torch.rand(1), torch.randint(4, 64, (1, 24))
    assert not torch.allclose(model.velocity(x, t, ids), model.velocity(x, t, ids, torch.ones_like(x)))
    assert torch.equal(model.velocity(x, t, ids), model.velocity(x, t, ids, torch.zeros_like(x)))


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
    # The preview's share cannot reach 0: the tiny preset's rank-4 layout path cannot hold 8 random pictures.
    with torch.no_grad():
        preview_error = torch.nn.functional.mse_loss(preview_of(model, ids), x).item()
    denoising = losses[-1] - model.config.dit.layout_preview * preview_error
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


def test_linear_guidance_schedule_changes_pictures_and_guidance_one_ignores_it(tiny_run):
    model = Pipeline.load(tiny_run / "model").model
    # A stand-in network whose caption matters a lot, so the scale visibly changes the result.
    model.velocity = lambda x, t, ids, previous=None: 0.1 * x + 0.05 * (ids.float().mean(1) > 0).view(-1, 1, 1, 1)
    ids, empty = torch.tensor([[1, 5, 6, 2]]), torch.zeros(1, 4, dtype=torch.long)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def draw(schedule, guidance):
        model.config.guidance_schedule = schedule
        return model.generate(ids, empty, noise, steps=5, guidance=guidance)
    assert not torch.allclose(draw("constant", 4.0), draw("linear", 4.0))
    assert torch.equal(draw("constant", 1.0), draw("linear", 1.0))
    with pytest.raises(ValueError, match="guidance_schedule"):
        draw("cosine", 4.0)


def test_save_load_gives_identical_samples(tiny_run, tmp_path):
    pipe = Pipeline.load(tiny_run / "model")
    pipe.save(tmp_path / "copy")
    again = Pipeline.load(tmp_path / "copy")
    prompts = ["a large green diamond at the center"]
    assert (pipe.draw(prompts, [7], steps=4) == again.draw(prompts, [7], steps=4)).all()
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tiny_run / "model").iterdir())


def test_unknown_guidance_schedule_is_refused_before_training(tmp_path, capsys):
    from dreamlet.cli import main
    assert main(["train", "--steps", "1", "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--set", "guidance_schedule=cosine"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown guidance_schedule 'cosine'" in err
    assert not (tmp_path / "r" / "model").exists()


def test_a_residual_without_a_preview_is_refused_in_one_line(tmp_path, capsys):
    from dreamlet.cli import main
    assert main(["train", "--steps", "1", "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--set", "dit.layout_preview=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "preview_residual needs a preview" in err


@pytest.mark.parametrize("power", [2.0, 8.0])
def test_caption_preview_is_the_clean_estimate_at_pure_noise(power):
    """With preview_residual, a network that predicts nothing (its zero-initialised output) still gives
    the caption's preview as its clean estimate at t = 1, sigma^power of it on the way, none at t = 0."""
    model = TextToImageDiffusion(updated(tiny(16), {"dit": {"preview_power": power}}))  # residual on by default
    torch.manual_seed(2)
    torch.nn.init.normal_(model.net.layout_preview.weight, std=0.5)
    ids = torch.randint(4, 64, (2, 24))
    preview = preview_of(model, ids)                                            # (2, 3, 16, 16)
    assert preview.shape == (2, 3, 16, 16) and not torch.allclose(preview[0], preview[1])
    x = torch.randn(2, 3, 16, 16)
    for t in (1.0, 0.6, 0.0):
        a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(torch.full((2,), t)))
        x0 = a * x - s * model.velocity(x, torch.full((2,), t), ids)
        assert torch.allclose(x0, a * x + s ** power * preview, atol=1e-5)


def test_preview_loss_trains_the_layout_path_towards_the_picture():
    torch.manual_seed(0)
    model = TextToImageDiffusion(tiny(16))  # the default: preview loss on, layout read by attention
    assert model.config.dit.layout_preview > 0 and model.config.dit.layout_input == "attention"
    # Two captions, each always with its own picture: a bright left half, or a bright right half.
    left = -torch.ones(3, 16, 16)
    left[:, :, :8] = 1
    images = torch.stack([left, left.flip(-1)] * 2)
    ids = torch.randint(4, 64, (2, 24)).repeat(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    error = lambda: torch.nn.functional.mse_loss(preview_of(model, ids), images).item()  # noqa: E731
    before = error()
    for _ in range(100):
        loss = model.loss(images, ids, torch.zeros(1, 24, dtype=torch.long), torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.1 * before


def test_attention_layout_reads_the_words_and_ignores_padding():
    model = randomized(TextToImageDiffusion(updated(tiny(16), {"dit": {"layout_input": "attention"}})))
    ids = torch.tensor([[1, 5, 6, 7, 2] + [0] * 19, [1, 5, 9, 7, 2] + [0] * 19])
    layout = model.net.layout(*model.text_encoder(ids))                          # (2, N, rank)
    assert layout.shape == (2, 16, 4) and not torch.allclose(layout[0], layout[1])
    short = model.net.layout(*model.text_encoder(ids[:1, :8]))
    assert torch.allclose(layout[:1], short, atol=1e-5)
