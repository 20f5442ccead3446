"""Could a captioner choose among a diffusion model's candidates where the model's own `match` cannot? Generative
image-to-text scores, log p(caption | picture), follow word order and binding better than a CLIP's contrastive
score on compositional benchmarks (Lin et al. 2023, "VisualGPTScore"); the model's own denoising error does not see
a copied object (docs/benchmarks.md, sixteenth round). This trains a small captioner from scratch on shapes (a conv
stem and a 2-layer transformer over the picture's 8 x 8 patches, a 2-layer transformer decoder over the caption's
tokens, teacher forcing), then scores bench/chooser_variants.py's candidates (8 per validation prompt, and their
denoising errors; read from its cache, or drawn and cached as it does) and prints what the best of 4 and of 8 give:
the captioner alone, and its z-scored sum with `match` (the default chooser) at a few weights.

    .venv/bin/python bench/captioner_chooser.py MODEL --cache runs/chooser/s0 [--cache ...] --steps 600 [--results F]

The captioner uses MODEL's tokenizer; its training time is printed, since a default chooser would have to come out of
the model's own 10 minutes. A cache not yet filled is drawn and judged with MODEL; one filled by chooser_variants.py
for another model is read as it is (the nineteenth round scored both fifteenth-round models' caches this way).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chooser_variants import KINDS, candidates, errors, scorers  # noqa: E402
from docs_section import add_row  # noqa: E402

from dreamlet.data.shapes import ShapesDataset, benchmark_jobs  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402

class Captioner(nn.Module):
    """Picture (B, 3, S, S) and caption ids (B, L) -> next-token logits (B, L - 1, V)."""

    def __init__(self, vocab: int, max_length: int, size: int = 32, width: int = 128, layers: int = 2, heads: int = 4,
                 position_std: float = 1.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, width, 4, stride=4))
        # Where a patch is must be as loud as what it shows: at std 0.02 (the nineteenth and twenty-fifth rounds) a
        # 1,500-step captioner preferred a pair's true caption to the one with its objects swapped for 49 % of real
        # pictures (chance), at std 1 for 54 % and 76 % in two trainings (bench/relation_reading.py, 26th round).
        self.picture_position = nn.Parameter(torch.randn((size // 4) ** 2, width) * position_std)
        layer = dict(d_model=width, nhead=heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True,
                     norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), layers, enable_nested_tensor=False)
        self.token = nn.Embedding(vocab, width)
        self.token_position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), layers)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))

    def forward(self, pictures: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(pictures), ids)

    def encode(self, pictures: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, S, S) -> what the caption decoder reads (B, patches, width)."""
        return self.encoder(self.stem(pictures).flatten(2).transpose(1, 2) + self.picture_position)

    def decode(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        inputs = ids[:, :-1]
        causal = nn.Transformer.generate_square_subsequent_mask(inputs.shape[1])
        h = self.decoder(self.token(inputs) + self.token_position[:inputs.shape[1]], memory, tgt_mask=causal,
                         tgt_is_causal=True)
        return self.out(h)

    @torch.no_grad()
    def log_likelihood(self, pictures: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """log p(caption | picture) (B,), summed over the caption's tokens."""
        target = ids[:, 1:]
        logp = -F.cross_entropy(self(pictures, ids).float().transpose(1, 2), target, reduction="none")
        return (logp * (target != pad_id)).sum(1)


def train_captioner(tokenizer, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 7) -> tuple[Captioner, float]:
    """A captioner trained on shapes scenes the diffusion model did not see (another data seed); and its seconds."""
    torch.manual_seed(seed)
    data = ShapesDataset(32, seed=seed + 100)
    model = Captioner(tokenizer.vocab_size, tokenizer.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start = time.time()
    for step in range(steps):
        pictures, captions = data.batch(step * batch, batch)
        ids = tokenizer(captions)
        loss = F.cross_entropy(model(to_tensor(pictures).float(), ids).transpose(1, 2), ids[:, 1:],
                               ignore_index=tokenizer.pad_id)
        for group in optimizer.param_groups:  # 50 warmup steps, then cosine to a tenth
            group["lr"] = lr * min(1, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f} s", flush=True)
    return model.eval(), time.time() - start


def load_captioner(tokenizer, file: str) -> Captioner:
    """A captioner saved (safetensors) by bench/self_rerank.py's --captioner-file, for pictures and `tokenizer`."""
    from safetensors.torch import load_file
    captioner = Captioner(tokenizer.vocab_size, tokenizer.max_length)
    captioner.load_state_dict(load_file(file))
    return captioner.eval()


def caption_scores(captioner: Captioner, tokenizer, images: np.ndarray, ids: torch.Tensor) -> np.ndarray:
    """log p(caption | picture) of each picture (N, S, S, 3) uint8 with its caption's ids (N, L): (N,)."""
    return torch.cat([captioner.log_likelihood(to_tensor(images[i:i + 256]).float(), ids[i:i + 256], tokenizer.pad_id)
                      for i in range(0, len(images), 256)]).numpy()


def swapped_captions(text: str, longest: int = 3) -> list[str]:
    """The caption with two of its non-overlapping runs of words swapped, runs of 1 to `longest` words of equal
    length, each distinct result once: the same words bound otherwise ("a blue circle ... a red square" swaps two
    words, "a blue square to the left of a red circle" two runs of two), as compositional benchmarks perturb
    captions (Yuksekgonul et al. 2023, ARO)."""
    words, out = text.split(), set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            for j in range(i + n, len(words) - n + 1):
                out.add(" ".join(words[:i] + words[j:j + n] + words[i + n:j] + words[i:i + n] + words[j + n:]))
    return sorted(out - {text})


@torch.no_grad()
def contrast_scores(captioner: Captioner, tokenizer, images: np.ndarray, texts: list[str]) -> np.ndarray:
    """How much more a picture says its caption than the caption's swapped alternatives (swapped_captions): log
    p(caption | picture) - logsumexp over the caption and its alternatives of log p(. | picture), (N,). A measured
    failure, kept as the record of it: as a chooser it picked DALL-E's pairs worse than chance (twenty-sixth round),
    because a caption's likelihood is dominated by which object it names first, so the contrast with the caption
    whose objects are swapped rewards a picture whose second object is missing."""
    out, start = [], 0
    while start < len(texts):  # the candidates of one prompt share its caption: score them together
        end = start + 1
        while end < len(texts) and texts[end] == texts[start] and end - start < 32:
            end += 1
        captions = [texts[start]] + swapped_captions(texts[start])
        memory = captioner.encode(to_tensor(images[start:end]).float()).repeat_interleave(len(captions), 0)
        ids = tokenizer(captions).repeat(end - start, 1)
        target = ids[:, 1:]
        logp = -F.cross_entropy(captioner.decode(memory, ids).float().transpose(1, 2), target, reduction="none")
        total = (logp * (target != tokenizer.pad_id)).sum(1).view(end - start, len(captions))
        out.append((total[:, 0] - torch.logsumexp(total, 1)).numpy())
        start = end
    return np.concatenate(out)


def zscore(score: np.ndarray, k: int) -> np.ndarray:
    first = score[:, :k]
    return (first - first.mean(1, keepdims=True)) / (first.std(1, keepdims=True) + 1e-9)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--cache", action="append", required=True, help="bench/chooser_variants.py's cache prefix")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--results", help="a JSON file to add the rows to (bench/results/...)")
    args = parser.parse_args()
    pipeline, K = Pipeline.load(args.model), args.candidates
    captioner, seconds = train_captioner(pipeline.tokenizer, args.steps)
    jobs = benchmark_jobs(64, 2, "validation")
    kinds = np.array([p.kind for p, _ in jobs])
    texts, seeds = [p.text for p, _ in jobs for _ in range(K)], [s for _, s in jobs for _ in range(K)]
    ids = pipeline.tokenizer(texts)
    for cache in args.cache:
        images, correct = candidates(pipeline, jobs, K, Path(cache))
        err = errors(pipeline, images, texts, seeds, Path(cache)).reshape(len(jobs), K, -1, 2, 2)
        match = scorers(err)["match t>=0.5"]
        caption = caption_scores(captioner, pipeline.tokenizer, images, ids).reshape(len(jobs), K)
        best = {}
        for k in (4, 8):
            scores = {"match (the default)": match[:, :k], "captioner": caption[:, :k]}
            scores |= {f"match + {w} x captioner": zscore(match, k) + w * zscore(caption, k) for w in (0.25, 0.5, 1, 2)}
            for name, score in scores.items():
                picked = correct[np.arange(len(jobs)), score.argmax(1)]
                best.setdefault(name, {})[k] = [round(100 * float(picked[kinds == kind].mean())) for kind in KINDS]
        row = dict(name=f"{Path(cache).name}, captioner {args.steps} steps", model=args.model, cache=cache,
                   captioner_steps=args.steps, captioner_seconds=round(seconds), threads=torch.get_num_threads(),
                   prompt_set="validation", best_of=best)
        print(json.dumps(row))
        if args.results:
            add_row(args.results, row, "captioner_chooser.py", sys.argv[1:])


if __name__ == "__main__":
    main()
