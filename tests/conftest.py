import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny diffusion model trained for a few steps through the real training loop."""
    from dreamlet.training import TrainConfig, train
    out = tmp_path_factory.mktemp("tiny_run")
    train(TrainConfig(out=str(out), preset="tiny", steps=6, batch_size=8, sample_every=0, checkpoint_every=0,
                      tokenizer_captions=2000), quiet=True)
    return out
