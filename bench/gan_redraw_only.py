"""Diagnostic (issue 25, eleventh round): can the GAN's generator learn to draw the shapes from a dense loss
alone? A cVAE with no adversary: the noise encoder, the generator and the text encoder trained together to
redraw real pictures (L1 or MSE, plus `kl` x the noise's KL per pixel), 1,200 steps of batch 32 on one thread,
then the validation prompts drawn with random noise and with zero noise, judged.

    python bench/gan_redraw_only.py KL STEPS l1|mse MODEL    # e.g. 1.0 1200 mse runs/gan/model

The tokenizer is a trained GAN's (any shapes model's): MODEL below. Exists at the commit that has the
cVAE-GAN option (its NoiseEncoder); docs/gan.md records what it showed.
"""
import sys, time, json
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
torch.set_num_threads(1); torch.manual_seed(0)
from dreamlet.models.gan import TextToImageGAN, GanConfig
from dreamlet.data.shapes import ShapesDataset, benchmark_jobs
from dreamlet.pipeline import Pipeline
from dreamlet.images import to_tensor, to_uint8
from dreamlet.judge import judge
tok = Pipeline.load(sys.argv[4]).tokenizer  # MODEL: any shapes model, for its tokenizer
kl_w, steps, loss_kind = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
m = TextToImageGAN(GanConfig(reconstruction=1.0, kl=kl_w))
params = list(m.generator.parameters()) + list(m.encoder.parameters()) + list(m.text_encoder.parameters()) + list(m.text_to_cond.parameters())
opt = torch.optim.Adam(params, 5e-4, betas=(0.5, 0.99))
ds = ShapesDataset(32, seed=0); t0 = time.time()
for step in range(steps):
    ims, caps = ds.batch(step * 32, 32); x = to_tensor(ims).float(); ids = tok(caps)
    mu, lv = m.encoder(x); z = mu + (0.5 * lv).exp() * torch.randn_like(mu)
    r = m.generator(z, m.caption(ids))
    rec = (r - x).abs().mean() if loss_kind == "l1" else (r - x).pow(2).mean()
    kl = 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(1).mean()
    loss = rec + kl_w * kl / (32 * 32 * 3)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 200 == 0: print(step, rec.item(), kl.item(), round(time.time() - t0), flush=True)
jobs = benchmark_jobs(64, 2, "validation"); kinds = np.array([p.kind for p, _ in jobs])
with torch.no_grad():
    ids = tok([p.text for p, _ in jobs])
    z = torch.stack([torch.randn(64, generator=torch.Generator().manual_seed(s)) for _, s in jobs])
    for name, zz in (("random", z), ("zero", torch.zeros_like(z))):
        ims = to_uint8(m.generator(zz, m.caption(ids)))
        c = np.array([judge(im, p)["correct"] for im, (p, _) in zip(ims, jobs)])
        att = {}
        for im, (p, _) in zip(ims, jobs):
            if p.kind != "pair":
                for k, v in judge(im, p).items():
                    if k != "correct" and isinstance(v, (bool, np.bool_)): att.setdefault(k, []).append(v)
        print(name, {k: round(float(c[kinds == k].mean()), 3) for k in ("seen", "heldout", "pair")}, {k: round(float(np.mean(v)), 2) for k, v in att.items()}, flush=True)
