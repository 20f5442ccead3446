"""Inception-v3 as FID uses it, in plain PyTorch (no torchvision, no torch-fidelity).

The network is Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for
Computer Vision") in the variant of the TensorFlow graph `2015-12-05` that Heusel et al. 2017
("GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium") used to define
FID: the average-pool branches do not count padding, and the last block max-pools. Its 2048 pooled
features are what FID compares. `load_inception` reads pytorch-fid's port of those weights,
`pt_inception-2015-12-05-6726825d.pth`, or a `.safetensors` file with the same keys; FID figures match
published ones only with exactly those weights.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import UserError


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _row(cin, cout):  # the factorised 7x7: a 1x7 and a 7x1 convolution, padded to keep the size
    return BasicConv2d(cin, cout, (1, 7), padding=(0, 3))


def _col(cin, cout):
    return BasicConv2d(cin, cout, (7, 1), padding=(3, 0))


class InceptionA(nn.Module):  # Mixed_5b..5d: 35x35
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e: 17x17, factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = BasicConv2d(cin, c7, 1), _row(c7, c7), _col(c7, 192)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _col(c7, c7), _row(c7, c7)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _col(c7, c7), _row(c7, 192)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = BasicConv2d(cin, 192, 1), _row(192, 192)
        self.branch7x7x3_3, self.branch7x7x3_4 = _col(192, 192), BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool, in the FID graph): 8x8
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.max_pool = pool == "max"
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = BasicConv2d(cin, 448, 1), BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(three), self.branch3x3_2b(three),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool
                                           else _avg_pool(x))], 1)


class InceptionFID(nn.Module):
    """uint8 (N, 3, H, W) pictures -> (N, 2048) pool features; usable as torchmetrics' `feature`."""
    num_features = 2048  # torchmetrics reads this instead of probing with a dummy picture

    def __init__(self, batch: int = 32):
        super().__init__()
        self.batch = batch  # pictures per forward pass, to bound memory at 299 px
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, "avg"), InceptionE(2048, "max")
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.cat([self.features(images[i:i + self.batch].to(device))
                          for i in range(0, len(images), self.batch)])


def load_inception(path: str | Path) -> InceptionFID:
    """InceptionFID with weights from a state dict file: `.safetensors`, or a torch `.pth` read with
    the restricted (weights-only) unpickler. `fc.*` (the 1008 classes) is ignored."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only loader refused it
        raise UserError(f"--inception {path}: not a weights file (not a torch state dict, or a pickle "
                        "that asks for more than tensors, which is never run)") from None
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--inception {path}: not a weights file ({reason[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--inception {path}: not a state dict of tensors")
    model = InceptionFID()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for key, value in expected.items():
        if key not in state:
            raise UserError(f"--inception {path}: not Inception-v3 FID weights (missing {key})")
        if state[key].shape != value.shape:
            raise UserError(f"--inception {path}: not Inception-v3 FID weights ({key} has shape "
                            f"{tuple(state[key].shape)}, expected {tuple(value.shape)})")
    for key in state:
        if key not in expected and not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            raise UserError(f"--inception {path}: not Inception-v3 FID weights (unexpected {key})")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    return model.eval()
