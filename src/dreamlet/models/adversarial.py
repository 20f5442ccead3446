"""The pieces every adversarially trained model shares (the GAN family, VQGAN's tokenizer): hinge
losses (Lim & Ye 2017; Miyato et al. 2018), and the generator's score through a frozen copy of the
discriminator, so that one backward pass trains both networks, each on its own objective."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def discriminator_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on scores of real and of generated pictures."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def generator_hinge(discriminator: nn.Module, *inputs) -> torch.Tensor:
    """The generator's loss, -D(G(z)), with the discriminator's weights detached: its gradient
    reaches the generator only, while the discriminator learns from its own loss in the same pass."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    return -functional_call(discriminator, frozen, inputs).mean()
