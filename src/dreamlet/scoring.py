"""Learned metrics with the project's own CLIP: CLIP score, R-precision, FID and KID in the CLIP
image encoder's feature space (torchmetrics, with that encoder as its feature extractor), and
reranking of candidate pictures; FID in Inception-v3 space from local weights."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import UserError
from .images import to_tensor
from .models import families_that, get_family, listed
from .pipeline import Pipeline


class ClipScorer:
    """A trained CLIP model directory, ready to embed pictures (uint8 arrays) and captions."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.pipeline = Pipeline.load(model_dir, device)
        if not get_family(self.pipeline.family).scores:
            scorers = families_that(lambda family: family.scores)
            raise UserError(f"--clip {model_dir} is a {self.pipeline.family} model; "
                            f"train one with --model {listed(scorers)}")
        self.model, self.tokenizer = self.pipeline.model, self.pipeline.tokenizer
        self.image_size = self.pipeline.image_size

    @property
    def device(self):
        return self.pipeline.device

    def _check(self, images: np.ndarray):
        if images.shape[1] != self.image_size:
            raise UserError(f"the CLIP model was trained at {self.image_size} px, "
                            f"the pictures are {images.shape[1]} px")

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, batch: int = 256) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, E) unit vectors."""
        self._check(images)
        return torch.cat([self.model.encode_images(to_tensor(images[i:i + batch]).to(self.device))
                          for i in range(0, len(images), batch)]).cpu()

    @torch.no_grad()
    def embed_text(self, captions: list[str], batch: int = 256) -> torch.Tensor:
        return torch.cat([self.model.encode_text(self.tokenizer(captions[i:i + batch]).to(self.device))
                          for i in range(0, len(captions), batch)]).cpu()

    def cosine(self, images: np.ndarray, captions: list[str]) -> torch.Tensor:
        """Cosine similarity of each picture with its own caption: (N,)."""
        return (self.embed_images(images) * self.embed_text(captions)).sum(-1)

    def clip_score(self, images: np.ndarray, captions: list[str]) -> float:
        """Mean of 100 x max(cosine, 0) between each picture and its caption (Hessel et al. 2021)."""
        return float(100 * self.cosine(images, captions).clamp(min=0).mean())

    def r_precision(self, images: np.ndarray, captions: list[str], pool: list[str], distractors: int = 32,
                    seed: int = 0) -> float:
        """Share of pictures whose own caption ranks first among itself and `distractors` captions
        drawn from `pool` (different from it), as AttnGAN and DF-GAN report it."""
        return float(self.caption_ranked_first(images, captions, pool, distractors, seed).mean())

    def caption_ranked_first(self, images: np.ndarray, captions: list[str], pool: list[str], distractors: int = 32,
                             seed: int = 0) -> np.ndarray:
        """Per picture: does its own caption outscore `distractors` random others from `pool`?"""
        rng = np.random.default_rng(seed)
        texts = sorted(set(pool) | set(captions))
        if len(set(pool)) <= distractors:
            raise UserError(f"R-precision needs more than {distractors} distinct captions to draw distractors from; "
                            f"there are {len(set(pool))}")
        index = {t: i for i, t in enumerate(texts)}
        scores = self.embed_images(images) @ self.embed_text(texts).T          # (N, T), every caption once
        pool_ids = np.asarray([index[t] for t in sorted(set(pool))])
        hits = []
        for row, caption in zip(scores, captions):
            own = index[caption]
            others = rng.choice(pool_ids[pool_ids != own], distractors, replace=False)
            hits.append(bool(row[own] > row[others].max()))
        return np.asarray(hits)

    def match(self, images: np.ndarray, caption: str) -> torch.Tensor:
        """Cosine similarity of each picture with one caption: (N,)."""
        return self.embed_images(images) @ self.embed_text([caption])[0]

    def rerank(self, images: np.ndarray, caption: str) -> np.ndarray:
        """Indices of `images` from best to worst match for `caption`."""
        return torch.argsort(self.match(images, caption), descending=True).numpy()

    def feature_extractor(self) -> nn.Module:
        return _ClipFeatures(self.model)


class _ClipFeatures(nn.Module):
    """torchmetrics' FID/KID feature extractor: uint8 (N, 3, S, S) -> CLIP image features (before
    normalisation, where distances mean more)."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 127.5 - 1
        size = self.clip.config.image_size
        if images.shape[-1] != size:  # torchmetrics probes with a 299 px dummy to count the features
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
        return self.clip.image_encoder(images).double()


def fid_kid(scorer: ClipScorer, real: np.ndarray, fake: np.ndarray, kid_subset: int = 50) -> dict:
    """FID and KID between two sets of uint8 pictures in the CLIP image encoder's feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    features = scorer.feature_extractor()
    fid = FrechetInceptionDistance(feature=features, normalize=False, reset_real_features=True)
    subset = min(kid_subset, len(real), len(fake))
    with warnings.catch_warnings():  # it warns that it keeps every feature: these sets are small
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=features, subset_size=subset, normalize=False)
    kid_mean, kid_std = metric_value(kid, real, fake)
    return {"fid": metric_value(fid, real, fake), "kid": float(kid_mean), "kid_std": float(kid_std)}


def steady_fid_class():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class SteadyFID(FrechetInceptionDistance):
        """The same FID, with tr sqrt(S_real S_fake) as the trace of the root of the symmetric H'S_fake H,
        S_real = HH' (H from S_real's eigenvectors, rounding-noise directions dropped): torchmetrics'
        general eigensolver on the 2048x2048 covariances of fewer than 2048 pictures (rank-deficient)
        takes from seconds to minutes on a CPU."""

        def compute(self) -> torch.Tensor:
            if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
                raise UserError("FID needs at least two real and two generated pictures")
            moments = []
            for kind in ("real", "fake"):
                n = getattr(self, f"{kind}_features_num_samples")
                mean = getattr(self, f"{kind}_features_sum") / n
                cov_sum = getattr(self, f"{kind}_features_cov_sum")
                moments.append((mean, (cov_sum - n * torch.outer(mean, mean)) / (n - 1)))
            (mean_real, cov_real), (mean_fake, cov_fake) = moments
            values, vectors = torch.linalg.eigh(cov_real)
            keep = values > values.max() * len(values) * torch.finfo(values.dtype).eps
            half = vectors[:, keep] * values[keep].sqrt()
            cross = torch.linalg.eigvalsh(half.T @ cov_fake @ half).clamp(min=0).sqrt().sum()
            return (mean_real - mean_fake).square().sum() + cov_real.trace() + cov_fake.trace() - 2 * cross

    return SteadyFID


def inception_fid_metric(weights: str | Path):
    """torchmetrics' FID in Inception-v3 space, with the FID variant of Inception-v3 built here
    (`dreamlet.inception`) from local weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth,
    or a .safetensors file with the same keys. No torchvision or torch-fidelity needed."""
    from .inception import load_inception
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"--inception {weights}: no such file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                        "weights, or a .safetensors file with the same keys)")

    return steady_fid_class()(feature=load_inception(weights), normalize=False, reset_real_features=True)


def metric_value(metric, real: np.ndarray, fake: np.ndarray, batch: int = 256):
    """Feed uint8 (N, S, S, 3) real and generated pictures to a torchmetrics FID or KID and compute
    it (FID: a float; KID: its mean and standard deviation)."""
    for images, real_flag in ((real, True), (fake, False)):
        for i in range(0, len(images), batch):
            metric.update(torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).contiguous(), real=real_flag)
    value = metric.compute()
    return value if isinstance(value, tuple) else float(value)
