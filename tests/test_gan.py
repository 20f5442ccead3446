import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamlet.cli import main
from dreamlet.config import to_dict, updated
from dreamlet.models.gan import FAMILY, PRESETS, GanConfig, TextToImageGAN, diff_augment, hash_noise
from dreamlet.pipeline import Pipeline

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0"]


def tiny(size=32, **changes):
    torch.manual_seed(0)
    config = updated(GanConfig(), PRESETS["tiny"] | {"image_size": size} | changes)
    return TextToImageGAN(config).eval()


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_and_discriminator_shapes(size):
    model = tiny(size)
    ids = torch.randint(5, 60, (3, 10))
    text = model.caption(ids)
    images = draw(model, torch.randn(3, model.config.noise_dim), ids)
    assert images.shape == (3, 3, size, size) and images.abs().max() <= 1
    assert model.discriminator(images, text).shape == (3,)
    assert model.generate(ids, ids[:1], torch.randn(3, 3, size, size)).shape == (3, 3, size, size)


def test_size_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        tiny(24)


def test_discriminator_score_depends_on_the_caption():
    model = tiny()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    a, b = torch.randint(5, 60, (4, 10)), torch.randint(5, 60, (4, 10))
    with torch.no_grad():
        for p in model.discriminator.project.parameters():  # the projection starts random, not zero
            assert p.abs().sum() > 0
        score_a = model.discriminator(images, model.caption(a))
        score_b = model.discriminator(images, model.caption(b))
    assert not torch.allclose(score_a, score_b)
    # the generator reads the caption too
    z = torch.randn(4, model.config.noise_dim)
    assert not torch.allclose(draw(model, z, a), draw(model, z, b))


def test_one_backward_pass_trains_generator_discriminator_and_text_encoder():
    model = tiny().train()
    images, ids = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(5, 60, (8, 10))
    d_loss, g_loss = model.losses(images, ids, torch.Generator().manual_seed(0))
    reached = lambda loss, params: [g is not None and g.abs().sum() > 0  # noqa: E731
                                    for g in torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)]
    text = list(model.text_encoder.parameters()) + list(model.text_to_cond.parameters())
    assert not any(reached(d_loss, model.generator.parameters()))  # fakes are detached for the discriminator
    assert not any(reached(g_loss, model.discriminator.parameters()))  # the generator's loss: a frozen discriminator
    assert all(reached(g_loss, model.generator.parameters()))
    assert any(reached(g_loss, text))  # the redrawing loss teaches the text encoder what the picture needs
    (d_loss + g_loss).backward()
    assert model.discriminator.project.parametrizations.weight.original.grad.abs().sum() > 0
    assert model.text_encoder.token.weight.grad.abs().sum() > 0

    # the adversarial loss alone reaches neither the discriminator nor the text encoder: it cannot bend the
    # caption's meaning to please the discriminator
    adversarial_only = tiny(regression=0.0).train()
    d_loss, g_loss = adversarial_only.losses(images, ids, torch.Generator().manual_seed(0))
    critic = [p for name, p in adversarial_only.named_parameters() if not name.startswith("generator.")]
    assert not any(reached(g_loss, critic)) and all(reached(g_loss, adversarial_only.generator.parameters()))
    assert any(reached(d_loss, adversarial_only.text_encoder.parameters()))  # the matching-aware term teaches it


def draw(model, z, ids):
    """The generator's pictures for noise z and token ids, as the model's passes call it."""
    return model.generator(z, *model.caption_and_words(ids))


def test_the_layout_stem_reads_the_words_place_by_place_and_older_models_go_without():
    model = tiny()
    ids = torch.randint(5, 60, (2, 10))
    noise = torch.randn(2, 3, 32, 32)
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=ids.dtype)], dim=1)
    assert torch.allclose(model.generate(ids, ids[:1], noise), model.generate(padded, ids[:1], noise), atol=1e-5)
    text, (tokens, keep) = model.caption_and_words(ids)
    z = torch.randn(2, model.config.noise_dim)
    with torch.no_grad():
        picture = model.generator(z, text, (tokens, keep))
        # the same pooled caption with the other caption's words: the places read other words
        reordered = model.generator(z, text, (tokens.roll(1, 0), keep.roll(1, 0)))
        start = model.generator.layout(torch.cat([z, text], 1), tokens, keep)
    assert not torch.allclose(picture, reordered, atol=1e-4)
    assert start.shape == (2, model.config.g_width, 4, 4)
    assert not torch.allclose(start[:, :, 0, 0], start[:, :, 3, 3])   # each place its own query
    assert model.config.text.conv == 3   # words that know their neighbours

    saved = to_dict(GanConfig())
    saved.pop("layout_heads"), saved["text"].pop("conv")
    old = FAMILY.load_config(saved, version=4)
    assert (old.layout_heads, old.text.conv) == (0, 0)
    assert not hasattr(TextToImageGAN(old).generator, "layout")
    assert FAMILY.load_config(to_dict(GanConfig()), 5).layout_heads == 4


def test_the_redrawing_loss_is_the_squared_error_to_the_captions_picture_and_older_models_go_without():
    model = tiny(adversarial=0.0, code_kl=0.0).train()
    images, ids = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(5, 60, (4, 10))
    _, g_loss = model.losses(images, ids, torch.Generator().manual_seed(0))
    z = torch.randn(4, model.config.noise_dim, generator=torch.Generator().manual_seed(0))
    expected = model.config.regression * F.mse_loss(draw(model, z, ids), images)
    assert torch.allclose(g_loss, expected)
    saved = to_dict(GanConfig())
    saved.pop("regression"), saved.pop("adversarial")
    old = FAMILY.load_config(saved, version=2)
    assert (old.regression, old.adversarial) == (0.0, 1.0)
    assert (FAMILY.load_config(to_dict(GanConfig()), 5).regression, GanConfig().adversarial) == (100.0, 0.1)


def test_the_noise_code_redraws_from_the_pictures_encoding_and_draws_from_the_captions_prior():
    model = tiny(adversarial=0.0).train()
    images, ids = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(5, 60, (4, 10))
    _, g_loss = model.losses(images, ids, torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(0)
    prior_noise = torch.randn(4, model.config.noise_dim, generator=rng)  # the adversarial pass's, drawn first
    q_mean, q_log_var = model.encoder(images)
    z = q_mean + (0.5 * q_log_var).exp() * torch.randn(q_mean.shape, generator=rng)
    p_mean, p_log_var = model.prior(model.caption(ids))
    prior = torch.distributions.Normal(p_mean, (0.5 * p_log_var).exp())
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(q_mean, (0.5 * q_log_var).exp()), prior)
    expected = (model.config.regression * F.mse_loss(draw(model, z, ids), images)
                + model.config.code_kl * kl.sum(1).mean())
    assert torch.allclose(g_loss, expected, rtol=1e-5)
    assert len(prior_noise) == 4 and model.history[-1]["kl"] == pytest.approx(kl.sum(1).mean().item(), rel=1e-5)

    # drawing reads its noise through the caption's prior, which starts as the normal prior
    noise = torch.randn(4, 3, 32, 32)
    assert torch.allclose(model.generate(ids, ids[:1], noise),
                          draw(model, noise.flatten(1)[:, :model.config.noise_dim], ids))
    with torch.no_grad():
        model.prior.net[-1].bias.fill_(0.5)  # a prior moved away from N(0, 1) moves the pictures
    assert not torch.allclose(model.generate(ids, ids[:1], noise),
                              draw(model, noise.flatten(1)[:, :model.config.noise_dim], ids))

    # the generator's loss trains the encoder and the prior, the discriminator's does not
    model = tiny().train()
    d_loss, g_loss = model.losses(images, ids, torch.Generator().manual_seed(1))
    coded = list(model.encoder.parameters()) + list(model.prior.net[-1].parameters())  # (its first layer waits for
    grads = torch.autograd.grad(g_loss, coded, retain_graph=True, allow_unused=True)  # the zero-started last one)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None for g in torch.autograd.grad(d_loss, coded, allow_unused=True))
    assert not hasattr(tiny(code_kl=0.0), "encoder") and not hasattr(tiny(regression=0.0), "prior")

    saved = to_dict(GanConfig())
    saved.pop("code_kl")
    assert FAMILY.load_config(saved, version=3).code_kl == 0.0  # saved before the code: drawn as before
    assert FAMILY.load_config(to_dict(GanConfig()), 5).code_kl == 0.3


def test_hash_baseline_ignores_the_seed_and_its_discriminator_ignores_the_text():
    model = tiny(conditioning="hash")
    ids = torch.randint(5, 60, (2, 10))
    assert torch.equal(hash_noise(ids, 8), hash_noise(ids.clone(), 8))
    assert not torch.equal(hash_noise(ids[:1], 8), hash_noise(ids[1:], 8))
    one = model.generate(ids, ids[:1], torch.randn(2, 3, 32, 32))
    two = model.generate(ids, ids[:1], torch.randn(2, 3, 32, 32))
    assert torch.equal(one, two)  # the picture is a function of the prompt alone
    assert model.discriminator.project is None and not hasattr(model, "text_encoder")


def test_collapse_is_detected():
    model = tiny().train()
    model.settle = 20
    images, ids = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(5, 60, (8, 10))
    for _ in range(20):
        model.loss(images, ids, ids[:1])
    assert model.health() is None  # a fresh generator draws varied pictures
    with torch.no_grad():  # every picture alike: the last conv's weights to zero leaves only its bias
        model.generator.out[2].weight.zero_()
    for _ in range(50):
        model.loss(images, ids, ids[:1])
    warning = model.health()
    assert warning and warning.startswith("mode collapse")


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diffaugment_keeps_shape_and_range_and_passes_gradients(policy):
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    y = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="unknown diffaugment"):
        diff_augment(x, "rotate", None)


@pytest.mark.parametrize("family", ["gan", "gan-hash"])
def test_cli_run_writes_a_loadable_model_and_save_load_gives_identical_samples(tmp_path, family):
    run = tmp_path / family
    assert main(["train", "--model", family, "--size", "16", "--steps", "3", "--out", str(run), *TINY,
                 "--set", "diffaugment=color,translation", "--set", "r1=0.1"]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["family"] == family and config["model"]["r1"] == 0.1
    assert config["train"]["lr"] == 5e-4  # the GAN's own default, not the diffusion model's
    header = (run / "train_log.csv").read_text().splitlines()[0]
    assert header.endswith("d_loss,g_loss,diversity" + (",kl" if family == "gan" else ""))
    prompts = ["a small red circle at the top left", "a blue square above a green triangle"]
    first = Pipeline.load(run / "model").draw(prompts, [0, 1])
    again = Pipeline.load(run / "model").draw(prompts, [0, 1])
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(run / "model"), "--prompt", prompts[0], "--num", "2", "--out", str(out)]) == 0
    assert len((out / "index.jsonl").read_text().splitlines()) == 2
    record = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert record["steps"] == 1 and record["guidance"] == 1.0 and record["sampler"] == "one forward pass"
    assert main(["sample", "--model", str(run / "model"), "--prompt", prompts[0], "--negative-prompt", "red",
                 "--out", str(out)]) == 2  # no unconditional branch to put it in: one line


def test_unknown_setting_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "gan", "--steps", "1", "--out", str(tmp_path / "r"), *TINY,
                 "--set", "wings=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dreamlet: error: --set: GanConfig has no field 'wings'"
    assert main(["train", "--model", "gan", "--steps", "1", "--out", str(tmp_path / "r"), *TINY, "--set", "r1"]) == 2


def test_a_gan_does_not_edit_pictures(tmp_path):
    from dreamlet.checkpoint import UserError
    run = tmp_path / "g"
    assert main(["train", "--model", "gan", "--size", "16", "--steps", "1", "--out", str(run), *TINY]) == 0
    with pytest.raises(UserError, match="a gan model does not edit pictures; a diffusion or latent-diffusion"):
        Pipeline.load(run / "model")("a red circle", image=np.zeros((16, 16, 3), np.uint8))
