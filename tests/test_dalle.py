import json

import numpy as np
import pytest
import torch

from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.images import to_tensor
from dreamlet.config import updated
from dreamlet.models.dalle import PRESETS, DalleConfig, DalleModel, colour_plan, filter_logits, pick
from dreamlet.models.vqvae import PRESETS as VQ_PRESETS
from dreamlet.pipeline import Pipeline, candidate_seeds

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0"]
VARIANTS = [("decoder", "autoregressive"), ("encdec", "autoregressive"), ("decoder", "maskgit"), ("encdec", "maskgit")]


def tiny(arch="decoder", decoder="autoregressive", size=16, **extra):
    torch.manual_seed(0)
    vq = VQ_PRESETS["tiny"] | {"image_size": size}
    config = updated(DalleConfig(), PRESETS["tiny"] | {"image_size": size, "arch": arch, "decoder": decoder,
                                                        "vq": vq, "text": {"vocab_size": 50}} | extra)
    return DalleModel(config).eval()


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_a_future_code_does_not_change_an_earlier_logit(arch):
    model = tiny(arch, plan_cell=0)   # codes alone (test_with_a_plan_... has the plan's)
    ids = torch.randint(3, 50, (2, 8))
    codes = torch.randint(0, model.config.vq.codebook_size, (2, model.tokens))
    changed = codes.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % model.config.vq.codebook_size
    with torch.no_grad():
        a, b = model.logits(ids, codes), model.logits(ids, changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)   # outputs 0..8 read inputs 0..8 only
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-5)


def test_the_prefix_convolution_reads_neighbouring_words_but_not_the_batch_s_padding():
    model = tiny(prefix_conv=3, plan_cell=0)
    short, long = torch.tensor([[5, 6, 7] + [0] * 5]), torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    codes = torch.randint(0, model.config.vq.codebook_size, (1, model.tokens))
    with torch.no_grad():
        alone = model.logits(short, codes)
        beside_a_longer_caption = model.logits(torch.cat([short, long]), codes.repeat(2, 1))[:1]
        assert torch.allclose(alone, beside_a_longer_caption, atol=1e-5)
        first, _, _ = model.caption(short)
        neighbour_changed, _, _ = model.caption(torch.tensor([[5, 9, 7] + [0] * 5]))
    assert not torch.allclose(first[0, 0], neighbour_changed[0, 0])   # word 0 now reads word 1
    with pytest.raises(ValueError, match="odd width"):
        tiny(prefix_conv=2)


def test_maskgit_reads_the_whole_grid():
    model = tiny(decoder="maskgit", plan_cell=0)
    ids = torch.randint(3, 50, (2, 8))
    codes = torch.randint(0, model.config.vq.codebook_size, (2, model.tokens))
    changed = codes.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vq.codebook_size
    with torch.no_grad():
        assert not torch.allclose(model.logits(ids, codes)[:, 0], model.logits(ids, changed)[:, 0])


@pytest.mark.parametrize("arch,plan_cell", [("decoder", 0), ("encdec", 0), ("decoder", 2)])
def test_kv_cache_sampling_equals_uncached_sampling(arch, plan_cell):
    model = tiny(arch, plan_cell=plan_cell)
    ids, empty = torch.randint(3, 50, (3, 8)), torch.tensor([[1, 2] + [0] * 6])
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for guidance in (1.0, 3.0):
        cached = model.generate(ids, empty, noise, guidance=guidance, use_cache=True)
        uncached = model.generate(ids, empty, noise, guidance=guidance, use_cache=False)
        assert cached.shape == (3, 3, 16, 16)
        assert torch.allclose(cached, uncached, atol=1e-5)


@pytest.mark.parametrize("arch,decoder", VARIANTS)
def test_seeded_sampling_ignores_the_rest_of_the_batch_and_guidance_matters(arch, decoder):
    model = tiny(arch, decoder)
    ids, empty = torch.randint(3, 50, (2, 8)), torch.tensor([[1, 2] + [0] * 6])
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    both = model.generate(ids, empty, noise)
    alone = model.generate(ids[1:], empty, noise[1:])
    assert torch.allclose(both[1:], alone, atol=1e-5)
    assert not torch.equal(model.generate(ids, empty, noise, guidance=1.0), both)
    assert not torch.equal(model.generate(ids, empty, noise.roll(1, 0)), both)   # another seed, another picture


def test_filtering_and_inverse_cdf_sampling():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.4)).tolist() == [[False, True, True, True]]
    probs = torch.tensor([[0.2, 0.8], [0.2, 0.8]])
    assert pick(probs, torch.tensor([0.1, 0.5])).tolist() == [0, 1]


@pytest.mark.parametrize("arch,plan_cell", [("decoder", 0), ("encdec", 0), ("decoder", 2)])
def test_match_is_the_pointwise_mutual_information_of_caption_and_codes(arch, plan_cell):
    """match() = log p(codes | caption) - log p(codes | empty caption): each is minus the prior's own training
    loss on that one picture (no caption dropped) times its number of tokens (with a plan: its colours too)."""
    model = tiny(arch, cond_drop=0.0, plan_cell=plan_cell)
    images, ids = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randint(3, 50, (3, 8))
    empty = torch.tensor([[1, 2] + [0] * 6])
    match = model.match(images, ids, empty)
    with torch.no_grad():
        for i in range(3):
            given = model.loss(images[i:i + 1], ids[i:i + 1], empty)
            alone = model.loss(images[i:i + 1], empty, empty)
            assert torch.allclose(match[i], model.tokens * (alone - given), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(match, torch.zeros(3), atol=1e-3)   # the caption changes the likelihood
    with pytest.raises(ValueError, match="maskgit"):
        tiny(arch, decoder="maskgit").match(images, ids, empty)


def test_loss_trains_the_prior_but_never_the_tokenizer():
    model = tiny().train()
    assert not model.vq.training
    before = {k: v.clone() for k, v in model.vq.state_dict().items()}
    images, ids = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randint(3, 50, (4, 8))
    loss = model.loss(images, ids, torch.tensor([[1, 2] + [0] * 6]))
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vq.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.vq.state_dict().items())


@pytest.mark.parametrize("arch,decoder", VARIANTS[:3])
def test_cli_run_trains_tokenizer_then_prior_and_writes_a_loadable_model(tmp_path, arch, decoder):
    run = tmp_path / "run"
    assert main(["train", "--model", "dalle", "--size", "16", "--steps", "2", "--out", str(run), *TINY,
                 "--arch", arch, "--decode", decoder]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["family"] == "dalle" and config["model"]["arch"] == arch
    assert (run / "tokenizer" / "model" / "model.safetensors").is_file()
    pipeline = Pipeline.load(run / "model")
    prompts = ["a small red circle at the top left", "a blue square above a green triangle"]
    first, again = pipeline.draw(prompts, [0, 1]), Pipeline.load(run / "model").draw(prompts, [0, 1])
    assert first.shape == (2, 16, 16, 3) and np.array_equal(first, again)
    # the tokenizer inside the model is the one trained in stage 1
    tokenizer = Pipeline.load(run / "tokenizer" / "model").model
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(pipeline.model.vq.state_dict()[key], value), key
    if decoder == "maskgit":  # no likelihood to judge by: one picture, and asking for more says why in one line
        assert pipeline.default_rerank() == 1
        with pytest.raises(UserError, match="a dalle model decoding with maskgit cannot judge its own pictures"):
            pipeline(prompts[0], seed=3, rerank=2)
        return
    # one picture by default; asked for 4 candidates, the autoregressive prior keeps the one its match() prefers
    assert pipeline.default_rerank() == 1
    drawn = pipeline(prompts[0], seed=3, rerank=4, output="numpy")
    assert drawn.settings["candidates"] == 4 and drawn.settings["chosen_by"] == "model"
    candidates = pipeline.draw([prompts[0]] * 4, candidate_seeds(3, 4))
    with torch.no_grad():
        match = pipeline.model.match(to_tensor(candidates), pipeline.tokenizer([prompts[0]] * 4),
                                     pipeline.tokenizer([""]))
    assert np.array_equal(drawn.images[0], candidates[int(match.argmax())])


def test_cli_reuses_a_trained_tokenizer(tmp_path):
    assert main(["train", "--model", "vqvae", "--size", "16", "--steps", "2", "--out", str(tmp_path / "vq"),
                 *TINY]) == 0
    run = tmp_path / "prior"
    assert main(["train", "--model", "dalle", "--size", "16", "--steps", "2", "--out", str(run), *TINY,
                 "--set", f"tokenizer={tmp_path / 'vq' / 'model'}"]) == 0
    assert not (run / "tokenizer").exists()
    assert main(["train", "--model", "dalle", "--size", "32", "--steps", "2", "--out", str(tmp_path / "bad"), *TINY,
                 "--set", f"tokenizer={tmp_path / 'vq' / 'model'}"]) == 2


def test_vqgan_clip_optimises_codes_toward_the_prompt(tmp_path, capsys):
    from dreamlet.scoring import ClipScorer
    from dreamlet.vqgan_clip import optimise_codes
    assert main(["train", "--model", "vqvae", "--size", "16", "--steps", "2", "--out", str(tmp_path / "vq"),
                 *TINY]) == 0
    assert main(["train", "--model", "clip", "--size", "16", "--steps", "2", "--out", str(tmp_path / "clip"),
                 *TINY]) == 0
    tokenizer, scorer = Pipeline.load(tmp_path / "vq" / "model").model, ClipScorer(tmp_path / "clip" / "model")
    prompts = ["a small red circle at the top left", "a large blue square at the center"]
    ids = scorer.tokenizer(prompts)
    before = optimise_codes(tokenizer, scorer.model, ids, [0, 1], steps=0)
    after = optimise_codes(tokenizer, scorer.model, ids, [0, 1], steps=25)
    similarity = lambda images: (scorer.embed_images(images) * scorer.embed_text(prompts)).sum(-1)  # noqa: E731
    assert after.shape == (2, 16, 16, 3)
    assert (similarity(after) > similarity(before)).all()
    out = tmp_path / "out"
    assert main(["sample", "--model", str(tmp_path / "vq" / "model"), "--method", "vqgan-clip", "--clip",
                 str(tmp_path / "clip" / "model"), "--prompt", prompts[0], "--steps", "2", "--out", str(out)]) == 0
    record = json.loads((out / "index.jsonl").read_text())
    assert (out / record["file"]).is_file() and "clip_score" in record
    assert main(["sample", "--model", str(tmp_path / "vq" / "model"), "--method", "vqgan-clip",
                 "--prompt", prompts[0], "--out", str(out)]) == 2   # no --clip: one line
    capsys.readouterr()
    for model, clip, message in (("clip", "clip", "give a dalle or vqvae model, not clip"),
                                 ("vq", "vq", "is a vqvae model; train one with --model clip")):
        assert main(["sample", "--model", str(tmp_path / model / "model"), "--method", "vqgan-clip", "--clip",
                     str(tmp_path / clip / "model"), "--prompt", prompts[0], "--out", str(out)]) == 2
        assert message in capsys.readouterr().err


def test_configs_saved_with_the_tokenizer_s_text_still_load():
    from dreamlet.config import to_dict
    from dreamlet.models import get_family
    config = tiny(plan_cell=0).config
    saved = to_dict(config)
    saved["vq"]["text"] = {"width": 64, "token_std": 0.02}
    saved["text"]["token_std"] = 0.02
    del saved["rerank"]  # saved before the field existed: one picture, as then
    assert get_family("dalle").load_config(saved, 1) == config and config.rerank == 1
    del saved["text"]["token_std"]
    assert get_family("dalle").load_config(saved, 2) == config


def test_a_prior_saved_before_the_colour_plan_loads_without_one():
    from dreamlet.config import to_dict
    from dreamlet.models import get_family
    config = tiny(plan_cell=0).config
    saved = to_dict(config)
    for field in ("plan_cell", "plan_levels"):
        del saved[field]
    assert get_family("dalle").load_config(saved, 3) == config and DalleModel(config).tokens == 16   # codes alone
    with_plan = get_family("dalle").load_config(saved | {"plan_cell": 2}, 3)
    assert DalleModel(with_plan).tokens == 20   # a 2 x 2 plan before the 4 x 4 codes


def picture(size, background, objects):
    """A (1, 3, size, size) picture in [-1, 1]: `background` RGB, and (RGB, top, left, side) squares on it."""
    image = torch.tensor(background, dtype=torch.float32)[:, None, None].expand(3, size, size).clone()
    for rgb, top, left, side in objects:
        image[:, top:top + side, left:left + side] = torch.tensor(rgb, dtype=torch.float32)[:, None, None]
    return (image / 127.5 - 1)[None]


def test_the_colour_plan_marks_each_object_s_cells_with_its_colour_not_the_background():
    red, blue, black, white = (230, 30, 30), (40, 70, 235), (0, 0, 0), (255, 255, 255)
    colour = lambda rgb: (round(rgb[0] / 127.5) * 3 + round(rgb[1] / 127.5)) * 3 + round(rgb[2] / 127.5)  # noqa: E731
    # a small red object at the top left touches two cells each way; a blue one covers one bottom-right cell
    plan = colour_plan(picture(32, black, [(red, 2, 2, 7), (blue, 24, 24, 8)]), 4, 3).view(4, 4)
    expected = torch.full((4, 4), colour(black))
    expected[:2, :2], expected[3, 3] = colour(red), colour(blue)
    assert torch.equal(plan, expected)
    # on a white page the background is white, and a black object is what the plan shows
    plan = colour_plan(picture(16, white, [(black, 0, 8, 8)]), 2, 3).view(2, 2)
    assert plan.tolist() == [[colour(white), colour(black)], [colour(white), colour(white)]]


def test_with_a_plan_the_codes_read_it_and_each_place_draws_its_own_kind():
    model = tiny(plan_cell=2)
    V, plan = model.config.vq.codebook_size, model.plan_tokens
    assert (plan, model.tokens) == (4, 20)   # 16 px: a 4 x 4 code grid, a 2 x 2 plan before it
    ids = torch.randint(3, 50, (2, 8))
    start = torch.full((2, 1), model.mask_id)
    inputs = torch.cat([start, torch.randint(V, V + 27, (2, plan)), torch.randint(0, V, (2, 15))], 1)
    changed = inputs.clone()
    changed[:, 2] = V + (changed[:, 2] - V + 1) % 27          # another colour in the plan's second cell
    with torch.no_grad():
        a, b = model.logits(ids, inputs), model.logits(ids, changed)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)      # causal: outputs 0 and 1 read inputs 0 and 1 only
    assert not torch.allclose(a[:, plan:], b[:, plan:], atol=1e-5)   # every code reads the plan
    kinds = model.only_their_kind(a)
    assert torch.isinf(kinds[:, :plan, :V]).all() and torch.isfinite(kinds[:, :plan, V:]).all()
    assert torch.isinf(kinds[:, plan:, V:]).all() and torch.isfinite(kinds[:, plan:, :V]).all()
    uniform = torch.rand(2, 3 * 16 * 16)
    drawn = model.decode_autoregressive(torch.cat([ids, ids]), uniform, 2.0, use_cache=True)
    assert ((drawn[:, :plan] >= V) & (drawn[:, :plan] < V + 27)).all() and (drawn[:, plan:] < V).all()
    with pytest.raises(ValueError, match="plan_cell"):
        tiny(plan_cell=3)
