"""VQGAN+CLIP (Crowson et al. 2022): no prior at all. Start from random codes and optimise them,
through the image tokenizer's decoder, so the project's CLIP scores the picture high for the prompt.

What is optimised is a score for every code at every grid cell; the decoder sees the best code's
embedding (a hard choice, as at sampling) while the gradient flows through the softmax over codes
(straight-through, Bengio et al. 2013). Each step scores a few randomly shifted copies of the
picture, so the codes must please the CLIP wherever it looks, not through one adversarial pattern.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .images import to_uint8


def optimise_codes(tokenizer, clip, ids: torch.Tensor, seeds: list[int], steps: int = 100, lr: float = 0.2,
                   shifts: int = 4) -> np.ndarray:
    """Pictures (N, S, S, 3) uint8 for token ids (N, L) (the CLIP's tokenizer), one seed each."""
    tokenizer.requires_grad_(False), clip.requires_grad_(False)   # only the code scores learn
    grid, K = tokenizer.grid, tokenizer.config.codebook_size
    logits = torch.stack([torch.randn(grid, grid, K, generator=torch.Generator().manual_seed(int(s)))
                          for s in seeds]).to(ids.device).requires_grad_()
    codebook = tokenizer.codebook.detach()                                      # (K, code_dim)
    with torch.no_grad():
        text = clip.encode_text(ids)                                            # (N, E)
    optimizer = torch.optim.Adam([logits], lr=lr)
    shift_generator = torch.Generator().manual_seed(int(seeds[0]) if seeds else 0)
    S = tokenizer.config.image_size
    for _ in range(steps):
        soft = logits.softmax(-1)
        hard = F.one_hot(soft.argmax(-1), K).to(soft.dtype)
        choice = hard + soft - soft.detach()                                    # (N, h, w, K), straight-through
        images = tokenizer.decoder((choice @ codebook).permute(0, 3, 1, 2))     # (N, 3, S, S)
        moved = [images] + [torch.roll(images, tuple(int(v) for v in torch.randint(-S // 8, S // 8 + 1, (2,),
                                                                                 generator=shift_generator)), (2, 3))
                            for _ in range(shifts - 1)]
        similarity = torch.stack([(clip.encode_images(m) * text).sum(-1) for m in moved])   # (shifts, N)
        optimizer.zero_grad()
        (-similarity.mean()).backward()
        optimizer.step()
    with torch.no_grad():
        return to_uint8(tokenizer.decode(logits.argmax(-1)))
