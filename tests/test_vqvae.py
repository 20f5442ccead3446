"""The image tokenizers (`--model vqvae`): codes, codebook updates, and the CLI path."""
import json

import pytest
import torch
import torch.nn.functional as F

from dreamlet.checkpoint import load_tensors
from dreamlet.cli import main
from dreamlet.config import updated
from dreamlet.data.shapes import ShapesDataset
from dreamlet.evaluation import judged_reconstructions
from dreamlet.images import to_tensor
from dreamlet.models.autoencoding import psnr
from dreamlet.models.vqvae import KINDS, PRESETS, VQConfig, VQModel
from dreamlet.pipeline import Pipeline

TINY = ["--preset", "tiny", "--size", "16", "--steps", "3", "--batch-size", "8", "--sample-every", "0",
        "--checkpoint-every", "0"]


def tiny(size=16, **changes):
    torch.manual_seed(0)
    return VQModel(updated(VQConfig(), PRESETS["tiny"] | {"image_size": size} | changes))


def shapes(count=8, size=16, start=0):
    return to_tensor(ShapesDataset(size).batch(start, count)[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_encode_and_decode_shapes(kind, size):
    model = tiny(size, kind=kind).eval()
    codes = model.encode(torch.rand(3, 3, size, size) * 2 - 1)
    assert model.grid == size // 4 and codes.shape == (3, size // 4, size // 4) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < model.config.codebook_size
    images = model.decode(codes)
    assert images.shape == (3, 3, size, size) and images.abs().max() <= 1


def test_bad_configs_name_what_is_allowed():
    with pytest.raises(ValueError, match="vq, dvae, vqgan"):
        tiny(kind="vqvae2")
    with pytest.raises(ValueError, match="power of two"):
        tiny(downsample=3)


def test_quantisation_picks_the_nearest_code_exactly():
    model = tiny().eval()
    z = model.project(shapes())                                        # (B, h, w, D) unit vectors
    distances = torch.cdist(z.reshape(-1, z.shape[-1]), model.codebook)
    assert torch.equal(model.encode(shapes()).flatten(), distances.argmin(1))
    # codes near a hand-picked code map back to it
    chosen = torch.randint(0, model.config.codebook_size, (50,), generator=torch.Generator().manual_seed(0))
    near = F.normalize(model.codebook[chosen] + 1e-3 * torch.randn(50, model.config.code_dim), dim=1)
    assert torch.equal(model.nearest(near), chosen)


def test_decoding_is_deterministic_and_each_picture_is_coded_alone():
    model = tiny().eval()
    images = shapes()
    codes = model.encode(images)
    assert torch.equal(model.decode(codes), model.decode(codes.clone()))
    assert torch.equal(model.encode(images[:1]), codes[:1])           # batch companions change nothing
    assert torch.allclose(model.decode(codes[:1]), model.decode(codes)[:1], atol=1e-6)


def test_a_tokenizer_overfitted_on_a_batch_gives_its_codes_back():
    """After a short overfit, encoding the decoded codes gives back nearly all of them, and where a
    code changes (two codes for nearly the same patch) the picture does not: the codes carry it."""
    model = tiny(width=32).train()
    images = shapes(4)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(images, None, None, generator).backward()
        optimizer.step()
    model.eval()
    codes = model.encode(images)
    pictures = model.decode(codes)
    again = model.encode(pictures)
    assert (again == codes).float().mean() >= 0.9                      # this run: 63 of 64
    assert psnr(model.decode(again), pictures) > 35                    # this run: 46.6 dB
    assert psnr(pictures, images) > 24                                 # this run: 26.5 dB


def test_ema_codebook_moves_toward_the_assigned_encoder_outputs():
    model = tiny(ema_decay=0.5, dead_below=0.0).train()                # no restarts here
    with torch.no_grad():
        grid = model.project(shapes())                                 # (B, h, w, D)
    codes = model.nearest(grid)
    before_sum, before = model.embed_sum.clone(), model.codebook.clone()
    model.update_codebook(grid, codes, torch.Generator().manual_seed(0))
    z, codes = grid.reshape(-1, model.config.code_dim), codes.flatten()
    sums = torch.zeros_like(before_sum).index_add_(0, codes, z)
    assert torch.allclose(model.embed_sum, 0.5 * before_sum + 0.5 * sums, atol=1e-6)
    assert torch.allclose(model.codebook, F.normalize(model.embed_sum, dim=1))
    for k in codes.unique():
        mean = F.normalize(z[codes == k].mean(0), dim=0)
        assert mean @ model.codebook[k] >= mean @ before[k] - 1e-6    # closer to what it codes
    unused = torch.ones(model.config.codebook_size, dtype=torch.bool)
    unused[codes] = False
    assert torch.allclose(model.codebook[unused], before[unused], atol=1e-6)  # unused codes only shrink in count
    # eval mode (the EMA model, encode) never moves the codebook
    model.eval()
    frozen = model.codebook.clone()
    model.loss(shapes(), None, None)
    assert torch.equal(model.codebook, frozen)


def test_dead_codes_restart_at_batch_outputs_repeatably():
    def restarted(seed):
        model = tiny().train()
        with torch.no_grad():
            grid = model.project(shapes())                             # (B, h, w, D)
            codes = model.nearest(grid)
            dead = torch.tensor([k for k in range(model.config.codebook_size) if k not in codes][:5])
            model.cluster_size.fill_(1.0)
            model.cluster_size[dead] = 0.0                             # five codes this batch does not use
        model.update_codebook(grid, codes, torch.Generator().manual_seed(seed))
        return model, grid.reshape(-1, model.config.code_dim), dead
    model, z, dead = restarted(0)
    for k in dead:  # each dead code now sits on one of the batch's encoder outputs, with a fresh count
        assert (z - model.codebook[k]).norm(dim=1).min() < 1e-5
    assert torch.allclose(model.cluster_size[dead], torch.full((5,), 3 * model.config.dead_below))
    assert (model.cluster_size > 0.5).sum() == model.config.codebook_size - 5   # the living are left alone
    assert torch.equal(restarted(0)[0].codebook, model.codebook)       # the generator decides: repeatable
    assert not torch.equal(restarted(1)[0].codebook, model.codebook)


def test_dvae_anneals_its_temperature_and_vqgan_starts_its_discriminator_late():
    model = tiny(kind="dvae").train()
    model.loss(shapes(), None, None, torch.Generator().manual_seed(0)).backward()
    assert model.step.item() == 1 and model.codebook.grad.abs().sum() > 0   # the embedding learns
    logits = model.project(shapes())
    assert torch.equal(model.encode(shapes()), logits.argmax(-1))

    model = tiny(kind="vqgan", disc_start=1).train()
    model.loss(shapes(), None, None).backward()
    assert all(p.grad is None for p in model.discriminator.parameters())    # reconstruction alone at first
    model.loss(shapes(), None, None).backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.discriminator.parameters() if p.ndim > 1)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_trains_each_kind_into_a_loadable_tokenizer(tmp_path, kind, capsys):
    run = tmp_path / kind
    assert main(["train", "--model", "vqvae", *TINY, "--set", f"kind={kind}", "--out", str(run)]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["family"] == "vqvae" and config["model"]["kind"] == kind and config["train"]["weight_decay"] == 0
    assert (run / "train_log.csv").read_text().splitlines()[0].endswith("psnr,usage")
    pipeline = Pipeline.load(run / "model")
    codes = pipeline.model.encode(shapes())
    assert codes.shape == (8, 4, 4) and pipeline.model.decode(codes).shape == (8, 3, 16, 16)
    if kind != "dvae":  # the saved tokenizer holds the trained codebook, not the one it started with
        state = load_tensors(run / "checkpoint" / "state.safetensors")
        assert torch.equal(pipeline.model.codebook, state["model.codebook"])
        assert not torch.equal(pipeline.model.codebook, tiny(kind=kind).codebook)

    report = tmp_path / "report"
    assert main(["eval", "--model", str(run / "model"), "--prompts", "4", "--out", str(report)]) == 0
    figures = json.loads(report.with_suffix(".json").read_text())
    assert figures["pictures"] == 12 and figures["kind"] == kind and 0 < figures["usage"] <= 1
    assert figures["psnr"] > 0 and 1 <= figures["perplexity"] <= figures["codes_used"]
    assert "| reconstruction PSNR |" in report.with_suffix(".md").read_text()
    assert set(figures["judged"]) == {"single", "pair"} and all(0 <= v <= 1 for v in figures["judged"].values())
    assert "the exact judge passes" in report.with_suffix(".md").read_text()
    out = capsys.readouterr().out
    assert "reconstruction PSNR" in out and "% of pairs" in out

    assert main(["sample", "--model", str(run / "model"), "--prompt", "a red circle",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamlet: error:") and len(err.splitlines()) == 1

    # saved by a dreamlet before config version 3, with the text encoder config it never used
    assert "text" not in config["model"] and config["config_version"] == 3
    config["model"]["text"], config["config_version"] = {"width": 64, "max_length": 24}, 2
    (run / "model" / "config.json").write_text(json.dumps(config))
    assert torch.equal(Pipeline.load(run / "model").model.encode(shapes()), codes)


def test_older_configs_load_through_the_migrations():
    from dreamlet.config import to_dict
    from dreamlet.models import get_family
    saved = to_dict(VQConfig()) | {"text": {"width": 64, "token_std": 0.02}}
    for version in (None, 1, 2):  # None: saved before config versions
        assert get_family("vqvae").load_config(saved, version) == VQConfig()
    with pytest.raises(ValueError, match="unknown VQConfig fields: text"):
        get_family("vqvae").load_config(saved, 3)


class Through:
    """An 'autoencoder' whose codes are the picture itself, and whose decoder may spoil it."""

    def __init__(self, spoil=lambda x: x):
        self.spoil = spoil

    def encode(self, images):
        return images

    def decode(self, images):
        return self.spoil(images)


def test_judged_reconstructions_are_the_share_of_new_scenes_the_judge_still_passes():
    assert judged_reconstructions(Through(), 32, "cpu", count=32) == {"single": 1.0, "pair": 1.0}
    assert judged_reconstructions(Through(torch.zeros_like), 32, "cpu", count=32) == {"single": 0.0, "pair": 0.0}
    # a decoder that loses the right third of the picture fails exactly the scenes with an object there
    blind = judged_reconstructions(Through(lambda x: x.index_fill(3, torch.arange(22, 32), -1.0)), 32, "cpu", count=64)
    assert 0.3 < blind["single"] < 0.95 and blind["pair"] < blind["single"]
