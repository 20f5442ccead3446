"""The optimizer every family trains with: AdamW, or Muon for the hidden weight matrices beside AdamW.

Muon (Jordan et al. 2024; "Muon is scalable for LLM training", Liu et al. 2025) replaces each weight
matrix's momentum update by the nearest orthogonal matrix, so every direction of the layer learns at
the same rate; it is meant for the hidden matrices of a network, while embeddings, convolutions, gains and
biases stay with AdamW. torch ships both updates (torch.optim.Muon and torch.optim.AdamW); `MuonWithAdamW`
only makes them one optimizer, so the training loop's learning-rate schedule, accelerate's wrapping and
the checkpoint (one state dict) need not know there are two. `Muon` is torch's with one change: off a GPU it
orthogonalises in float32, not bfloat16 (why: its docstring).
"""
from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's Newton-Schulz iteration (Jordan et al. 2024), as torch.optim.Muon runs it: the matrix scaled to a
    spectral norm of at most 1, then `steps` quintic steps towards the orthogonal matrix of its singular vectors.
    In bfloat16 on a GPU, as torch does; in float32 elsewhere (Muon's docstring)."""
    a, b, c = coefficients
    x = update.to(torch.bfloat16 if update.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:  # the Gram matrix of the shorter side is the cheaper one
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, orthogonalising in float32 off a GPU. torch runs the Newton-Schulz iteration in bfloat16,
    which a CPU without bfloat16 matrix instructions (AVX2 only) multiplies about 35 times slower than float32:
    on such a machine (2026-12-07) it took three quarters of a diffusion training step: 16 pictures/s on 2 cores,
    against 59 with float32. Same settings, state (`momentum_buffer`) and update otherwise; the learning rate
    is matched to AdamW's update size (torch's `adjust_lr_fn="match_rms_adamw"`, the only one dreamlet uses)."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, adjust_lr_fn="match_rms_adamw")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-group["lr"] * 0.2 * math.sqrt(max(param.shape[:2])))


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon over the groups marked {"muon": True}, torch.optim.AdamW over the others. Both
    work on this optimizer's own param_groups and state (the same dicts), so setting a group's lr, saving
    and loading act on one object. Muon's lr is matched to AdamW's update size (`match_rms_adamw`), so
    one learning rate and weight decay serve both."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float]):
        muon, adamw = [], []
        for group in groups:
            (muon if group.pop("muon", False) else adamw).append(group)
        self.muon = Muon(muon, lr=lr) if muon else None
        self.adamw = torch.optim.AdamW(adamw, lr=lr, betas=betas) if adamw else None
        self.muon_groups = len(muon)
        super().__init__([g for part in self.parts for g in part.param_groups], {})
        self.share()

    @property
    def parts(self) -> list[torch.optim.Optimizer]:
        return [part for part in (self.muon, self.adamw) if part is not None]

    def share(self) -> None:
        """Point both parts at this optimizer's groups and state (load_state_dict replaces them)."""
        if self.muon is not None:
            self.muon.param_groups, self.muon.state = self.param_groups[:self.muon_groups], self.state
        if self.adamw is not None:
            self.adamw.param_groups, self.adamw.state = self.param_groups[self.muon_groups:], self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.share()

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts:
            part.step()


# Maps of the one conditioning vector a picture has (the timestep and pooled caption): adaLN's modulation in a
# DiT block, FiLM in a residual or GAN block. On shapes, Muon on every linear layer, these too, drew more copies of
# objects (pairs 58 % against 72 % in the same time, docs/benchmarks.md, fifteenth round): they stay with AdamW.
CONDITIONING_MAPS = ("ada", "film", "film1", "film2")


def token_mixing_weights(model: nn.Module) -> set[int]:
    """ids of the weights Muon updates: the nn.Linear layers inside transformer blocks (`blocks.N` modules) that
    mix token features, attention and MLP, and not the conditioning maps among them."""
    return {id(module.weight) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and ".blocks." in f".{name}"
            and name.rsplit(".", 1)[-1] not in CONDITIONING_MAPS}


def make_optimizer(kind: str, groups: list[dict], model: nn.Module, lr: float,
                   betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW over `groups`; or ("muon") each group split in two: its token-mixing weights to Muon, everything
    else (embeddings, convolutions, conditioning maps, gains, biases) to AdamW with the group's settings."""
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    hidden = token_mixing_weights(model)
    split = []
    for group in groups:
        matrices = [p for p in group["params"] if id(p) in hidden]
        rest = [p for p in group["params"] if id(p) not in hidden]
        settings = {k: v for k, v in group.items() if k != "params"}
        if matrices:  # Muon has a momentum of its own, not Adam's betas
            split.append({k: v for k, v in settings.items() if k != "betas"} | {"params": matrices, "muon": True})
        if rest:
            split.append(settings | {"params": rest})
    return MuonWithAdamW(split, lr, betas)
