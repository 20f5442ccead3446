"""One peer project trained and judged on shapes the way bench/families.py does it for dreamlet's own
families: the same data stream, a wall-clock budget, the same canonical prompts and seeds, the same
exact judge. Runs inside the peers' virtual environment that bench/peers.py makes (torch and the
peer package from PyPI; dreamlet's data and judge are imported from this checkout's src/).

    runs/peers-venv/bin/python bench/peer_runner.py imagen --minutes 15 --out runs/bench/peers/imagen

Writes OUT/result.json (one row for bench/peers.py's table) and OUT/samples.png (the first pictures).

Nothing is downloaded at run time. The peers' text encoders would be (imagen-pytorch and minimagen
default to a pretrained T5), so the diffusion peers get a stand-in for a frozen text encoder: a
frozen random embedding table over dreamlet's caption tokenizer ids plus sinusoidal positions
(`FrozenTextStandIn`). dalle-pytorch learns its own text embeddings from token ids, which are
dreamlet's CaptionTokenizer ids.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dreamlet.data.shapes import ShapesDataset, benchmark_jobs  # noqa: E402
from dreamlet.judge import judge, summarize  # noqa: E402
from docs_section import machine  # noqa: E402  (bench/: this script's folder)

SIZE = 32
TOKENIZER_CAPTIONS = 20_000  # as many captions as dreamlet's training trains its tokenizer on


# ----------------------------------------------------------------------------- the protocol (no peer needed)

def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1], the range every peer here takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [0, 1] -> (B, S, S, 3) uint8, as the judge reads pictures."""
    return images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def judge_drawings(draw: Callable[[list[str], list[int]], np.ndarray], prompts: int, seeds: int,
                   batch: int = 64) -> tuple[dict, np.ndarray]:
    """Draw every benchmark picture with `draw(texts, seeds) -> (N, S, S, 3) uint8`, `batch` at a time,
    and judge it: the report has evaluate_shapes' accuracies plus seconds per picture."""
    jobs = benchmark_jobs(prompts, seeds)  # exactly what `dreamlet eval` draws
    pictures = []
    started = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        out = np.asarray(draw([p.text for p, _ in chunk], [seed for _, seed in chunk]))
        if out.shape != (len(chunk), SIZE, SIZE, 3) or out.dtype != np.uint8:
            raise ValueError(f"draw returned {out.shape} {out.dtype}, expected ({len(chunk)}, {SIZE}, {SIZE}, 3) uint8")
        pictures.append(out)
    seconds = time.perf_counter() - started
    pictures = np.concatenate(pictures)
    results = [(p, judge(picture, p)) for (p, _), picture in zip(jobs, pictures)]
    report = summarize(results)
    report["seconds_per_image"] = seconds / len(jobs)
    report["failures"] = [{"prompt": p.text, "seed": seed, "found": r["found"]}
                          for (p, seed), (_, r) in zip(jobs, results) if not r["correct"]][:12]
    return report, pictures


def train_for(seconds: float, step: Callable[[torch.Tensor, list[str]], float], batch: int,
              dataset: ShapesDataset | None = None, log_every: int = 50, label: str = "") -> dict:
    """Call `step(images, captions)` on dreamlet's data stream, batch i = dataset.batch(i * batch, batch)
    as dreamlet's training loop takes it, until `seconds` of wall clock (data included) are spent."""
    dataset = dataset or ShapesDataset(SIZE, seed=0)
    started, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - started < seconds:
        images, captions = dataset.batch(steps * batch, batch)
        losses.append(float(step(to_tensor(images), captions)))
        steps += 1
        if log_every and steps % log_every == 0:
            elapsed = time.perf_counter() - started
            print(f"{label} step {steps} loss {np.mean(losses[-log_every:]):.4f} "
                  f"{steps * batch / elapsed:.1f} img/s {elapsed:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    return dict(steps=steps, batch=batch, seconds=elapsed, images_per_s=steps * batch / elapsed,
                final_loss=float(np.mean(losses[-50:])) if losses else float("nan"))


def batch_seed(seeds: list[int]) -> int:
    """The peers draw a batch from torch's global generator, so one seed fixes each batch (dreamlet seeds
    every picture on its own; here the same prompts and seeds give the same pictures run to run)."""
    return int(seeds[0]) * 1_000_003 + len(seeds)


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def caption_tokenizer(max_length: int = 32):
    from dreamlet.text.tokenizer import CaptionTokenizer
    return CaptionTokenizer.train(ShapesDataset(SIZE, seed=0).captions(TOKENIZER_CAPTIONS), max_length=max_length)


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2], out[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return out


class FrozenTextStandIn:
    """The stand-in for a frozen pretrained text encoder, which cannot be downloaded here: a frozen
    random N(0, 1) embedding per caption-tokenizer id plus sinusoidal positions, zero at padding.
    Returns (embeds (B, L, dim), mask (B, L) bool), L trimmed to the longest caption in the batch."""

    def __init__(self, tokenizer, dim: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.tokenizer, self.dim = tokenizer, dim
        self.table = torch.randn(tokenizer.vocab_size, dim, generator=generator)
        self.positions = sinusoidal(tokenizer.max_length, dim)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(texts)
        mask = ids != self.tokenizer.pad_id
        length = int(mask.sum(1).max())
        ids, mask = ids[:, :length], mask[:, :length]
        embeds = (self.table[ids] + self.positions[:length]) * mask[..., None]
        return embeds, mask


def without_torchvision():
    """imagen-pytorch, minimagen and dalle-pytorch import torchvision at module level for helpers this
    benchmark never calls (dataset transforms, ToPILImage, save_image). PyPI's torchvision does not load
    beside torch's CPU build, so it is not installed; an empty module stands in for the import, and any
    real use of it would fail loudly (AttributeError on the stand-in)."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # noqa: BLE001 - not installed, or installed and broken: either way, stand in
        pass
    import importlib.machinery
    # Libraries that probe for torchvision decide once, when imported: let them see that it is not there.
    for probing in ("transformers", "torchmetrics", "pytorch_lightning", "accelerate", "kornia"):
        try:
            __import__(probing)
        except ImportError:
            pass
    for name in ("torchvision", "torchvision.transforms", "torchvision.utils", "torchvision.datasets",
                 "torchvision.transforms.functional"):
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so submodule imports resolve to the stand-ins above
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__dict__["__stand_in__"] = True
        sys.modules[name] = module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]


class no_t5_download:
    """imagen-pytorch 2.x asks the Hugging Face Hub for T5's config while it is imported, to fill default
    arguments (`text_embed_dim = get_encoded_dim(DEFAULT_T5_NAME)` in Unet3D and its pydantic configs); here
    that would fail for want of a network. During the import, that one question is answered locally with
    T5 v1.1 base's width (d_model 768, the value the Hub would give); every model here is built with an
    explicit text_embed_dim, so the answer is never used, and any other from_pretrained still fails."""

    def __enter__(self):
        try:
            from transformers import T5Config
        except ImportError:
            self.original = None
            return self
        self.T5Config, self.original = T5Config, T5Config.__dict__.get("from_pretrained", "inherited")

        def from_pretrained(cls, name, *args, **kwargs):
            if name == "google/t5-v1_1-base":
                return cls(d_model=768)
            raise RuntimeError(f"{name}: nothing is downloaded in this benchmark")
        T5Config.from_pretrained = classmethod(from_pretrained)
        return self

    def __exit__(self, *exc):
        if self.original == "inherited":
            del self.T5Config.from_pretrained
        elif self.original is not None:
            self.T5Config.from_pretrained = self.original


def version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------- the peers

class Peer:
    """A peer: `train(seconds)` on the shapes stream, then `draw(texts, seeds)` -> uint8 pictures."""
    package = ""
    what = ""
    drawing = ""

    def train(self, seconds: float) -> dict:
        raise NotImplementedError

    def draw(self, texts: list[str], seeds: list[int]) -> np.ndarray:
        raise NotImplementedError


class ImagenPeer(Peer):
    """imagen-pytorch: one Unet + Imagen at 32 px, trained with ImagenTrainer as its README shows, text from
    the frozen stand-in encoder. Imagen here runs in continuous time, so `sample_steps` only sets how many
    ancestral sampling steps are taken (the README's 1000 would take minutes per batch on a CPU)."""
    package = "imagen-pytorch"
    what = "Imagen: text-conditional UNet, continuous-time DDPM, CFG (frozen stand-in text encoder)"

    def __init__(self, batch: int = 32, lr: float = 1e-4, sample_steps: int = 50, cond_scale: float = 3.0,
                 dim: int = 32, dim_mults: tuple = (1, 2, 4), text_dim: int = 128):
        without_torchvision()
        with no_t5_download():
            from imagen_pytorch import Imagen, ImagenTrainer, Unet
        self.batch, self.cond_scale, self.sample_steps = batch, cond_scale, sample_steps
        self.text = FrozenTextStandIn(caption_tokenizer(), text_dim)
        unet = Unet(dim=dim, cond_dim=text_dim, text_embed_dim=text_dim, dim_mults=tuple(dim_mults),
                    num_resnet_blocks=1, layer_attns=(False, True, True), layer_cross_attns=(False, True, True),
                    attn_heads=4, attn_dim_head=32, memory_efficient=False)
        self.imagen = Imagen(unets=(unet,), image_sizes=(SIZE,), timesteps=sample_steps, cond_drop_prob=0.1,
                             text_embed_dim=text_dim, channels=3)
        self.trainer = ImagenTrainer(self.imagen, lr=lr, use_ema=True, verbose=False)
        self.params = count_params(unet)
        self.settings = dict(unet=dict(dim=dim, cond_dim=text_dim, dim_mults=list(dim_mults), num_resnet_blocks=1,
                                       layer_attns=[False, True, True], layer_cross_attns=[False, True, True],
                                       attn_heads=4, attn_dim_head=32), text_embed_dim=text_dim, lr=lr,
                             cond_drop_prob=0.1, optimizer="ImagenTrainer defaults (Adam, EMA)")
        self.drawing = f"{sample_steps} ancestral DDPM steps, cond_scale {cond_scale:g}"

    def step(self, images: torch.Tensor, captions: list[str]) -> float:
        embeds, mask = self.text(captions)
        loss = self.trainer(images, text_embeds=embeds, text_masks=mask, unet_number=1)
        self.trainer.update(unet_number=1)
        return loss

    def train(self, seconds: float) -> dict:
        return train_for(seconds, self.step, self.batch, label="imagen")

    def draw(self, texts, seeds):
        torch.manual_seed(batch_seed(seeds))
        embeds, mask = self.text(texts)
        with torch.no_grad():
            images = self.trainer.sample(text_embeds=embeds, text_masks=mask, cond_scale=self.cond_scale,
                                         use_tqdm=False)
        return to_uint8(images)


class MinImagenPeer(Peer):
    """minimagen (AssemblyAI's minimal Imagen): its Unet + Imagen at 32 px with explicit text_embed_dim
    (so no T5 config is fetched), a plain Adam loop (its training script's optimizer), frozen stand-in text.
    Discrete-time DDPM: `timesteps` is both the training schedule and the number of sampling steps."""
    package = "minimagen"
    what = "MinImagen: Imagen-style UNet, discrete DDPM, CFG (frozen stand-in text encoder)"

    def __init__(self, batch: int = 32, lr: float = 1e-4, timesteps: int = 50, cond_scale: float = 3.0,
                 dim: int = 32, dim_mults: tuple = (1, 2, 4), text_dim: int = 128):
        without_torchvision()
        from minimagen.Imagen import Imagen
        from minimagen.Unet import Unet
        self.batch, self.cond_scale = batch, cond_scale
        self.text = FrozenTextStandIn(caption_tokenizer(), text_dim)
        unet = Unet(dim=dim, cond_dim=text_dim, text_embed_dim=text_dim, dim_mults=tuple(dim_mults), num_resnet_blocks=1,
                    layer_attns=(False, True, True), layer_cross_attns=(False, True, True), attn_heads=4)
        self.imagen = Imagen(unets=unet, image_sizes=(SIZE,), timesteps=timesteps, cond_drop_prob=0.1,
                             text_encoder_name="t5_small", text_embed_dim=text_dim)
        self.optimizer = torch.optim.Adam(self.imagen.parameters(), lr=lr)
        self.params = count_params(unet)
        self.settings = dict(unet=dict(dim=dim, cond_dim=text_dim, dim_mults=list(dim_mults), num_resnet_blocks=1,
                                       layer_attns=[False, True, True], layer_cross_attns=[False, True, True],
                                       attn_heads=4), text_embed_dim=text_dim, lr=lr, timesteps=timesteps,
                             cond_drop_prob=0.1, optimizer="Adam")
        self.drawing = f"{timesteps} ancestral DDPM steps, cond_scale {cond_scale:g}"

    def step(self, images, captions):
        embeds, mask = self.text(captions)
        loss = self.imagen(images, text_embeds=embeds, text_masks=mask, unet_number=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # as minimagen's training.py does; once Imagen has moved its unets out of their ModuleList (its first
        # forward does), imagen.parameters() is empty, so this clips nothing there either
        torch.nn.utils.clip_grad_norm_(self.imagen.parameters(), 50)
        self.optimizer.step()
        return loss.item()

    def train(self, seconds):
        return train_for(seconds, self.step, self.batch, label="minimagen")

    def draw(self, texts, seeds):
        torch.manual_seed(batch_seed(seeds))
        embeds, mask = self.text(texts)
        images = self.imagen.sample(text_embeds=embeds, text_masks=mask, cond_scale=self.cond_scale)
        return to_uint8(images)


class DallePeer(Peer):
    """dalle-pytorch: a DiscreteVAE trained first (its train_vae.py recipe: Adam 1e-3, Gumbel-softmax
    temperature 1 annealed towards 0.5, no KL term) for `vae_share` of the budget, as dreamlet's dalle gives its
    tokenizer 15 %, then DALLE over the frozen VAE's 8 x 8 codes with dreamlet's caption token ids
    (train_dalle.py: Adam 3e-4, gradients clipped at 0.5; captions dropped with null_cond_prob for
    classifier-free guidance, as dreamlet's dalle drops 10 %), drawn code by code by its generate_images
    (KV cache, top-k filter, cond_scale). The transformer has dreamlet dalle's width, depth and heads."""
    package = "dalle-pytorch"
    what = "DALL-E: dVAE codes + decoder-only transformer (token ids from dreamlet's tokenizer)"

    def __init__(self, batch: int = 64, vae_batch: int = 64, lr: float = 3e-4, vae_lr: float = 1e-3,
                 vae_share: float = 0.15, dim: int = 192, depth: int = 4, heads: int = 6, dim_head: int = 32,
                 null_cond_prob: float = 0.1, filter_thres: float = 0.9, cond_scale: float = 2.0):
        without_torchvision()
        from dalle_pytorch import DALLE, DiscreteVAE
        self.batch, self.vae_batch, self.vae_share, self.vae_lr = batch, vae_batch, vae_share, vae_lr
        self.filter_thres, self.cond_scale, self.null_cond_prob = filter_thres, cond_scale, null_cond_prob
        self.tokenizer = caption_tokenizer()
        vae_args = dict(image_size=SIZE, num_layers=2, num_tokens=512, codebook_dim=256, hidden_dim=64,
                        num_resnet_blocks=2, temperature=1.0, straight_through=False, kl_div_loss_weight=0.0)
        self.vae = DiscreteVAE(**vae_args)
        self.DALLE, self.dalle_args = DALLE, dict(dim=dim, num_text_tokens=self.tokenizer.vocab_size,
                                                  text_seq_len=self.tokenizer.max_length, depth=depth, heads=heads,
                                                  dim_head=dim_head, attn_types=("full",), loss_img_weight=7)
        self.lr, self.dalle = lr, None
        self.params = count_params(self.vae)
        self.settings = dict(vae={**vae_args, "lr": vae_lr, "share": vae_share, "batch": vae_batch},
                             dalle={k: list(v) if isinstance(v, tuple) else v for k, v in self.dalle_args.items()},
                             lr=lr, grad_clip=0.5, null_cond_prob=null_cond_prob, filter_thres=filter_thres,
                             cond_scale=cond_scale)
        self.drawing = f"64 codes one by one (KV cache), top 10 % of logits, cond_scale {cond_scale:g}"

    def train(self, seconds):
        # stage 1: the discrete VAE
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.vae_lr)
        state = dict(step=0)

        def vae_step(images, _captions):
            if state["step"] % 100 == 0:  # train_vae.py anneals the temperature every 100 steps
                self.vae.temperature = max(1.0 * math.exp(-1e-6 * state["step"]), 0.5)
            loss = self.vae(images, return_loss=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            return loss.item()

        vae = train_for(seconds * self.vae_share, vae_step, self.vae_batch, label="dalle-pytorch vae")
        self.vae.eval()
        # stage 2: the transformer over the frozen VAE's codes
        self.dalle = self.DALLE(vae=self.vae, **self.dalle_args)
        optimizer = torch.optim.Adam([p for p in self.dalle.parameters() if p.requires_grad], lr=self.lr)

        def dalle_step(images, captions):
            loss = self.dalle(self.tokenizer(captions), images, return_loss=True, null_cond_prob=self.null_cond_prob)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.dalle.parameters(), 0.5)
            optimizer.step()
            return loss.item()

        prior = train_for(seconds - vae["seconds"], dalle_step, self.batch, label="dalle-pytorch")
        self.params = count_params(self.dalle)  # the transformer and the frozen VAE inside it
        self.settings["params_vae"] = count_params(self.vae)
        self.settings["vae_stage"] = dict(steps=vae["steps"], batch=vae["batch"], seconds=round(vae["seconds"], 1),
                                          images_per_s=round(vae["images_per_s"], 1), final_loss=vae["final_loss"])
        # images/s as dreamlet's dalle row counts it: the prior's steps over the prior's time
        return prior

    def draw(self, texts, seeds):
        torch.manual_seed(batch_seed(seeds))
        images = self.dalle.generate_images(self.tokenizer(texts), filter_thres=self.filter_thres,
                                            cond_scale=self.cond_scale, use_cache=True)
        return to_uint8(self.unnormalize(images))

    def unnormalize(self, images):
        """DiscreteVAE learns in its normalised space ((x - 0.5) / 0.5 by default) and decodes to it."""
        normalization = getattr(self.vae, "normalization", None)
        if not normalization:
            return images
        means, stds = (torch.as_tensor(t, dtype=images.dtype).view(1, -1, 1, 1) for t in normalization)
        return images * stds + means


PEERS = {"imagen": ImagenPeer, "minimagen": MinImagenPeer, "dalle": DallePeer}


def save_grid(pictures: np.ndarray, path: Path, columns: int = 16) -> None:
    from PIL import Image
    rows = math.ceil(len(pictures) / columns)
    grid = np.zeros((rows * SIZE, columns * SIZE, 3), np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        grid[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = picture
    Image.fromarray(grid).resize((columns * SIZE * 2, rows * SIZE * 2), Image.NEAREST).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=list(PEERS))
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a constructor argument of the peer's class, e.g. --set sample_steps=50")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, from OMP_NUM_THREADS)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: json.loads(v) if v[:1] in "0123456789-[{tfn" else v
                for k, v in (s.split("=", 1) for s in args.set)}
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    peer = PEERS[args.peer](**settings)
    trained = peer.train(args.minutes * 60)
    report, pictures = judge_drawings(peer.draw, args.prompts, args.seeds)
    save_grid(pictures[:64], out / "samples.png")
    row = dict(name=peer.package, peer=args.peer, version=version_of(peer.package), what=peer.what,
               measured=time.strftime("%Y-%m-%d"), machine=machine(), nice=os.nice(0), load_at_start=round(load, 2),
               budget_minutes=args.minutes, steps=trained["steps"], batch=trained["batch"],
               images_per_s=trained["images_per_s"], train_seconds=trained["seconds"], final_loss=trained["final_loss"],
               params=peer.params, settings=peer.settings, seen=report["seen"], heldout=report["heldout"],
               pair=report["pair"], attributes=report["attributes"], seconds_per_image=report["seconds_per_image"],
               drawing=peer.drawing, prompts=args.prompts, seeds=args.seeds, failures=report["failures"],
               torch=torch.__version__)
    (out / "result.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if k not in ("failures", "settings")}), flush=True)
    return row


if __name__ == "__main__":
    main()
