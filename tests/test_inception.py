"""The FID variant of Inception-v3 (dreamlet.inception), with random weights: no real weights here."""
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dreamlet.checkpoint import UserError
from dreamlet.data.shapes import ShapesDataset
from dreamlet.inception import InceptionFID, load_inception
from dreamlet.scoring import inception_fid_metric, metric_value


def random_state() -> dict:
    """A random model's state dict (activations kept at scale, BatchNorm statistics not 0/1, so a
    buffer that failed to load would show) plus the 1008-class head pytorch-fid's file carries."""
    torch.manual_seed(0)
    model = InceptionFID()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.state_dict() | {"fc.weight": torch.randn(1008, 2048), "fc.bias": torch.zeros(1008)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(random_state(), path)
    return path


def test_weights_load_from_pth_and_safetensors_with_the_same_features(weights, tmp_path):
    state = random_state()
    reference = InceptionFID()
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "inception.safetensors")
    images = torch.from_numpy(ShapesDataset(seed=3).batch(0, 2)[0]).permute(0, 3, 1, 2).contiguous()
    expected = reference.eval()(images)
    assert expected.shape == (2, 2048) and expected.dtype == torch.float32 and expected.std() > 0.01
    for path in (weights, tmp_path / "inception.safetensors"):
        assert torch.equal(load_inception(path)(images), expected)


@pytest.mark.parametrize("damage", ["missing", "shape", "unexpected"])
def test_a_wrong_key_is_named_in_one_line(tmp_path, damage):
    state = InceptionFID().state_dict()
    key = "Mixed_6b.branch7x7dbl_5.bn.running_mean"
    if damage == "missing":
        del state[key]
    elif damage == "shape":
        state[key] = torch.zeros(7)
    else:
        key = "AuxLogits.conv0.conv.weight"  # torchvision's ImageNet Inception, not the FID one
        state[key] = torch.zeros(128, 768, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as error:
        load_inception(path)
    message = str(error.value)
    assert key in message and str(path) in message and "\n" not in message


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle", "tensor", "text"])
def test_files_that_are_not_plain_weights_are_refused_without_running_code(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    if kind == "torch.save":
        torch.save({"Conv2d_1a_3x3.conv.weight": Payload(marker)}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
        pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))  # a full unpickle would run it
        assert (tmp_path / "proof").exists()
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(b"not really weights")
    with pytest.raises(UserError) as error:
        load_inception(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_fid_is_near_zero_for_one_set_and_larger_against_noise(weights):
    real = ShapesDataset(seed=5).batch(0, 4)[0]
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    metric = inception_fid_metric(weights)
    same = metric_value(metric, real, real.copy())
    metric.reset_real_features = False  # keep the real features, measure against noise
    metric.reset()
    apart = metric_value(metric, real[:0], noise)
    assert apart > 0.1 and abs(same) < 1e-3 * apart
    with pytest.raises(UserError, match="no such file"):
        inception_fid_metric(weights.parent / "missing.pth")
