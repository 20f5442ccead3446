"""Train a text-to-image model on the built-in shapes set from Python, then sample, judge and plot.

    python examples/train_shapes.py --minutes 5            # about 60 % of seen prompts right on 2 CPU cores
    python examples/train_shapes.py --model gan --minutes 5

Writes OUT/summary.png (the loss curve, the judge's scores and a few samples) next to the run.
Everything here is the public API: dreamlet.TrainConfig, dreamlet.train, dreamlet.load, dreamlet.evaluate.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

import dreamlet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="diffusion", help="diffusion, gan or dalle")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--steps", type=int, help="a step budget instead of minutes")
    parser.add_argument("--prompts", type=int, default=32, help="judged prompts of each kind")
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()

    # 1. train, watching progress through the callback (progress.stop() would end the run early)
    losses = []

    def watch(progress: dreamlet.Progress) -> None:
        if progress.loss == progress.loss:  # not NaN (a grid-only report has no loss)
            losses.append((progress.step, progress.loss))
            print(f"step {progress.step:5d}  loss {progress.loss:.4f}  {progress.images_per_s:.0f} img/s")

    budget = dict(steps=args.steps) if args.steps else dict(minutes=args.minutes)
    config = dreamlet.TrainConfig(model=args.model, out=args.out, log_every=10, **budget)
    model_dir = dreamlet.train(config, callback=watch, quiet=True)

    # 2. sample
    pipe = dreamlet.load(model_dir)
    prompts = ["a large red circle at the top left", "a small blue square at the center",
               "a green triangle to the left of a yellow diamond"]
    images = pipe(prompts, seed=0)

    # 3. judge (the same report `dreamlet eval` prints)
    report = dreamlet.evaluate(pipe, prompts=args.prompts, seeds=1)
    print(f"seen {report['seen']:.0%}  held-out {report['heldout']:.0%}  pair {report['pair']:.0%}")

    # 4. plot
    figure, axes = plt.subplots(1, 2 + len(images), figsize=(4 * (2 + len(images)), 3.6))
    if losses:
        axes[0].plot(*zip(*losses))
    axes[0].set(title="training loss", xlabel="step")
    kinds = {"seen": "seen", "heldout": "held-out", "pair": "pair"}
    axes[1].bar(list(kinds.values()), [100 * report[k] for k in kinds])
    axes[1].set(title="judged correct (%)", ylim=(0, 100))
    for axis, image, prompt in zip(axes[2:], images, prompts):
        axis.imshow(image)
        axis.set_title(prompt, fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    summary = Path(args.out) / "summary.png"
    figure.savefig(summary, dpi=100)
    print(f"model: {model_dir}\nsummary: {summary}")


if __name__ == "__main__":
    main()
