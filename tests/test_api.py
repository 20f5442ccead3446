import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main


def test_cli_and_api_give_identical_pictures(tiny_run, tmp_path):
    model = tiny_run / "model"
    out = tmp_path / "cli"
    prompts = ["a small red circle at the top left", "a blue square above a green triangle"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert main(["sample", "--model", str(model), "--prompts-file", str(tmp_path / "prompts.txt"), "--num", "2",
                 "--seed", "5", "--steps", "3", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    pipe = dreamlet.load(model)
    images = pipe(prompts, seed=5, num=2, steps=3)
    assert len(images) == 4 and all(isinstance(image, Image.Image) for image in images)
    for record, image in zip(records, images):
        assert np.array_equal(np.asarray(Image.open(out / record["file"])), np.asarray(image))
    array = pipe(prompts, seed=5, num=2, steps=3, output="numpy")
    tensor = pipe(prompts, seed=5, num=2, steps=3, output="tensor")
    assert array.shape == (4, 32, 32, 3) and tensor.shape == (4, 3, 32, 32)
    assert torch.allclose(tensor, torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255)


def test_pipeline_options(tiny_run):
    pipe = dreamlet.load(tiny_run / "model")
    assert pipe.to("cpu") is pipe
    one = pipe("a large green diamond at the center", steps=2, generator=torch.Generator().manual_seed(0), output="numpy")
    two = pipe("a large green diamond at the center", steps=2, generator=torch.Generator().manual_seed(0), output="numpy")
    assert np.array_equal(one, two)
    with pytest.raises(UserError, match="unknown output"):
        pipe("a red circle", steps=2, output="svg")
    with pytest.raises(UserError, match="empty prompt"):
        pipe("   ")
    with pytest.raises(UserError, match="needs a CLIP"):
        pipe("a red circle", rerank=4)


def test_public_names_and_version():
    assert dreamlet.TrainConfig().data == "shapes"
    assert dreamlet.datasets.load("digits", 16, quiet=True).captions(1)
    assert callable(dreamlet.train) and callable(dreamlet.evaluate)
    with pytest.raises(AttributeError):
        dreamlet.nothing_here
    done = subprocess.run([sys.executable, "-m", "dreamlet", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"dreamlet {dreamlet.__version__}"
