"""Every family trains and draws under bf16 autocast, the precision a GPU run uses by default. CPU
autocast turns the same operators to bf16 as CUDA's does, so a step that mixes dtypes (an EMA codebook
update fed bf16 sums, say) fails here as it would on a GPU, where it was first found."""
import numpy as np
import pytest

import dreamlet
from dreamlet.models import FAMILIES, get_family

TINY = dict(preset="tiny", size=16, seed=1, steps=3, sample_every=0, checkpoint_every=0, tokenizer_captions=300,
            precision="bf16", batch_size=8)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_draws_under_bf16_autocast(family, tmp_path):
    model_dir = dreamlet.train(dreamlet.TrainConfig(model=family, out=str(tmp_path / family), **TINY), quiet=True)
    pipeline = dreamlet.load(model_dir)
    if not get_family(pipeline.family).can_draw(pipeline.model.config):  # clip scores pictures, it does not draw them
        return
    pictures = [np.asarray(p) for p in pipeline.draw(["a small red circle at the top left"], [0], steps=2)]
    size = 16 if family != "diffusion-sr" else pipeline.image_size
    assert pictures[0].shape == (size, size, 3) and pictures[0].dtype == np.uint8
