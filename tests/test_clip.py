"""The CLIP family and the learned metrics built on it."""
import json

import numpy as np
import pytest
import torch

from dreamlet.cli import main
from dreamlet.config import updated
from dreamlet.data.shapes import ShapesDataset
from dreamlet.models.clip import CLIP, PRESETS, ClipConfig
from dreamlet.training import TrainConfig, train


def tiny(size=32):
    return updated(ClipConfig(), PRESETS["tiny"] | {"image_size": size, "text": dict(PRESETS["tiny"]["text"], vocab_size=64)})


@pytest.mark.parametrize("size", [16, 32, 64])
def test_embeddings_are_unit_vectors_at_every_size(size):
    model = CLIP(tiny(size))
    images, ids = torch.randn(3, 3, size, size), torch.randint(4, 64, (3, 10))
    for vectors in (model.encode_images(images), model.encode_text(ids)):
        assert vectors.shape == (3, 32) and torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_repeated_captions_count_as_matches():
    torch.manual_seed(0)
    model = CLIP(tiny(16))
    images = torch.randn(4, 3, 16, 16)
    distinct = torch.randint(4, 64, (4, 10))
    repeated = distinct.clone()
    repeated[1] = repeated[0]  # two pictures with one caption: neither is the other's negative
    logits = model.scale() * model.encode_images(images) @ model.encode_text(repeated).T
    same = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float)
    targets = same / same.sum(1, keepdim=True)
    expected = 0.5 * (torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets))
    assert torch.allclose(model.loss(images, repeated), expected)
    assert not torch.allclose(model.loss(images, repeated), model.loss(images, distinct))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """A small CLIP trained briefly on shapes through the real training loop."""
    out = tmp_path_factory.mktemp("clip")
    train(TrainConfig(model="clip", out=str(out), preset="tiny", steps=400, batch_size=64, lr=3e-3, sample_every=0,
                      checkpoint_every=0, tokenizer_captions=2000), quiet=True)
    return out / "model"


def test_a_briefly_trained_clip_ranks_real_captions_and_separates_noise(clip_run):
    from dreamlet.evaluation import evaluate_clip_model
    report = evaluate_clip_model(clip_run, count=192, distractors=32)
    assert report["r_precision_real"] >= 0.95  # the bar; chance is 1/33 (this run: 0.979)
    assert report["fid_real_halves"] * 5 < report["fid_real_noise"]


def test_eval_with_clip_and_rerank_through_the_cli(clip_run, tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_run / "model"), "--clip", str(clip_run), "--prompts", "4", "--steps", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["pictures"] == 12 and 0 <= report["r_precision"] <= 1 and report["fid"] > 0
    assert set(report["judge"]["counts"]) == {"seen", "heldout", "pair"}
    assert "| R-precision |" in out.with_suffix(".md").read_text()

    samples = tmp_path / "samples"
    assert main(["sample", "--model", str(tiny_run / "model"), "--prompt", "a small red circle at the top left",
                 "--num", "2", "--rerank", "3", "--clip", str(clip_run), "--steps", "2", "--out", str(samples)]) == 0
    records = [json.loads(line) for line in (samples / "index.jsonl").read_text().splitlines()]
    assert [r["candidates"] for r in records] == [3, 3]
    assert records[0]["seed"] in (0, 1, 2) and records[1]["seed"] in (3, 4, 5)
    capsys.readouterr()
    # The winning seed redraws the same picture without reranking.
    again = tmp_path / "again"
    assert main(["sample", "--model", str(tiny_run / "model"), "--prompt", "a small red circle at the top left",
                 "--seed", str(records[0]["seed"]), "--steps", "2", "--rerank", "1", "--out", str(again)]) == 0
    first = json.loads((again / "index.jsonl").read_text())
    from PIL import Image
    redrawn, chosen = (np.asarray(Image.open(path), np.int16) for path in (again / first["file"], samples / records[0]["file"]))
    assert np.abs(redrawn - chosen).max() <= 1  # batched and single sampling may round one level apart

    # The shapes judge on reranked pictures: each judged picture is the best of K by the CLIP
    judged = tmp_path / "judged"
    assert main(["eval", "--model", str(tiny_run / "model"), "--prompts", "2", "--seeds", "1", "--steps", "2",
                 "--rerank", "3", "--clip", str(clip_run), "--out", str(judged)]) == 0
    reranked = json.loads(judged.with_suffix(".json").read_text())
    assert reranked["rerank"] == 3 and reranked["counts"] == {"seen": 2, "heldout": 2, "pair": 2}
    assert main(["sample", "--model", str(clip_run), "--prompt", "a red circle", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dreamlet: error: a clip model does not draw pictures from prompts: it scores pictures against captions"]


def test_reranking_prefers_the_matching_picture(clip_run):
    from dreamlet.scoring import ClipScorer
    scorer = ClipScorer(clip_run)
    data = ShapesDataset(seed=7)
    images, captions = data.batch(0, 8)
    order = [scorer.rerank(images, caption)[0] for caption in captions]
    assert np.mean([o == i for i, o in enumerate(order)]) >= 0.75


def test_inception_fid_from_local_weights_through_the_cli(clip_run, tiny_run, tmp_path, capsys):
    from dreamlet.inception import InceptionFID
    out = tmp_path / "r"
    base = ["eval", "--model", str(tiny_run / "model"), "--clip", str(clip_run), "--prompts", "2", "--steps", "1",
            "--out", str(out)]
    assert main(base + ["--inception", str(tmp_path / "missing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"not really weights")
    assert main(base + ["--inception", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dreamlet: error: --inception {weights}: not a weights file") and "\n" not in err
    torch.manual_seed(0)
    model = InceptionFID()  # random weights, kept at scale: the real file is not here
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), weights)
    assert main(base + ["--inception", str(weights)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["fid_inception"] > 0 and "| FID (Inception-v3) |" in out.with_suffix(".md").read_text()


def test_eval_with_clip_scores_a_gan_and_a_dalle_prior_too(clip_run, tmp_path, capsys):
    """A GAN has no sampler steps or guidance: the report says none instead of failing."""
    for family in ("gan", "dalle"):
        run = tmp_path / family
        assert main(["train", "--model", family, "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                     "--sample-every", "0", "--out", str(run)]) == 0
        out = tmp_path / f"{family}-report"
        assert main(["eval", "--model", str(run / "model"), "--clip", str(clip_run), "--prompts", "4",
                     "--out", str(out)]) == 0, capsys.readouterr().err
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["pictures"] == 12 and 0 <= report["r_precision"] <= 1 and report["fid"] > 0


def test_shapes_held_out_pictures_include_the_held_out_pairings():
    from dreamlet.data.shapes import HELD_OUT, parse_prompt
    from dreamlet.evaluation import heldout_set
    images, captions, pool = heldout_set("shapes", 16, 30)
    kinds = [parse_prompt(c) for c in captions]
    held = [p for p in kinds if p.relation is None and (p.objects[0][0], p.objects[0][1]) in HELD_OUT]
    assert images.shape == (30, 16, 16, 3) and len(held) == 10  # a third: never seen alone in training
    assert sum(p.relation is not None for p in kinds) == 10 and len(pool) > 100
