"""Imagen completeness: the super-resolution stage, the cascade, dynamic thresholding and a frozen
pretrained text encoder."""
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.config import updated
from dreamlet.evaluation import evaluate_shapes
from dreamlet.models.diffusion import PRESETS as BASE_PRESETS, DiffusionConfig, TextToImageDiffusion
from dreamlet.models.diffusion.denoiser import dynamic_threshold
from dreamlet.models.diffusion.super_resolution import PRESETS, SuperResolutionConfig, SuperResolutionDiffusion
from dreamlet.pipeline import Pipeline

TINY = ["--preset", "tiny", "--batch-size", "4", "--sample-every", "0", "--checkpoint-every", "0"]
PROMPT = "a small red circle at the top left"


def tiny_sr(size=64, low=32):
    tiny = PRESETS["tiny"]
    return updated(SuperResolutionConfig(), {"image_size": size, "low_size": low, "dit": tiny["dit"],
                                             "text": dict(tiny["text"], vocab_size=64)})


def velocity(model, x, t, ids, low, level, noise=None):
    """The stage's v for noisy pictures x, given low-res pictures noised to `level` (by `noise`, else none)."""
    noise = torch.zeros_like(low) if noise is None else noise
    return model.denoiser.velocity(x, t, model.condition(ids, low, level, noise))


def randomized(model, std=0.05):
    """Leave the zero-initialised starting point (which predicts 0 for any input), so inputs matter."""
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model


# -- the super-resolution stage --------------------------------------------------------------------

@pytest.mark.parametrize("low, size", [(16, 32), (32, 64), (16, 64)])
def test_sr_output_shapes(low, size):
    torch.manual_seed(0)
    model = SuperResolutionDiffusion(tiny_sr(size, low))
    x, small = torch.randn(2, 3, size, size), torch.rand(2, 3, low, low) * 2 - 1
    ids, level = torch.randint(4, 64, (2, 24)), torch.full((2,), 0.3)
    assert model.condition(ids, small, level, torch.randn_like(small)).picture.shape == (2, 3, size, size)
    assert velocity(model, x, torch.rand(2), ids, small, level).shape == (2, 3, size, size)
    loss = model.loss(x, ids, ids[:1], torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = model.generate(ids, ids[:1], torch.randn(2, 3, size, size), steps=2, low=small, low_noise=torch.randn_like(small))
    assert out.shape == (2, 3, size, size) and out.abs().max() <= 1
    with pytest.raises(ValueError, match=f"upsamples {low} px pictures"):
        model.generate(ids, ids[:1], torch.randn(2, 3, size, size), steps=2, low=x, low_noise=x)


def test_low_res_input_is_the_box_filtered_picture_noised_to_its_level():
    model = SuperResolutionDiffusion(tiny_sr(64, 16))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    low = model.downsample(images)
    assert low.shape == (2, 3, 16, 16)
    assert torch.allclose(low[1, :, 2, 3], images[1, :, 8:12, 12:16].mean((1, 2)))  # the area average of its block
    noise, ids = torch.randn_like(low), torch.randint(4, 64, (2, 24))
    picture = lambda level: model.condition(ids, low, torch.full((2,), level), noise).picture  # noqa: E731
    clean = picture(0.0)
    assert torch.allclose(clean, F.interpolate(low, size=64, mode="bilinear", align_corners=False))  # level 0: no noise
    spread = [(picture(level) - clean).std() for level in (0.1, 0.3, 0.5)]
    assert 0 < spread[0] < spread[1] < spread[2]


def test_the_network_is_told_the_augmentation_level():
    model = randomized(SuperResolutionDiffusion(tiny_sr(32, 16)))
    x, t, ids = torch.randn(1, 3, 32, 32), torch.rand(1), torch.randint(4, 64, (1, 24))
    low = torch.randn(1, 3, 16, 16)
    # the same conditioning picture (noise-free), told two levels: the embedding changes the prediction
    assert not torch.allclose(velocity(model, x, t, ids, low, torch.zeros(1)),
                              velocity(model, x, t, ids, low, torch.full((1,), 0.4)))
    seen, condition = [], model.condition
    model.condition = lambda *args: seen.append(args[2]) or condition(*args)
    ids = torch.randint(4, 64, (16, 24))
    model.loss(torch.rand(16, 3, 32, 32) * 2 - 1, ids, ids[:1], torch.Generator().manual_seed(0))
    levels = seen[-1]  # training: a random level per picture, up to aug_max
    assert levels.shape == (16,) and levels.min() >= 0 and levels.max() <= model.config.aug_max and levels.std() > 0.05
    seen.clear()
    small = torch.rand(16, 3, 16, 16) * 2 - 1
    model.generate(ids, ids[:1], torch.randn(16, 3, 32, 32), steps=2, low=small, low_noise=torch.randn_like(small))
    assert seen and all(torch.all(level == model.config.aug_level) for level in seen)  # sampling: the fixed level


# -- dynamic thresholding --------------------------------------------------------------------------

def test_dynamic_threshold_keeps_estimates_in_range_and_rescales_rather_than_clips():
    torch.manual_seed(0)
    x0 = torch.randn(4, 3, 16, 16) * 3
    x0[1] = x0[1].clamp(-0.9, 0.9)
    out = dynamic_threshold(x0, 0.995)
    assert out.abs().max() <= 1
    assert torch.equal(out[1], x0[1])  # a picture inside [-1, 1] is left alone, whatever the others hold
    s = x0[0].abs().flatten().kthvalue(math.ceil(0.995 * x0[0].numel())).values
    inside = x0[0].abs() <= s
    assert torch.allclose(out[0][inside], x0[0][inside] / s)  # below the percentile: divided by s, order kept
    static = dynamic_threshold(x0, 0)
    assert torch.equal(static, x0.clamp(-1, 1))
    assert (static[0].abs() == 1).float().mean() > 0.5 and (out[0].abs() == 1).float().mean() < 0.01


def test_dynamic_thresholding_is_off_by_default_and_changes_pictures_at_high_guidance():
    tiny = BASE_PRESETS["tiny"]
    config = updated(DiffusionConfig(), dict(tiny, image_size=16, text=dict(tiny["text"], vocab_size=64)))
    model = randomized(TextToImageDiffusion(config), std=0.2)
    ids, noise = torch.randint(4, 64, (2, 24)), torch.randn(2, 3, 16, 16)

    def draw(guidance, percentile):
        model.config.dynamic_threshold = percentile
        return model.generate(ids, ids[:1], noise, steps=4, guidance=guidance)

    assert config.dynamic_threshold == 0 and SuperResolutionConfig().dynamic_threshold == 0  # static clipping
    assert not torch.allclose(draw(20, 0.995), draw(20, 0))  # at high guidance: rescaled, not clipped
    # the SR stage goes through the same denoiser layer
    sr = randomized(SuperResolutionDiffusion(tiny_sr(32, 16)), std=0.2)
    small, start = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 32, 32)

    def upsample(guidance, percentile):
        sr.config.dynamic_threshold = percentile
        return sr.generate(ids, ids[:1], start, steps=4, guidance=guidance, low=small, low_noise=torch.zeros_like(small))

    assert not torch.allclose(upsample(20, 0.995), upsample(20, 0))


# -- the cascade -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cascade(tiny_run, tmp_path_factory):
    """A 32 -> 64 px SR stage trained for 3 steps on the tiny 32 px base model, drawing a progress grid on the way."""
    run = tmp_path_factory.mktemp("cascade")
    assert main(["train", "--model", "diffusion-sr", "--base", str(tiny_run / "model"), "--size", "64", "--steps", "3",
                 "--out", str(run), *TINY, "--sample-every", "2"]) == 0
    return run


def test_cascade_trains_and_samples_at_the_sr_size(cascade, tmp_path):
    model = cascade / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["family"] == "diffusion-sr" and (config["model"]["low_size"], config["model"]["image_size"]) == (32, 64)
    assert json.loads((model / "base" / "config.json").read_text())["family"] == "diffusion"
    assert (cascade / "progress" / "step_000002.png").is_file()  # the cascade drew while it trained
    out = tmp_path / "out"
    assert main(["sample", "--model", str(model), "--prompt", PROMPT, "--num", "2", "--seed", "3", "--steps", "3",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [3, 4]
    pictures = [np.asarray(Image.open(out / r["file"])) for r in records]
    assert all(p.shape == (64, 64, 3) for p in pictures)
    pipe = dreamlet.load(model)
    assert pipe.sizes == [32, 64]
    images = pipe(PROMPT, num=2, seed=3, steps=3, output="numpy").images
    assert all(np.array_equal(p, image) for p, image in zip(pictures, images))  # the CLI and the API agree
    # a cascade's picture is exactly its base stage's picture for the same seed, upsampled
    low = pipe.base.draw([PROMPT] * 2, [3, 4], steps=3)
    assert low.shape == (2, 32, 32, 3)
    assert np.array_equal(pipe.upsample(low, [PROMPT] * 2, [3, 4], steps=3), images)


def test_cascade_sampling_is_seeded(cascade):
    prompts = [PROMPT, "a blue square above a green triangle"]
    first = dreamlet.load(cascade / "model").draw(prompts, [1, 2], steps=3)
    again = dreamlet.load(cascade / "model")
    assert np.array_equal(first, again.draw(prompts, [1, 2], steps=3))
    assert not np.array_equal(first, again.draw(prompts, [5, 6], steps=3))
    # the SR stage's own noise matters too: the same base picture, another SR seed, another picture
    low = again.base.draw(prompts, [1, 2], steps=3)
    assert not np.array_equal(again.upsample(low, prompts, [1, 2], steps=3), again.upsample(low, prompts, [7, 8], steps=3))


def test_cascade_save_load_gives_identical_pictures(cascade, tmp_path):
    pipe = Pipeline.load(cascade / "model")
    pipe.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "base" / "model.safetensors").is_file()
    again = Pipeline.load(tmp_path / "copy")
    assert np.array_equal(pipe.draw([PROMPT], [7], steps=3), again.draw([PROMPT], [7], steps=3))
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (cascade / "model").rglob("*"))


def test_eval_and_sample_at_each_stage_size(cascade, tmp_path, capsys):
    model = cascade / "model"
    assert evaluate_shapes(model, prompts=1, seeds=1, steps=2)["size"] == 64
    assert evaluate_shapes(model, prompts=1, seeds=1, steps=2, size=32)["size"] == 32  # the base stage alone
    assert main(["eval", "--model", str(model), "--size", "32", "--prompts", "1", "--seeds", "1", "--steps", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["size"] == 32
    assert main(["sample", "--model", str(model), "--prompt", PROMPT, "--size", "32", "--steps", "2",
                 "--out", str(tmp_path / "low")]) == 0
    assert Image.open(next((tmp_path / "low").glob("*.png"))).size == (32, 32)
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--prompt", PROMPT, "--size", "16", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "dreamlet: error: this cascade draws at 32 or 64 px, not 16 px"


def test_sizes_that_do_not_chain_are_one_line(tiny_run, cascade, tmp_path, capsys):
    base = str(tiny_run / "model")
    for size in ("16", "32"):
        assert main(["train", "--model", "diffusion-sr", "--base", base, "--size", size, "--steps", "1",
                     "--out", str(tmp_path / f"r{size}"), *TINY]) == 2
        assert capsys.readouterr().err.strip() == (
            "dreamlet: error: sizes do not chain: the base model draws 32 px pictures, so --size must be a larger "
            f"multiple of 32 (such as 64), not {size}")
    assert main(["train", "--model", "diffusion-sr", "--size", "64", "--set", "low_size=24", "--steps", "1",
                 "--out", str(tmp_path / "r24"), *TINY]) == 2
    assert capsys.readouterr().err.strip() == \
        "dreamlet: error: sizes do not chain: low_size 24 px must divide --size 64 px and be smaller"
    assert main(["train", "--model", "diffusion", "--base", base, "--steps", "1", "--out", str(tmp_path / "d"), *TINY]) == 2
    assert "--base is for --model diffusion-sr" in capsys.readouterr().err
    # a model directory whose base stage does not draw the size its SR stage upsamples
    broken = tmp_path / "broken"
    shutil.copytree(cascade / "model", broken)
    config = json.loads((broken / "config.json").read_text())
    config["model"]["low_size"] = 16
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="^sizes do not chain: .* draws 32 px pictures, and .* upsamples 16 px ones$"):
        Pipeline.load(broken)
    shutil.rmtree(broken / "base")
    with pytest.raises(UserError, match="its base stage .* is missing"):
        Pipeline.load(broken)


def test_an_sr_stage_without_a_base_upsamples_given_pictures(tmp_path):
    run = tmp_path / "sr"
    assert main(["train", "--model", "diffusion-sr", "--size", "32", "--steps", "2", "--out", str(run), *TINY]) == 0
    pipe = dreamlet.load(run / "model")
    assert pipe.model.config.low_size == 16 and pipe.base is None
    with pytest.raises(UserError, match="does not draw pictures from prompts: it upsamples pictures"):
        pipe(PROMPT)
    low = np.zeros((1, 16, 16, 3), np.uint8)
    assert pipe.upsample(low, [PROMPT], [0], steps=2).shape == (1, 32, 32, 3)
    with pytest.raises(UserError, match="upsamples 16 x 16 RGB pictures"):
        pipe.upsample(np.zeros((1, 32, 32, 3), np.uint8), [PROMPT], [0])


def test_an_sr_run_resumes_bit_for_bit(tmp_path):
    """Every random draw of the SR stage's loss (timesteps, noise, augmentation levels and noise,
    dropped captions) comes from the loop's generator, so a stopped run resumes exactly."""
    config = dreamlet.TrainConfig(model="diffusion-sr", size=16, preset="tiny", batch_size=4, steps=4, log_every=2,
                                  sample_every=0, checkpoint_every=0, tokenizer_captions=500)

    def stop_at_2(progress):
        if progress.step == 2:
            progress.stop()

    dreamlet.train(dataclasses.replace(config, out=str(tmp_path / "straight")), quiet=True)
    dreamlet.train(dataclasses.replace(config, out=str(tmp_path / "split")), callback=stop_at_2, quiet=True)
    dreamlet.train(dataclasses.replace(config, out=str(tmp_path / "split"), resume=True), quiet=True)
    straight, split = (load_file(tmp_path / run / "checkpoint" / "state.safetensors") for run in ("straight", "split"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)


# -- a frozen pretrained text encoder --------------------------------------------------------------

WORDS = ["a", "an", "the", "at", "of", "to", "small", "large", "red", "yellow", "green", "cyan", "blue", "purple",
         "circle", "square", "triangle", "diamond", "top", "bottom", "left", "right", "center", "above", "below"]


def tiny_pretrained(path, kind: str):
    """A tiny randomly initialised encoder (BERT, T5 or CLIP text) and a WordPiece tokenizer, saved the
    way transformers saves a real one (a stand-in for a model a user has on disk)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                         sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    torch.manual_seed(0)
    size = dict(vocab_size=len(vocab), num_attention_heads=2)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(hidden_size=24, num_hidden_layers=1, intermediate_size=48,
                                                               max_position_embeddings=64, **size))
    elif kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(d_model=24, d_kv=12, d_ff=48, num_layers=1,
                                                                  num_heads=2, vocab_size=len(vocab)))
    else:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=24, num_hidden_layers=1,
                                                                       intermediate_size=48, max_position_embeddings=64,
                                                                       pad_token_id=0, bos_token_id=2, eos_token_id=3, **size))
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind, loaded_as", [("bert", "BertModel"), ("t5", "T5EncoderModel"), ("clip", "CLIPTextModel")])
def test_pretrained_encoder_is_frozen_behind_a_projection(kind, loaded_as, tmp_path):
    from dreamlet.text.encoder import TextEncoderConfig, build_text_encoder
    from dreamlet.text.pretrained import PAD, PretrainedTokenizer, frozen_encoder
    path = str(tiny_pretrained(tmp_path / kind, kind))
    tokenizer = PretrainedTokenizer.from_pretrained(path, 8)
    ids = tokenizer(["a small red circle", "a large blue square at the top left of the center"])
    assert ids.shape == (2, 8) and (ids[0] == PAD).any() and not (ids[1] == PAD).any()
    assert ids[0, 0] == 2 and ids[1, -1] == 3  # its own special tokens, and a truncated caption still ends with [SEP]
    encoder = build_text_encoder(TextEncoderConfig(width=32, max_length=8, pretrained=path))
    assert type(frozen_encoder(path, "cpu")).__name__ == loaded_as
    text, keep, pooled = encoder(ids)
    assert text.shape == (2, 8, 32) and pooled.shape == (2, 32) and torch.equal(keep, ids != PAD)
    assert [name for name, _ in encoder.named_parameters()] == ["project.weight", "project.bias"]
    pooled.sum().backward()
    assert encoder.project.weight.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in frozen_encoder(path, "cpu").parameters())


def test_train_and_sample_with_a_frozen_text_encoder_through_the_cli(tmp_path, capsys):
    from dreamlet.text.pretrained import frozen_encoder
    transformers = pytest.importorskip("transformers")
    path = tiny_pretrained(tmp_path / "bert", "bert")
    files = {f.name: f.read_bytes() for f in path.iterdir()}
    original = transformers.BertModel.from_pretrained(path).state_dict()
    run = tmp_path / "run"
    assert main(["train", "--model", "diffusion", "--text-encoder", str(path), "--size", "16", "--steps", "3",
                 "--out", str(run), *TINY]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["text"]["pretrained"] == str(path.resolve())
    # only the projection is saved; the optimizer holds the model's own parameters and nothing else
    weights = load_file(run / "model" / "model.safetensors")
    assert sorted(k for k in weights if k.startswith("text_encoder.")) == ["text_encoder.project.bias", "text_encoder.project.weight"]
    state = load_file(run / "checkpoint" / "state.safetensors")
    assert not any("word_embeddings" in k or "attention.self" in k for k in list(weights) + list(state))
    parameters = list(dreamlet.load(run / "model").model.parameters())
    moments = [k for k in state if k.endswith((".exp_avg", ".momentum_buffer"))]  # AdamW's, or Muon's (its blocks)
    assert len(moments) == len(parameters)
    # the encoder did not change, in memory or on disk
    used = frozen_encoder(str(path.resolve()), "cpu").state_dict()
    assert all(torch.equal(used[k], v) for k, v in original.items())
    assert {f.name: f.read_bytes() for f in path.iterdir()} == files
    assert "[CLS]" in json.loads((run / "model" / "tokenizer.json").read_text())["model"]["vocab"]  # its own tokenizer
    out = tmp_path / "out"
    assert main(["sample", "--model", str(run / "model"), "--prompt", PROMPT, "--num", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert len((out / "index.jsonl").read_text().splitlines()) == 2
    shutil.move(path, tmp_path / "moved")  # not saved with the model: gone, the model cannot load
    capsys.readouterr()
    assert main(["sample", "--model", str(run / "model"), "--prompt", PROMPT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dreamlet: error: text encoder not found: {path.resolve()}") and "\n" not in err


def test_a_missing_transformers_is_one_line(tmp_path, monkeypatch):
    from dreamlet.text.pretrained import PretrainedTokenizer
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers now fails
    with pytest.raises(UserError, match=r'needs the transformers package: pip install "dreamlet\[pretrained\]"'):
        PretrainedTokenizer.from_pretrained(str(tmp_path), 8)


def test_a_text_encoder_is_read_from_safetensors_only_and_a_damaged_one_is_one_line(tmp_path, capsys):
    from dreamlet.checkpoint import UserError
    from dreamlet.text.pretrained import frozen_encoder
    pickled = tiny_pretrained(tmp_path / "bin", "bert")
    from safetensors.torch import load_file
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")  # as older tools save
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UserError, match="pytorch_model.bin is a pickle, which dreamlet never unpickles"):
        frozen_encoder(str(pickled), "cpu")
    damaged = tiny_pretrained(tmp_path / "damaged", "bert")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot load the text encoder"):
        frozen_encoder(str(damaged), "cpu")
    args = ["train", "--text-encoder", str(pickled), "--steps", "1", "--size", "16", "--preset", "tiny",
            "--out", str(tmp_path / "run")]
    from dreamlet.cli import main
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never unpickles" in err
