"""The autoencoder family (continuous latents) and latent diffusion on its latents."""
import json

import numpy as np
import pytest
import torch

from dreamlet.cli import main
from dreamlet.config import updated
from dreamlet.data.shapes import ShapesDataset
from dreamlet.images import to_tensor
from dreamlet.models.autoencoder import PRESETS, Autoencoder, AutoencoderConfig
from dreamlet.models.autoencoding import psnr
from dreamlet.pipeline import Pipeline

TINY = ["--preset", "tiny", "--batch-size", "4", "--sample-every", "0", "--checkpoint-every", "0"]


def tiny_autoencoder(size=32, **changes):
    return Autoencoder(updated(AutoencoderConfig(), PRESETS["tiny"] | {"image_size": size} | changes))


@pytest.mark.parametrize("size, downsample", [(32, 4), (64, 4), (64, 8)])
def test_autoencoder_round_trip_shapes(size, downsample):
    model = tiny_autoencoder(size, downsample=downsample)
    images = torch.rand(2, 3, size, size) * 2 - 1
    latents = model.encode(images)
    assert latents.shape == (2, model.config.latent_channels, size // downsample, size // downsample)
    assert model.decode(latents).shape == (2, 3, size, size) and model.decode(latents).abs().max() <= 1
    loss = model.loss(images, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_autoencoder_overfits_a_batch_and_the_discriminator_joins_on_time():
    torch.manual_seed(0)
    model = tiny_autoencoder(16, disc_start=150)
    images = to_tensor(ShapesDataset(16, 0).batch(0, 4)[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = psnr(model.decode(model.encode(images)), images)
    for _ in range(150):
        loss = model.loss(images, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = psnr(model.decode(model.encode(images)), images)
    assert after > before + 8 and after > 14  # 5 -> 16 dB: the tiny preset learns four shapes pictures
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())
    model.loss(images, generator=torch.Generator().manual_seed(0)).backward()  # step 150: the discriminator learns
    assert any(p.grad.abs().sum() > 0 for p in model.discriminator.parameters())


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A tiny latent diffusion model at 32 px: its autoencoder first, then the latent model."""
    run = tmp_path_factory.mktemp("latent")
    assert main(["train", "--model", "latent-diffusion", "--size", "32", "--steps", "6", "--out", str(run), *TINY]) == 0
    return run


def test_latent_diffusion_trains_its_autoencoder_first_and_draws_at_the_pixel_size(latent_run, tmp_path, capsys):
    model = latent_run / "model"
    config = json.loads((model / "config.json").read_text())["model"]
    assert config["image_size"] == 32 and config["autoencoder"]["image_size"] == 32
    assert config["autoencoder_dir"] == str((latent_run / "autoencoder" / "model").resolve())
    assert 0 < config["latent_scale"] < 1e3
    pipe = Pipeline.load(model)
    assert pipe.model.noise_shape == (config["autoencoder"]["latent_channels"], 8, 8)
    pictures = pipe.draw(["a red circle", "a blue square"], [1, 2], steps=3)
    assert pictures.shape == (2, 32, 32, 3) and pictures.dtype == np.uint8
    assert main(["sample", "--model", str(model), "--prompt", "a red circle", "--num", "2", "--steps", "3",
                 "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 2


def test_latent_diffusion_save_load_draws_the_same_pictures(latent_run, tmp_path):
    pipe = Pipeline.load(latent_run / "model")
    pipe.save(tmp_path / "copy")
    again = Pipeline.load(tmp_path / "copy")
    prompts = ["a large green diamond at the center"]
    assert np.array_equal(pipe.draw(prompts, [7], steps=4), again.draw(prompts, [7], steps=4))
    assert not any(k.startswith("autoencoder.discriminator") for k in again.model.state_dict())


def test_a_trained_autoencoder_is_reused_and_evaluated(latent_run, tmp_path, capsys):
    autoencoder = latent_run / "autoencoder" / "model"
    run = tmp_path / "reuse"
    assert main(["train", "--model", "latent-diffusion", "--autoencoder", str(autoencoder), "--size", "32",
                 "--steps", "2", "--out", str(run), *TINY]) == 0
    assert not (run / "autoencoder").exists()  # given, not trained again
    assert main(["eval", "--model", str(autoencoder), "--prompts", "4"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction PSNR" in out and "% of pairs" in out
    report = json.loads((latent_run / "autoencoder" / "eval.json").read_text())
    assert report["kind"] == "autoencoder" and set(report["judged"]) == {"single", "pair"}


@pytest.mark.parametrize("argv, message", [
    (["--autoencoder", "{ae}", "--size", "16"], "works at 32 px, not --size 16"),
    (["--autoencoder", "{tmp}"], "not a dreamlet model directory"),
    (["--set", "autoencoder_share=1.5"], "autoencoder_share=1.5"),
])
def test_bad_autoencoder_settings_are_one_line(latent_run, tmp_path, capsys, argv, message):
    argv = [a.format(ae=latent_run / "autoencoder" / "model", tmp=tmp_path) for a in argv]
    args = ["train", "--model", "latent-diffusion", "--steps", "2", "--out", str(tmp_path / "r"), *TINY]
    assert main(args + (argv if "--size" in argv else argv + ["--size", "32"])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_an_autoencoder_does_not_draw(latent_run, tmp_path, capsys):
    assert main(["sample", "--model", str(latent_run / "autoencoder" / "model"), "--prompt", "a red circle",
                 "--out", str(tmp_path / "o")]) == 2
    assert "an autoencoder model does not draw pictures" in capsys.readouterr().err


def test_a_user_folder_at_64_px_end_to_end(tmp_path, capsys):
    """The user's own pictures, wide and tall, with caption files: inspected, trained (its autoencoder
    first), resumed and sampled at 64 px, all from the CLI, with one broken file skipped."""
    from PIL import Image
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
    for i in range(24):
        name, rgb = list(colours.items())[i % 4]
        width, height = [(96, 64), (64, 96), (80, 80)][i % 3]
        picture = np.full((height, width, 3), 255, np.uint8)
        picture[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = rgb
        Image.fromarray((picture * rng.uniform(0.9, 1.0)).astype(np.uint8)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"a {name} box number {i}")
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / "broken.txt").write_text("a broken picture")
    sheet = tmp_path / "inspect.png"
    assert main(["data", "inspect", str(folder), "--size", "64", "--fit", "pad", "--sheet", str(sheet)]) == 0
    report = capsys.readouterr().out
    assert "24 usable" in report and "skipped:   1 (1 not an image)" in report and "16 of 24 pictures not square" in report
    assert Image.open(sheet).size[0] > 64
    run = tmp_path / "run"
    args = ["train", "--model", "latent-diffusion", "--data", str(folder), "--size", "64", "--fit", "pad",
            "--out", str(run), *TINY]
    assert main(args + ["--steps", "4"]) == 0
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert main(["sample", "--model", str(run / "model"), "--prompt", "a purple box", "--num", "2", "--steps", "3",
                 "--out", str(tmp_path / "o")]) == 0
    pictures = sorted((tmp_path / "o").glob("*.png"))
    assert len(pictures) == 2 and all(Image.open(p).size == (64, 64) for p in pictures)
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "autoencoder" / "model"), "--data", str(folder), "--prompts", "2"]) == 2
    assert "holds nothing out (fewer than 100 pictures)" in capsys.readouterr().err  # said, not a traceback


def test_latent_inpainting_keeps_the_pixels_outside_the_mask_and_img2img_starts_from_the_picture(latent_run):
    pipe = Pipeline.load(latent_run / "model")
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[:, 16:] = True
    out = pipe("a red circle", num=2, steps=3, image=picture, mask_image=mask.astype(np.uint8) * 255, output="np")
    assert all(np.array_equal(image[~mask], picture[~mask]) for image in out.images)
    assert np.array_equal(pipe("a red circle", steps=3, image=picture, strength=0.0, output="np").images[0], picture)
    assert pipe("a red circle", steps=3, image=picture, strength=0.6, output="np").images.shape == (1, 32, 32, 3)
